"""Hostile and malformed requests against a live server: each is a 4xx whose message names the field.

The table covers empty and 100k-character text, bad base64, non-audio bytes as prompt audio, a WAV
whose header claims an hour, real prompt audio over the server's ``--max-prompt-seconds``, an
unknown voice, invalid JSON, a non-object body, wrong and missing content types, a body over
``--max-body-bytes``, unknown fields, wrong types, and out-of-range values for every numeric field
of ``/generate`` and ``/v1/audio/speech`` (both ends of each range). Afterwards the server still
serves: a normal request succeeds and ``/status`` shows nothing active and every KV block free.
"""

from __future__ import annotations

import base64
import struct

import pytest

from tests.reliability.conftest import MAX_BODY, MAX_PROMPT_SECONDS
from tests.server_process import Server, idle
from tests.tts_server.serving import sine_wav


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def wav_claiming_an_hour() -> bytes:
    """A 16 kHz mono 16-bit WAV whose header says one hour, followed by a few seconds of samples.

    A real hour (115 MB) is far over the body limit (see ``oversized-body``); the header's claim must
    not make the server allocate an hour either. With less data than claimed the decoder goes by the
    samples really there (one second of them is accepted as one second), so the data here is just
    over ``--max-prompt-seconds``.
    """
    rate, claimed = 16000, 3600 * 16000 * 2
    header = b"RIFF" + struct.pack("<I", 36 + claimed) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
    header += b"data" + struct.pack("<I", claimed)
    return header + bytes(int(rate * 2 * (MAX_PROMPT_SECONDS + 1)))


def gen(**fields: object) -> dict[str, object]:
    """A ``/generate`` body: a short valid request with ``fields`` replaced."""
    return {"target_text": "Hello.", "max_generate_length": 2, "response_format": "pcm", **fields}


def speech(**fields: object) -> dict[str, object]:
    """A ``/v1/audio/speech`` body: a short valid request with ``fields`` replaced."""
    return {"input": "Hello.", "max_generate_length": 2, "response_format": "pcm", **fields}


PROMPT = {"prompt_text": "What the voice says."}

# (id, path, request kwargs, status, text the error message must contain)
CASES: list[tuple[str, str, dict[str, object], int, str]] = [
    ("empty-text", "/generate", {"json": gen(target_text="")}, 400, "target_text"),
    ("blank-text", "/generate", {"json": gen(target_text=" \n\t ")}, 400, "target_text"),
    ("100k-text", "/generate", {"json": gen(target_text="a" * 100_000)}, 400, "target_text"),
    ("text-not-string", "/generate", {"json": gen(target_text=5)}, 400, "target_text"),
    ("missing-text", "/generate", {"json": {"voice": None}}, 400, "target_text"),
    ("unknown-field", "/generate", {"json": gen(bogus=1)}, 400, "bogus"),
    ("bad-format", "/generate", {"json": gen(response_format="exe")}, 400, "response_format"),
    ("bad-request-id", "/generate", {"json": gen(request_id="../etc")}, 400, "request_id"),
    ("bad-base64", "/generate", {"json": gen(prompt_audio="!!not base64!!", **PROMPT)}, 400, "prompt_audio"),
    (
        "non-audio",
        "/generate",
        {"json": gen(prompt_audio=b64(b"plain text, no audio " * 64), **PROMPT)},
        400,
        "prompt_audio",
    ),
    (
        "hour-header",
        "/generate",
        {"json": gen(prompt_audio=b64(wav_claiming_an_hour()), **PROMPT)},
        413,
        "prompt_audio",
    ),
    (
        "prompt-too-long",
        "/generate",
        {"json": gen(prompt_audio=b64(sine_wav(MAX_PROMPT_SECONDS + 1.0)), **PROMPT)},
        413,
        "prompt_audio",
    ),
    ("prompt-without-text", "/generate", {"json": gen(prompt_audio=b64(sine_wav(0.5)))}, 400, "prompt_text"),
    ("bad-ref-base64", "/generate", {"json": gen(ref_audio="%%%")}, 400, "ref_audio"),
    ("unknown-voice", "/generate", {"json": gen(voice="nobody-here")}, 404, "nobody-here"),
    (
        "invalid-json",
        "/generate",
        {"content": b'{"target_text": "Hi",', "headers": {"Content-Type": "application/json"}},
        400,
        "JSON",
    ),
    ("not-an-object", "/generate", {"json": ["target_text", "Hi"]}, 400, "JSON object"),
    ("empty-body", "/generate", {"content": b"", "headers": {"Content-Type": "application/json"}}, 400, "empty"),
    (
        "wrong-content-type",
        "/generate",
        {"content": b'{"target_text": "Hi"}', "headers": {"Content-Type": "text/plain"}},
        415,
        "Content-Type",
    ),
    ("form-content-type", "/generate", {"data": {"target_text": "Hi"}}, 415, "Content-Type"),
    ("oversized-body", "/generate", {"json": gen(prompt_audio="A" * (MAX_BODY + 1), **PROMPT)}, 413, "limit"),
    (
        "min-over-max",
        "/generate",
        {"json": gen(min_generate_length=5, max_generate_length=2)},
        400,
        "min_generate_length",
    ),
    ("speech-empty-input", "/v1/audio/speech", {"json": speech(input="")}, 400, "input"),
    (
        "speech-invalid-json",
        "/v1/audio/speech",
        {"content": b"{", "headers": {"Content-Type": "application/json"}},
        400,
        "JSON",
    ),
    ("speech-unknown-voice", "/v1/audio/speech", {"json": speech(voice="nobody-here")}, 404, "nobody-here"),
    ("cancel-bad-id", "/cancel", {"json": {"request_id": ""}}, 400, "request_id"),
]

# Every numeric field, just outside each end of its documented range.
OUT_OF_RANGE: dict[str, dict[str, list[object]]] = {
    "/generate": {
        "temperature": [-0.1, 10.01],
        "cfg_value": [-1.0, 20.5],
        "max_generate_length": [0, 100_001],
        "min_generate_length": [-1, 100_001],
        "seed": [-1, 2**63],
        "inference_timesteps": [0, 101],
    },
    "/v1/audio/speech": {
        "speed": [0.1, 4.5],
        "seed": [-1, 2**63],
        "temperature": [-0.5, 11.0],
        "cfg_value": [-0.1, 21.0],
        "max_generate_length": [0, 100_001],
    },
}
for _path, _fields in OUT_OF_RANGE.items():
    for _field, _values in _fields.items():
        for _value in _values:
            _body = gen(**{_field: _value}) if _path == "/generate" else speech(**{_field: _value})
            CASES.append((f"{_path.rsplit('/', 1)[1]}-{_field}={_value}", _path, {"json": _body}, 400, _field))


@pytest.mark.parametrize(("path", "kwargs", "status", "names"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_a_4xx_naming_the_field(server: Server, path, kwargs, status, names):
    with server.client() as client:
        response = client.post(path, **kwargs)
    assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    assert names in error["message"], error


def test_server_keeps_serving_after_the_table(server: Server):
    with server.client() as client:
        ok = client.post("/generate", json=gen(response_format="pcm"))
        speech_ok = client.post("/v1/audio/speech", json=speech())
    assert ok.status_code == 200 and len(ok.content) > 0
    assert speech_ok.status_code == 200 and len(speech_ok.content) > 0
    status = server.wait_settled()
    assert idle(status), status
    assert server.process.poll() is None
