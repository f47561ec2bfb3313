"""The app with engines of its own (started from its settings, two engine processes): engine death.

When one engine process dies, its streams break off (the client sees an incomplete transfer, not a
short file), queued requests get 503, ``/ready`` and ``/health`` report it, new work gets 503, and
the lifecycle asks the process to exit non-zero. This module starts its own engines because it
kills one.
"""

import asyncio
import os
import signal

import httpx
import pytest

from tests.tts_server.serving import AppServer
from tts_server.app import create_app
from tts_server.config import ServerConfig
from tts_server.lifecycle import EXIT_ENGINE_DEAD, ServerState

BODY = {"target_text": "The engine is about to die.", "response_format": "pcm", "max_generate_length": 200}


@pytest.fixture(scope="module")
def config(tiny_v2):
    return ServerConfig(
        model=str(tiny_v2), device="cpu,cpu", max_num_seqs=1, max_num_batched_tokens=64, max_model_len=256,
        voices_dir=None, host="127.0.0.1", engine_threads=1,
    )  # fmt: skip


async def first_bytes(client, rid):
    request = client.build_request("POST", "/generate", json={**BODY, "request_id": rid})
    response = await client.send(request, stream=True)
    assert response.status_code == 200
    chunks = response.aiter_bytes()
    await anext(chunks)
    return response, chunks


async def drain(chunks):
    """Read to the end; returns the error that broke the transfer off, if one did."""
    try:
        async for _ in chunks:
            pass
    except httpx.HTTPError as exc:
        return exc
    return None


def test_engine_death_breaks_its_streams_fails_the_queue_and_refuses_work(loop_runner, config):
    app = create_app(config)
    server = AppServer(app)

    async def go():
        url = await server.start()
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            while (await client.get("/ready")).status_code != 200:
                await asyncio.sleep(0.05)
            svc = app.state.services
            assert [e.device for e in svc.engine.engines] == ["cpu", "cpu"] and svc.queue.slots == 2
            one, one_rest = await first_bytes(client, "one")
            two, two_rest = await first_bytes(client, "two")
            queued = asyncio.create_task(client.post("/generate", json={**BODY, "request_id": "three"}))
            while svc.queue.depth == 0:
                await asyncio.sleep(0.01)
            victim = svc.engine.engines[0]
            os.kill(victim.pid, signal.SIGKILL)
            errors = await asyncio.wait_for(asyncio.gather(drain(one_rest), _first_done(two_rest)), 10)
            after = await asyncio.gather(
                queued, client.get("/ready"), client.get("/health"), client.post("/generate", json=BODY)
            )
            metrics = (await client.get("/metrics")).text
            await one.aclose()
            await two.aclose()
            return svc, errors, after, metrics

    try:
        svc, errors, (queued, ready, health, new), metrics = loop_runner.run(go())
        lifecycle = app.state.lifecycle
        broken = [e for e in errors if e is not None]
        assert len(broken) == 1 and isinstance(broken[0], httpx.RemoteProtocolError)  # one stream per engine
        assert queued.status_code == 503 and "engine" in queued.json()["error"]["message"]
        assert ready.status_code == 503 and ready.json()["status"] == "engine_dead"
        assert health.status_code == 503 and health.json()["status"] == "engine_dead"
        assert new.status_code == 503 and new.headers["retry-after"]
        assert lifecycle.state is ServerState.ENGINE_DEAD and lifecycle.exit_code == EXIT_ENGINE_DEAD
        assert lifecycle.shutdown_requested.is_set()
        assert "tts_engine_alive 0.0" in metrics
        assert 'tts_requests_total{endpoint="generate",outcome="failed"} 1.0' in metrics
    finally:
        loop_runner.run(server.stop(timeout_s=30))
    assert all(not e.is_alive for e in svc.engine.engines)  # the app stopped the engine it started


async def _first_done(chunks):
    """The stream on the surviving engine keeps going: read one more chunk, then leave it."""
    async for _ in chunks:
        return None
    return None
