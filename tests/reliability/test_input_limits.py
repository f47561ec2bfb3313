"""Limits on what a client may send, against live servers: each misbehaviour is a 4xx naming the field.

- Voice names: with ``--api-key`` set, the open probes (``/health``, ``/info``) list them only to a
  request carrying a valid key; anyone else gets 200 with empty lists.
- Magnitudes: finite but huge ``prompt_latents`` (3e38) are a 400 (they used to give all-zero audio);
  a LoRA voice whose ``lora_config.alpha`` is 1e308 is a 400 (it used to register, and every request
  with it was silent). A LoRA-enabled server of its own (``--max-loras 1``) serves that case.
- Names are bounded: a 100k-character ``voice`` is a 400 and no error echoes more than a short prefix.
- ``min_generate_length`` over the step limit is a 400 naming it (it used to be lowered quietly).
- Text with nothing to speak (emoji, zero-width joiners, control characters, punctuation) is a 400
  naming the text field on ``/generate`` and on ``/v1/audio/speech`` alike.
- Undecodable audio is named in the error without Python object reprs (``<_io.BytesIO object at 0x...>``).
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.reliability.conftest import ADMIN_KEY, API_KEY
from tests.server_process import Server, running

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
PCM = {"response_format": "pcm"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def sine_wav(seconds: float = 0.5, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate, format="WAV")
    return buf.getvalue()


def latents(value: float, patches: int = 2) -> dict[str, object]:
    """Latents JSON of tiny-v2's shape (patch size 4, latent dim 64) filled with ``value``."""
    data = np.full((patches, 4, 64), value, dtype="<f4")
    return {"dtype": "float32", "shape": list(data.shape), "data": b64(data.tobytes())}


def error_of(response) -> dict:
    body = response.json()["error"]
    return {"status": response.status_code, "field": body.get("field") or body.get("param"), **body}


# --- voice names on the open probes ----------------------------------------------------------------


def test_probes_list_voice_names_only_to_key_holders(server: Server):
    with server.client(headers=ADMIN) as admin:
        assert admin.post("/voices", json={"name": "limits-secret", "ref_audio": b64(sine_wav())}).status_code == 201
        try:
            with server.client() as client:
                keyed = (client.get("/health").json(), client.get("/info").json())
                client.headers.pop("Authorization")
                anonymous = (client.get("/health"), client.get("/info"))
                wrong = client.get("/health", headers={"Authorization": "Bearer sk-not-the-key"})
                listed_without_key = client.get("/voices")
            admin_info = admin.get("/info").json()
        finally:
            admin.delete("/voices/limits-secret")
    assert "limits-secret" in keyed[0]["available_voices"] and "limits-secret" in keyed[1]["voices"]
    assert "limits-secret" in admin_info["voices"]
    for response in (*anonymous, wrong):  # open and uncapped for load balancers, but no names
        assert response.status_code == 200
        body = response.json()
        assert body.get("available_voices", body.get("voices")) == []
        assert "limits-secret" not in response.text
    assert listed_without_key.status_code == 401  # what the probes now agree with


# --- magnitudes ------------------------------------------------------------------------------------


def test_finite_but_huge_prompt_latents_are_a_400(server: Server):
    with server.client() as client:
        inline = client.post(
            "/generate", json={"target_text": "Hi.", "prompt_latents": latents(3e38), "prompt_text": "Hey.", **PCM}
        )
        reference = client.post("/generate", json={"target_text": "Hi.", "ref_latents": latents(-1e6), **PCM})
        normal = client.post(
            "/generate", json={"target_text": "Hi.", "prompt_latents": latents(0.5), "prompt_text": "Hey.", **PCM}
        )
    with server.client(headers=ADMIN) as admin:
        stored = admin.post(
            "/voices", json={"name": "limits-loud", "prompt_latents": latents(3e38), "prompt_text": "x"}
        )
        kept = admin.get("/voices/limits-loud").status_code
    for response, field in ((inline, "prompt_latents.data"), (reference, "ref_latents.data"), (stored, None)):
        error = error_of(response)
        assert error["status"] == 400 and "magnitude" in error["message"], error
        assert error["field"] == (field or "prompt_latents.data")
    assert kept == 404
    assert normal.status_code == 200 and len(normal.content) > 0  # latents of a real scale still work


@pytest.fixture(scope="module")
def lora_server(tiny_v2: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with one LoRA slot (the shared one serves no LoRA voices)."""
    root = tmp_path_factory.mktemp("lora-server")
    extra = ("--voices-dir", str(root / "voices"), "--max-loras", "1", "--max-lora-rank", "8")
    with running(tiny_v2, root / "server.log", *extra, api_key=API_KEY) as served:
        yield served


def test_lora_voice_of_absurd_magnitude_is_a_400_naming_the_field(lora_server: Server, tiny_v2: Path, tmp_path):
    from voxcpm_engine.tools.synthetic_lora import write_lora

    adapter = write_lora(tiny_v2, tmp_path / "adapter", rank=4, seed=3)
    weights = b64((adapter / "lora_weights.safetensors").read_bytes())
    config = json.loads((adapter / "lora_config.json").read_text())

    def upload(client, name: str, **changes: object):
        doc = {**config, "lora_config": {**config["lora_config"], **changes}}
        return client.post("/voices", json={"name": name, "lora_weights": weights, "lora_config": doc})

    with lora_server.client() as client:
        alpha = upload(client, "absurd-alpha", alpha=1e308)
        rank = upload(client, "absurd-rank", r=10**12)
        scaling = upload(client, "absurd-scaling", alpha=4 * 64 + 1)  # alpha / r = 64.25
        names = client.get("/voices").json()["voices"]
        good = upload(client, "sane", alpha=8)
        spoken = client.post("/generate", json={"target_text": "Hi.", "voice": "sane", "max_generate_length": 3, **PCM})
    for response, words in ((alpha, "lora_config.alpha"), (rank, "lora_config.r"), (scaling, "lora_config.alpha")):
        error = error_of(response)
        assert (error["status"], error["field"]) == (400, "lora_config"), error
        assert words in error["message"] and len(error["message"]) < 300, error
    assert names == []  # nothing of them was kept
    assert good.status_code == 201, good.text
    samples = np.frombuffer(spoken.content, "<i2")
    assert spoken.status_code == 200 and samples.size > 0 and np.abs(samples).max() > 0


# --- names -----------------------------------------------------------------------------------------


def test_huge_names_are_refused_and_never_echoed(server: Server):
    huge = "v" * 100_000
    with server.client() as client:
        generate = client.post("/generate", json={"target_text": "Hi.", "voice": huge, **PCM})
        speech = client.post("/v1/audio/speech", json={"input": "Hi.", "voice": huge, **PCM})
        unknown = client.post("/generate", json={"target_text": "Hi.", "voice": "v" * 64, **PCM})
        path = client.get("/voices/" + "v" * 4000)
    with server.client(headers=ADMIN) as admin:
        create = admin.post("/voices", json={"name": huge, "ref_audio": b64(sine_wav())})
        mismatch = admin.put("/voices/abc", json={"name": huge, "ref_audio": b64(sine_wav())})
    for response, status, field in (
        (generate, 400, "voice"),
        (speech, 400, "voice"),
        (unknown, 404, "voice"),
        (path, 404, "name"),
        (create, 400, "name"),
        (mismatch, 400, "name"),
    ):
        error = error_of(response)
        assert (error["status"], error["field"]) == (status, field), error
        assert len(response.content) < 600 and "v" * 81 not in error["message"], error["message"][:200]


# --- min_generate_length ---------------------------------------------------------------------------


def test_min_generate_length_over_the_step_limit_is_a_400(server: Server):
    # The shared server's --default-max-generate-length is 3 (tests/server_process.py).
    with server.client() as client:
        over_default = client.post("/generate", json={"target_text": "Hello.", "min_generate_length": 4, **PCM})
        over_given = client.post(
            "/generate",
            json={"target_text": "Hello.", "min_generate_length": 5, "max_generate_length": 4, **PCM},
        )
        at_limit = client.post("/generate", json={"target_text": "Hello.", "min_generate_length": 3, **PCM})
        plain = client.post("/generate", json={"target_text": "Hello.", **PCM})
    for response in (over_default, over_given):
        error = error_of(response)
        assert (error["status"], error["field"]) == (400, "min_generate_length"), error
        assert "max_generate_length" in error["message"]
    assert at_limit.status_code == 200 and len(at_limit.content) == len(plain.content) > 0  # 3 patches each


# --- nothing to speak ------------------------------------------------------------------------------

UNSPEAKABLE = {
    "emoji": "\U0001f600\U0001f389\U0001f44d",
    "zero-width": "\u200b\u200d\u200c\u200d",
    "control": "\x01\x02\x1f",
    "punctuation": "?! ... -- \u3002\uff01",  # ("***" would be read "asterisk" once normalized)
    "format-and-emoji": "\ufeff\u2060\U0001f600\ufe0f",
}


@pytest.mark.parametrize("text", UNSPEAKABLE.values(), ids=UNSPEAKABLE.keys())
def test_text_with_nothing_to_speak_is_a_400_on_both_endpoints(server: Server, text: str):
    with server.client() as client:
        native = client.post("/generate", json={"target_text": text, **PCM})
        normalized = client.post("/generate", json={"target_text": text, "normalize": True, **PCM})
        speech = client.post("/v1/audio/speech", json={"input": text, "max_generate_length": 2, **PCM})
    for response, field in ((native, "target_text"), (normalized, "target_text"), (speech, "input")):
        error = error_of(response)
        assert (error["status"], error["field"]) == (400, field), error
        assert "nothing to speak" in error["message"]


def test_text_with_something_to_speak_among_emoji_is_spoken(server: Server):
    with server.client() as client:
        native = client.post("/generate", json={"target_text": "\U0001f600 Hi 2", **PCM})
        speech = client.post("/v1/audio/speech", json={"input": "\U0001f600 Hi", "max_generate_length": 2, **PCM})
    assert native.status_code == speech.status_code == 200


# --- error messages --------------------------------------------------------------------------------


def test_undecodable_audio_errors_show_no_python_object_reprs(server: Server):
    junk = b64(b"plain text, no audio " * 64)
    with server.client() as client:
        responses = [
            client.post("/generate", json={"target_text": "Hi.", "prompt_audio": junk, "prompt_text": "x", **PCM}),
            client.post("/generate", json={"target_text": "Hi.", "ref_audio": junk, **PCM}),
            client.post("/encode_latents", json={"audio": junk}),
            client.post("/v1/audio/speech", json={"input": "Hi.", "voice": "a" * 65, **PCM}),
        ]
    with server.client(headers=ADMIN) as admin:
        responses.append(admin.post("/voices", json={"name": "limits-junk", "prompt_audio": junk, "prompt_text": "x"}))
    for response in responses:
        message = error_of(response)["message"]
        assert 400 <= response.status_code < 500, response.text
        assert " object at 0x" not in message and "<_io." not in message, message
