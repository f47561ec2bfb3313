"""The voice endpoints over HTTP: a real hypercorn on loopback, a real engine on the tiny VoxCPM1 model.

The module shares one event loop between the engine, the server and the httpx client.
"""

import asyncio
import base64
import json

import httpx
import numpy as np
import pytest
import torch
from starlette.applications import Starlette

from tests.tts_server.serving import AppServer, sine_wav
from tts_server.errors import ApiError, api_error_handler
from tts_server.routes.voices import voice_routes
from tts_server.voices.latents import latents_from_json
from tts_server.voices.store import VoiceStore
from voxcpm_engine.config.engine_config import EngineConfig
from voxcpm_engine.proc.client import AsyncEngine
from voxcpm_engine.tools.synthetic_lora import write_lora

CONFIG = EngineConfig(max_num_seqs=4, max_num_batched_tokens=64, max_model_len=256, max_loras=2)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def runner(loop_runner):
    """The suite's one event loop (the module's engine belongs to it)."""
    return loop_runner


@pytest.fixture(scope="module")
def served(runner, tiny_v1, tmp_path_factory):
    """(app, base URL, engine) with the voice routes mounted as the server app will."""
    engine = AsyncEngine(tiny_v1, CONFIG, num_threads=1)
    runner.run(engine.start())
    info = engine.model_info  # what the server's app puts there: the engine's READY report
    app = Starlette(routes=voice_routes(), exception_handlers={ApiError: api_error_handler})
    app.state.engine, app.state.model = engine, info
    app.state.voices = VoiceStore(
        tmp_path_factory.mktemp("voices"), engine, model_version=info.version, patch_size=info.patch_size,
        latent_dim=info.latent_dim, max_prompt_seconds=3.0, sample_rate=info.sample_rate,
    )  # fmt: skip
    server = AppServer(app)
    url = runner.run(server.start())
    yield app, url, engine
    runner.run(server.stop())
    runner.run(engine.stop())


@pytest.fixture
def call(runner, served):
    """``call(method, path, **httpx kwargs) -> httpx.Response`` against the served app."""
    _, url, _ = served

    def go(method, path, **kwargs):
        async def once():
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                return await client.request(method, path, **kwargs)

        return runner.run(once())

    return go


def _error(response, status, field):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] == field, error
    return error


@pytest.fixture(scope="module")
def lora(tiny_v1, tmp_path_factory):
    d = write_lora(tiny_v1, tmp_path_factory.mktemp("lora") / "a", rank=4)
    return b64((d / "lora_weights.safetensors").read_bytes()), json.loads((d / "lora_config.json").read_text())


def test_voice_lifecycle_over_http(call, served, runner, lora):
    app, _, engine = served
    wav = sine_wav(0.5)
    assert call("GET", "/voices").json() == {"voices": [], "details": []}
    r = call("POST", "/voices", json={"name": "alice", "prompt_audio": b64(wav), "prompt_text": "Hello there."})
    assert r.status_code == 201 and r.headers["location"] == "/voices/alice" and r.json()["kinds"] == ["prompt"]
    assert "replaced" not in r.json()
    expected = runner.run(engine.encode_prompt(wav))
    assert torch.equal(app.state.voices.resolve("alice").voice.prompt_latents, expected)
    _error(call("POST", "/voices", json={"name": "alice", "ref_audio": b64(wav)}), 400, "ref_audio")  # VoxCPM1
    err = _error(
        call("POST", "/voices", json={"name": "alice", "prompt_audio": b64(wav), "prompt_text": "x"}), 409, "name"
    )
    assert err["type"] == "conflict"
    weights, config = lora
    r = call("PUT", "/voices/alice", json={"lora_weights": weights, "lora_config": config})
    assert r.status_code == 200 and r.json()["kinds"] == ["lora"] and app.state.voices.resolve("alice").lora == "alice"
    listing = call("GET", "/voices").json()
    assert listing["voices"] == ["alice"] and listing["details"][0]["name"] == "alice"
    assert call("GET", "/voices/alice").json()["kinds"] == ["lora"]
    _error(call("GET", "/voices/bob"), 404, "name")
    assert call("DELETE", "/voices/alice").json() == {"status": "removed", "name": "alice"}
    _error(call("DELETE", "/voices/alice"), 404, "name")
    assert call("GET", "/voices").json()["voices"] == []


def test_encode_latents_and_a_voice_from_latents(call, served, runner):
    _, _, engine = served
    wav = sine_wav(0.7)
    r = call("POST", "/encode_latents", json={"audio": b64(wav)})
    body = r.json()
    assert r.status_code == 200 and body["dtype"] == "float32" and body["seconds"] == 0.7 and not body["reference"]
    assert "prompt_latents_base64" not in body
    latents = latents_from_json({k: body[k] for k in ("dtype", "shape", "data")}, "x", patch_size=body["shape"][1],
                                latent_dim=64, max_patches=1000)  # fmt: skip
    assert torch.equal(latents, runner.run(engine.encode_prompt(wav)))
    legacy = call("POST", "/encode_latents", json={"wav_base64": b64(wav), "wav_format": "wav"}).json()
    assert legacy["prompt_latents_base64"] == body["data"] and legacy["feat_dim"] == 64 and legacy["channels"] == 1
    wire = {k: body[k] for k in ("dtype", "shape", "data")}
    r = call("POST", "/voices", json={"name": "from-latents", "prompt_latents": wire, "prompt_text": "Hi."})
    assert r.status_code == 201 and r.json()["prompt_seconds"] > 0
    assert call("DELETE", "/voices/from-latents").status_code == 200
    _error(call("POST", "/encode_latents", json={"audio": b64(wav), "reference": True}), 400, "audio")
    _error(call("POST", "/encode_latents", json={"audio": b64(b"not audio")}), 400, "audio")
    _error(call("POST", "/encode_latents", json={"audio": b64(sine_wav(3.5))}), 413, "audio")
    _error(call("POST", "/encode_latents", json={}), 400, "audio")


def test_legacy_prompt_endpoints(call, served):
    app, _, _ = served
    wav = b64(sine_wav(0.4))
    r = call(
        "POST", "/add_prompt", json={"voice_name": "bob", "prompt_wav": wav, "wav_format": "wav", "prompt_text": "Hi."}
    )
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["prompt_id"] == "bob"
    r = call("POST", "/add_prompt", json={"name": "bob", "wav_base64": wav, "prompt_text": "Again."})  # replaces
    assert r.status_code == 200 and app.state.voices.resolve("bob").voice.prompt_text == "Again."
    generated = call("POST", "/add_prompt", json={"wav_base64": wav, "wav_format": "wav", "prompt_text": "Id."}).json()
    assert (
        generated["prompt_id"].startswith("prompt-")
        and generated["prompt_id"] in call("GET", "/voices").json()["voices"]
    )
    _error(call("POST", "/add_prompt", json={"name": "c", "prompt_text": "x"}), 400, "prompt_audio")
    both = {"name": "c", "prompt_wav": wav, "wav_base64": b64(b"x"), "prompt_text": "x"}
    _error(call("POST", "/add_prompt", json=both), 400, "wav_base64")
    _error(
        call("POST", "/add_prompt", json={"prompt_id": "../c", "prompt_wav": wav, "prompt_text": "x"}), 400, "prompt_id"
    )
    for name in ("bob", generated["prompt_id"]):
        assert call("POST", "/remove_prompt", json={"prompt_id": name}).json() == {"status": "ok", "name": name}
    _error(call("POST", "/remove_prompt", json={"voice_name": "bob"}), 404, "name")
    _error(call("POST", "/remove_prompt", json={}), 400, "voice_name")


@pytest.mark.parametrize(
    "body, status, field, words",
    [
        ({"prompt_audio": "x"}, 400, "name", "required"),
        ({"name": "../etc", "ref_audio": "AAAA"}, 400, "name", "invalid voice name"),
        ({"name": "v", "replace": "yes"}, 400, "replace", "boolean"),
        ({"name": "v", "colour": "red"}, 400, "colour", "unknown field"),
        ({"name": 5}, 400, "name", "string"),
        ({"name": "v", "prompt_audio": "not base64!", "prompt_text": "x"}, 400, "prompt_audio", "base64"),
        ({"name": "v", "prompt_latents": {"dtype": "float32", "shape": [1, 9, 64], "data": ""}, "prompt_text": "x"},
         400, "prompt_latents.shape", "[T, 4, 64]"),
        ({"name": "v", "prompt_latents": [1], "prompt_text": "x"}, 400, "prompt_latents", "object"),
        ({"name": "v", "lora_weights": b64(b"0" * 64), "lora_config": {"r": 4}}, 400, "lora_weights", "safetensors"),
        ({"name": "v", "prompt_text": "x"}, 400, "prompt_text", "without prompt_audio"),
    ],
)  # fmt: skip
def test_bad_bodies_name_the_field(call, body, status, field, words):
    error = _error(call("POST", "/voices", json=body), status, field)
    assert words in error["message"], error


def test_malformed_requests(call, served):
    json_type = {"content-type": "application/json"}
    err = _error(call("POST", "/voices", content=b"{nope", headers=json_type), 400, None)
    assert err["message"].startswith("request body is not valid JSON")
    assert "JSON object" in _error(call("POST", "/voices", content=b"[1, 2]", headers=json_type), 400, None)["message"]
    assert "empty" in _error(call("POST", "/voices", content=b"", headers=json_type), 400, None)["message"]
    err = _error(call("POST", "/voices", content=b'{"name": "x"}', headers={"content-type": "text/plain"}), 415, None)
    assert err["type"] == "unsupported_media_type"
    _error(call("POST", "/encode_latents", content=b"{}"), 415, None)  # no content type at all
    vendor_json = {"content-type": "application/vnd.x+json; charset=utf-8"}
    assert call("POST", "/remove_prompt", content=b'{"name": "n"}', headers=vendor_json).status_code == 404
    _error(call("PUT", "/voices/a..b", json={"ref_audio": "AAAA"}), 400, "name")
    _error(call("PUT", "/voices/abc", json={"name": "xyz", "ref_audio": "AAAA"}), 400, "name")


def test_long_names_are_not_echoed_back(call):
    long = "n" * 20_000
    for response, status in (
        (call("GET", f"/voices/{long}"), 404),
        (call("PUT", "/voices/abc", json={"name": long, "ref_audio": "AAAA"}), 400),
        (call("PUT", f"/voices/{long}", json={"name": "abc", "ref_audio": "AAAA"}), 400),
        (call("POST", "/voices", json={"name": long, "ref_audio": "AAAA"}), 400),
        (call("POST", "/remove_prompt", json={"name": long}), 400),
    ):
        error = _error(response, status, "name")
        assert len(error["message"]) < 250 and "n" * 81 not in error["message"], error["message"][:300]  # a prefix


def test_lora_config_of_absurd_magnitude_is_a_400_naming_it(call, lora):
    # alpha 1e308 (an integral float) used to register, and every request with the voice was silent.
    weights, config = lora
    for changes, words in (({"alpha": 1e308}, "lora_config.alpha"), ({"r": 10**9}, "lora_config.r")):
        bad = {**config, "lora_config": {**config["lora_config"], **changes}}
        error = _error(call("POST", "/voices", json={"name": "absurd", "lora_weights": weights, "lora_config": bad}),
                       400, "lora_config")  # fmt: skip
        assert words in error["message"] and len(error["message"]) < 300, error
    assert call("GET", "/voices/absurd").status_code == 404  # nothing was kept


def test_latents_of_absurd_magnitude_are_a_400_naming_them(call):
    huge = {"dtype": "float32", "shape": [1, 4, 64], "data": b64(np.full((1, 4, 64), 3e38, "<f4").tobytes())}
    error = _error(call("POST", "/voices", json={"name": "loud", "prompt_latents": huge, "prompt_text": "Hi."}),
                   400, "prompt_latents.data")  # fmt: skip
    assert "magnitude" in error["message"]


def _raw(runner, url, head: bytes, body: bytes) -> tuple[int, dict]:
    """Send a whole request in one write and read until the server closes: a client that uploads a
    body the server refuses unread may see a reset instead of the response if its upload races the
    server's close; one write over loopback leaves nothing unread."""
    host, port = url.removeprefix("http://").split(":")

    async def go():
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(head + b"\r\nConnection: close\r\nContent-Type: application/json\r\n\r\n" + body)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return data

    status_line, _, rest = runner.run(go()).partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


def test_oversized_bodies_are_refused_with_413(runner, served):
    app, url, _ = served
    app.state.max_voice_body_bytes = 1000
    app.state.max_body_bytes = 100
    try:
        body = json.dumps({"name": "big", "prompt_audio": "A" * 2000, "prompt_text": "x"}).encode()
        head = b"POST /voices HTTP/1.1\r\nHost: t\r\nContent-Length: %d" % len(body)
        status, doc = _raw(runner, url, head, body)  # refused by its Content-Length, unread
        assert status == 413 and doc["error"]["type"] == "too_large"
        assert f"of {len(body)} bytes exceeds the limit of 1000" in doc["error"]["message"]
        chunked = b"".join(b"C8\r\n" + b" " * 200 + b"\r\n" for _ in range(6)) + b"0\r\n\r\n"
        head = b"POST /voices HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked"
        status, doc = _raw(runner, url, head, chunked)  # no Content-Length: counted while streaming
        assert status == 413 and "more than 1000 bytes" in doc["error"]["message"]
        body = json.dumps({"name": "x" * 100}).encode()  # the other endpoints: max_body_bytes
        head = b"POST /remove_prompt HTTP/1.1\r\nHost: t\r\nContent-Length: %d" % len(body)
        assert _raw(runner, url, head, body)[0] == 413
    finally:
        del app.state.max_voice_body_bytes, app.state.max_body_bytes
