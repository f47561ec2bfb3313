"""The server answers while its engine starts (``tts_server.startup``): 503 with the phase, then ready.

A real engine process on the tiny model (CPU: it loads but captures nothing) behind a real
hypercorn on loopback. The spawned engine takes seconds to import torch, so the first answers
come while it is still starting.
"""

import asyncio
import gc

import httpx
import pytest

from tests.tts_server.serving import AppServer
from tts_server.app import create_app
from tts_server.config import ServerConfig
from tts_server.lifecycle import EXIT_START_FAILED, ServerState


def _config(model):
    return ServerConfig(
        model=str(model), device="cpu", max_num_seqs=1, max_num_batched_tokens=64, max_model_len=256,
        voices_dir=None, host="127.0.0.1", engine_threads=1,
    )  # fmt: skip


async def _until(client, path, code, timeout_s=60.0):
    end = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < end:
        response = await client.get(path)
        if response.status_code == code:
            return response
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} never answered {code}")


def test_ready_is_503_with_the_phase_until_the_engine_is_up(tiny_v2):
    app = create_app(_config(tiny_v2), freeze_when_ready=True)
    server = AppServer(app)
    assert gc.get_freeze_count() == 0

    async def go():
        url = await server.start()
        try:
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                ready = await client.get("/ready")
                assert ready.status_code == 503
                assert ready.json()["status"] == "starting"
                assert ready.json()["reason"].startswith(("the engine is starting", "the server is starting"))
                status = (await client.get("/status")).json()
                assert status["status"] == "starting" and status["can_accept_requests"] is False
                assert status["startup"]["ready_s"] is None and status["startup"]["step"] == "starting the engine"
                work = await client.post("/generate", json={"target_text": "Too early."})
                assert work.status_code == 503 and "Retry-After" in work.headers
                await _until(client, "/ready", 200)
                status = (await client.get("/status")).json()
                assert status["status"] == "ready" and status["reason"] is None
                # Start-up's objects are out of every later collection (no full GC on the first requests).
                assert gc.get_freeze_count() > 0
                assert status["startup"]["step"] is None and status["startup"]["ready_s"] > 0
                [engine] = status["startup"]["engines"]
                assert engine["device"] == "cpu" and engine["phase"] == "loading"  # CPU: no graphs, no warm-up
                work = await client.post("/generate", json={"target_text": "Now.", "max_generate_length": 2})
                assert work.status_code == 200 and work.content
        finally:
            await server.stop()
            gc.unfreeze()

    asyncio.run(go())


@pytest.mark.parametrize("broken", ["config.json", "model.safetensors"])
def test_a_start_that_fails_says_why_and_asks_to_exit_non_zero(tiny_v2, tmp_path, broken):
    model = tmp_path / "model"
    model.mkdir()
    for f in tiny_v2.iterdir():
        (model / f.name).write_bytes(b"{" if f.name == broken else f.read_bytes())
    app = create_app(_config(model))
    server = AppServer(app)

    async def go():
        url = await server.start()
        try:
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                await asyncio.wait_for(app.state.lifecycle.shutdown_requested.wait(), 60)
                ready = await client.get("/ready")
                assert ready.status_code == 503 and "could not start" in ready.json()["reason"]
        finally:
            await server.stop()

    asyncio.run(go())
    assert app.state.lifecycle.state is ServerState.START_FAILED
    assert app.state.lifecycle.exit_code == EXIT_START_FAILED
