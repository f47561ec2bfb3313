"""The playground in a real browser (Debian's Chromium, headless, through Playwright) against a real server.

Every figure the tests check comes from the page's own audio path (``window.playground``: samples decoded
from the stream, handed to Web Audio, played to their end) and is compared with what the server gives a
plain HTTP client for the same request, or with the server's own view (``/cancel``, ``/metrics``, ``/voices``).
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

import pytest

from tests.playground.conftest import API_KEY, PRESET_VOICE, http_client, wait_until
from tests.server_process import Server, idle
from tests.tts_server.serving import sine_wav

# Off before any fixture runs (no checkpoint written, no server started); the fixtures decide the rest.
pytestmark = pytest.mark.skipif(
    os.environ.get("PLAYGROUND_BROWSER") == "0", reason="browser tests off (PLAYGROUND_BROWSER=0)"
)

TEXT = "Hello from the playground."
SEED = 7
DONE_TIMEOUT_S = 20.0


def state(page: Any) -> dict[str, Any]:
    """A copy of the page's ``window.playground``."""
    return page.evaluate("({...window.playground})")


def speak(page: Any, *, text: str = TEXT, fmt: str = "pcm", seed: int | None = SEED, max_steps: int | None = None):
    """Fill the form and press Speak."""
    page.fill("#text", text)
    page.select_option("#format", fmt)
    page.fill("#seed", "" if seed is None else str(seed))
    page.fill("#max-steps", "" if max_steps is None else str(max_steps))
    page.click("#speak")


def wait_state(page: Any, *states: str, timeout_s: float = DONE_TIMEOUT_S) -> dict[str, Any]:
    """Wait until the page's state is one of ``states``; returns the state object."""
    wait_until(page, f"{list(states)!r}.includes(window.playground.state)", timeout_s)
    return state(page)


def reference_pcm(server: Server, **fields: Any) -> tuple[bytes, int]:
    """The same request over plain HTTP as pcm: (bytes, sample rate)."""
    with http_client(server) as client:
        response = client.post("/generate", json={"target_text": TEXT, "response_format": "pcm", **fields})
    assert response.status_code == 200, response.text
    return response.content, int(response.headers["x-sample-rate"])


def cancelled_count(server: Server) -> float:
    """``tts_requests_total{endpoint="generate",outcome="cancelled"}`` from /metrics (0 before the first)."""
    with http_client(server) as client:
        text = client.get("/metrics").text
    match = re.search(r'^tts_requests_total\{endpoint="generate",outcome="cancelled"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def test_the_page_loads_without_the_key_and_lists_the_voices_with_it(page, server):
    with http_client(server) as client:
        names = client.get("/voices").json()["voices"]
    assert PRESET_VOICE in names
    options = page.eval_on_selector_all("#voice option", "els => els.map(e => e.value)")
    assert options == ["", *names]
    assert page.title() == "VoxCPM playground"
    for element in ("#text", "#voice", "#format", "#api-key", "#voice-name", "#voice-audio", "#voice-text"):
        label = page.locator(f"label[for='{element[1:]}']")
        assert label.count() == 1 and label.inner_text().strip(), element  # every field has a label
    assert page.locator("#error").is_hidden()


@pytest.mark.parametrize("fmt", ["pcm", "wav"])
def test_speak_streams_and_plays_every_sample_the_server_sends(page, server, fmt):
    expected, rate = reference_pcm(server, seed=SEED)
    speak(page, fmt=fmt)
    got = wait_state(page, "done", "error")
    assert got["state"] == "done", got["error"]
    n = len(expected) // 2
    assert n > 0 and got["sampleRate"] == rate
    assert got["samplesReceived"] == got["samplesScheduled"] == n
    assert got["bytesReceived"] == len(expected) + (44 if fmt == "wav" else 0)
    # The audio clock plays what was scheduled to its end (the stream arrives faster than real time).
    wait_until(page, "window.playground.samplesPlayed === window.playground.samplesScheduled", 10)
    link = page.locator("#download")
    assert link.is_visible() and link.get_attribute("download") == f"speech.{fmt}"
    assert link.get_attribute("href").startswith("blob:")  # the bytes received, kept for download


@pytest.mark.parametrize("fmt", ["mp3", "opus", "flac", "aac"])
def test_a_compressed_format_plays_once_complete(page, server, fmt):
    expected, rate = reference_pcm(server, seed=SEED)
    speak(page, fmt=fmt)
    got = wait_state(page, "done", "error")
    assert got["state"] == "done", got["error"]
    assert got["samplesScheduled"] == got["samplesReceived"] > 0 and got["chunksScheduled"] == 1
    # Decoded by the browser at its own rate; mp3 and aac streams carry up to ~0.05 s of codec delay and padding.
    played_s, expected_s = got["samplesReceived"] / got["sampleRate"], len(expected) / 2 / rate
    assert expected_s <= played_s + 0.001 and played_s < expected_s + 0.06, (played_s, expected_s)


def test_time_to_first_audio_and_real_time_factor_are_shown_live_as_numbers(page, server):
    started = time.monotonic()
    speak(page, max_steps=40)
    wait_until(page, "window.playground.state === 'streaming' && window.playground.rtf !== null", 10)
    live = state(page)
    done = wait_state(page, "done")
    elapsed_ms = (time.monotonic() - started) * 1000
    assert live["samplesReceived"] < done["samplesReceived"], "RTF was shown before the stream ended"
    ttfa_text, rtf_text = page.inner_text("#ttfa"), page.inner_text("#rtf")
    assert re.fullmatch(r"\d+ ms", ttfa_text), ttfa_text
    assert re.fullmatch(r"\d+\.\d{3}", rtf_text), rtf_text
    ttfa = float(page.get_attribute("#ttfa", "data-value"))
    rtf = float(page.get_attribute("#rtf", "data-value"))
    assert 0 < ttfa < elapsed_ms and int(ttfa_text.split()[0]) == int(ttfa + 0.5)  # JavaScript's Math.round
    audio_s = done["samplesReceived"] / done["sampleRate"]
    assert page.inner_text("#audio-seconds") == f"{audio_s:.2f} s"
    assert 0 < rtf < elapsed_ms / 1000 / audio_s * 1.01  # generation time over audio time, from the page's clock


def test_stop_cancels_the_request_on_the_server_mid_stream(page, server):
    before = cancelled_count(server)
    steps = 240  # about 5 s of generation on the tiny model, 38 s of audio: plenty of stream to cut
    full = steps * 7056  # samples per patch of tiny-v1 (44.1 kHz)
    speak(page, max_steps=steps)
    wait_until(page, "window.playground.chunksScheduled >= 2", 10)
    page.click("#stop")
    got = wait_state(page, "cancelled", timeout_s=10)
    assert got["cancelResult"] == {"status": "cancelled", "request_id": got["requestId"]}
    assert 0 < got["samplesReceived"] < full and page.inner_text("#status") == "Cancelled."
    status = server.wait_settled(timeout_s=3.0)
    assert idle(status), status  # the engine let go of it at once, not after the remaining seconds
    assert cancelled_count(server) == before + 1
    time.sleep(0.3)
    after = state(page)
    assert after["samplesReceived"] == got["samplesReceived"] and after["samplesScheduled"] == got["samplesScheduled"]


def test_errors_are_shown_in_words(page, server):
    page.fill("#api-key", "sk-wrong")
    speak(page)
    got = wait_state(page, "error")
    assert got["error"]["status"] == 401
    assert page.inner_text("#error") == "Not authorized (401): invalid API key. Check the API key."

    page.fill("#api-key", API_KEY)
    speak(page, text="")
    got = wait_state(page, "error")
    assert got["error"]["status"] == 400 and got["error"]["field"] == "target_text"
    assert re.fullmatch(r"Request refused \(400\): .+ \(field: target_text\)", page.inner_text("#error"))

    # The server's one connection place taken by a plain client: the page gets the 503 and its Retry-After.
    with http_client(server) as client:
        body = {"target_text": TEXT, "response_format": "pcm", "max_generate_length": 240, "request_id": "holder"}
        with client.stream("POST", "/generate", json=body) as holder:
            assert holder.status_code == 200
            speak(page)
            got = wait_state(page, "error")
            assert client.post("/cancel", json={"request_id": "holder"}).json()["status"] == "cancelled"
    assert got["error"]["status"] == 503 and got["error"]["retryAfter"] == "1"
    text = page.inner_text("#error")
    assert text.startswith("Server busy or unavailable (503): server at capacity") and text.endswith("Retry after 1 s.")


def test_an_uploaded_prompt_becomes_a_voice_in_the_list_and_speaks(page, server):
    name = "uploaded-voice"
    page.fill("#voice-name", name)
    page.set_input_files(
        "#voice-audio", files=[{"name": "prompt.wav", "mimeType": "audio/wav", "buffer": sine_wav(1.0)}]
    )
    page.fill("#voice-text", "A short prompt.")
    page.click("#create-voice")
    wait_until(page, f"window.playground.lastVoiceCreated === {name!r}", 15)
    assert page.inner_text("#voice-status") == f'Voice "{name}" created.'
    with http_client(server) as client:
        described = client.get(f"/voices/{name}").json()
        names = client.get("/voices").json()["voices"]
    assert described["prompt_text"] == "A short prompt."
    assert name in state(page)["voices"] and name in names
    assert page.input_value("#voice") == name  # selected for the next Speak
    speak(page)
    got = wait_state(page, "done", "error")
    assert got["state"] == "done" and got["samplesReceived"] > 0, got["error"]

    page.click("#create-voice")  # the same name again: the server's 409, in words, naming the field
    wait_until(page, "!document.getElementById('voice-error').hidden", 10)
    assert re.fullmatch(r"Request refused \(409\): .+ \(field: name\)", page.inner_text("#voice-error"))
