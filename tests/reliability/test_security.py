"""Security checks against the live shared server (API key, separate admin key, debug logging).

- Voice names with traversal (``../x``, ``..``, ``a/b``, absolute paths, URL-encoded and
  backslash variants), in the path of ``PUT``/``DELETE``/``GET /voices/{name}`` (sent verbatim,
  without client-side normalization) and in the bodies of ``POST /voices``, ``/add_prompt`` and
  ``/remove_prompt``: each a 4xx, and nothing is written outside the voices directory.
- Body limits: a body over ``--max-body-bytes`` (declared, or streamed chunked without a length)
  and a voice upload over ``--max-voice-body-bytes`` are 413.
- Keys: work endpoints need the API key (401 without or with a wrong one); voice management needs
  the admin key (403 with the API key, success with the admin key); the health endpoints are open.
- Logs: after all that, at ``--log-level debug``, neither key, nor a wrong key that was tried,
  nor any of the uploaded audio's base64 appears in the server's stdout/stderr.
"""

from __future__ import annotations

import base64
import http.client
import json
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

from tests.reliability.conftest import ADMIN_KEY, API_KEY, MAX_BODY, MAX_VOICE_BODY
from tests.server_process import Server

WRONG_KEY = "sk-wrong-key-5a9e0c7d31"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
TRAVERSALS = ["../x", "..", "a/b", "/etc/passwd", "..%2Fx", "%2e%2e", "%2e%2e%2fescape", "a%2Fb", "..\\x", "."]


def noise_wav(seconds: float = 0.5, rate: int = 16000, seed: int = 1) -> bytes:
    """A WAV of random samples: its base64 is unique, so it can be searched for in the log."""
    import io

    import soundfile as sf

    samples = np.random.default_rng(seed).uniform(-0.3, 0.3, int(seconds * rate)).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV")
    return buf.getvalue()


AUDIO_B64 = base64.b64encode(noise_wav()).decode()


def raw(server: Server, method: str, path: str, body: dict | None = None, key: str = ADMIN_KEY) -> int:
    """Send a request with the path exactly as given (httpx would resolve ``..`` segments)."""
    url = urlsplit(server.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def voice_body(name: str | None = None) -> dict:
    body = {"prompt_audio": AUDIO_B64, "prompt_text": "A voice."}
    return {**body, "name": name} if name is not None else body


@pytest.mark.parametrize("name", TRAVERSALS)
def test_traversal_voice_names_are_rejected_and_write_nothing_outside(server: Server, voices_dir: Path, name: str):
    root = voices_dir.parent
    before = files_under(root)
    statuses = {
        "PUT path": raw(server, "PUT", f"/voices/{name}", voice_body()),
        "GET path": raw(server, "GET", f"/voices/{name}", key=API_KEY),
        "DELETE path": raw(server, "DELETE", f"/voices/{name}"),
    }
    with server.client(headers=ADMIN) as client:
        statuses["POST /voices"] = client.post("/voices", json=voice_body(name)).status_code
        add = {"voice_name": name, "prompt_audio": AUDIO_B64, "prompt_text": "A voice."}
        statuses["/add_prompt"] = client.post("/add_prompt", json=add).status_code
        statuses["/remove_prompt"] = client.post("/remove_prompt", json={"name": name}).status_code
    assert all(400 <= s < 500 for s in statuses.values()), statuses
    new = files_under(root) - before
    outside = [p for p in new if voices_dir not in p.parents and p != voices_dir]
    assert not outside, outside
    assert not any(p.name in ("x", "b", "escape", "passwd") for p in new), new
    assert not Path("/etc/passwd/voice.json").exists()


def test_valid_voice_is_written_inside_the_voices_dir(server: Server, voices_dir: Path):
    with server.client(headers=ADMIN) as client:
        created = client.put("/voices/sec-ok", json=voice_body())
        listed = client.get("/voices").json()["voices"]
        removed = client.delete("/voices/sec-ok")
    assert created.status_code in (200, 201), created.text
    assert "sec-ok" in listed and removed.status_code == 200
    assert not (voices_dir / "sec-ok").exists()


def test_oversized_bodies_are_413(server: Server):
    with server.client() as client:
        declared = client.post("/generate", content=b" " * (MAX_BODY + 1), headers={"Content-Type": "application/json"})

        def chunks():
            for _ in range(MAX_BODY // 4096 + 2):
                yield b" " * 4096

        streamed = client.post("/generate", content=chunks(), headers={"Content-Type": "application/json"})
        cancel = client.post("/cancel", content=b" " * (MAX_BODY + 1), headers={"Content-Type": "application/json"})
    with server.client(headers=ADMIN) as admin:
        voice = admin.post("/voices", json={"name": "big", "prompt_audio": "A" * MAX_VOICE_BODY, "prompt_text": "x"})
    for response in (declared, streamed, cancel, voice):
        assert response.status_code == 413, response.text
        assert "exceeds the limit" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/generate"), ("POST", "/v1/audio/speech"), ("GET", "/voices"), ("GET", "/queue"), ("POST", "/cancel")],
)
def test_work_endpoints_need_the_api_key(server: Server, method: str, path: str):
    with server.client() as client:
        client.headers.pop("Authorization")
        missing = client.request(method, path, json={})
        wrong = client.request(method, path, json={}, headers={"Authorization": f"Bearer {WRONG_KEY}"})
        basic = client.request(method, path, json={}, headers={"Authorization": f"Basic {API_KEY}"})
    for response in (missing, wrong, basic):
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == "Bearer"


def test_voice_management_needs_the_admin_key(server: Server):
    with server.client() as client:  # the API key
        statuses = [
            client.post("/voices", json=voice_body("sec-admin")).status_code,
            client.put("/voices/sec-admin", json=voice_body()).status_code,
            client.delete("/voices/sec-admin").status_code,
            client.post("/add_prompt", json={"voice_name": "sec-admin", "prompt_audio": AUDIO_B64,
                                             "prompt_text": "x"}).status_code,
            client.post("/remove_prompt", json={"name": "sec-admin"}).status_code,
        ]  # fmt: skip
        listed = client.get("/voices")
    assert statuses == [403] * 5
    assert listed.status_code == 200 and "sec-admin" not in listed.json()["voices"]
    with server.client(headers=ADMIN) as admin:
        created = admin.post("/voices", json=voice_body("sec-admin"))
        used = admin.post("/generate", json={"target_text": "Hi.", "voice": "sec-admin", "max_generate_length": 2})
        removed = admin.delete("/voices/sec-admin")
    assert created.status_code == 201, created.text
    assert used.status_code == 200  # the admin key works on work endpoints too
    assert removed.status_code == 200


@pytest.mark.parametrize("path", ["/health", "/ready", "/status", "/metrics", "/info", "/openapi.json", "/docs"])
def test_health_endpoints_are_open(server: Server, path: str):
    with server.client() as client:
        client.headers.pop("Authorization")
        assert client.get(path).status_code == 200


def test_keys_and_audio_never_reach_the_log(server: Server):
    with server.client() as client:
        ok = client.post(
            "/generate",
            json={
                "target_text": "Logged?",
                "prompt_audio": AUDIO_B64,
                "prompt_text": "A voice.",
                "max_generate_length": 2,
            },
        )
        bad = client.post("/generate", json={"target_text": 7, "prompt_audio": AUDIO_B64})  # a validation error
        client.post("/generate", json={}, headers={"Authorization": f"Bearer {WRONG_KEY}"})
        client.post("/encode_latents", json={"audio": AUDIO_B64}, headers=ADMIN)
    assert ok.status_code == 200 and bad.status_code == 400
    log = server.log()
    assert "DEBUG" in log and "slot granted" in log and "/generate" in log  # debug logging records requests
    for secret in (API_KEY, ADMIN_KEY, WRONG_KEY):
        assert secret not in log
    for start in range(100, len(AUDIO_B64) - 32, 997):  # any 32-character run of the audio's base64
        assert AUDIO_B64[start : start + 32] not in log
