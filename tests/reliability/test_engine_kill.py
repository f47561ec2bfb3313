"""The engine process is SIGKILLed under load (a ``python -m tts_server`` subprocess of its own).

Documented policy (``tts_server.app``): the server does not restart the engine; it fails what is
in flight, turns ``/ready`` to 503, refuses new work with 503, and exits with code 3 for its
supervisor to restart it. Checked here: every streaming client gets an error (a broken stream: the
response ends without its final chunk) and every queued one an error status (503) or a broken
connection, never a clean, complete stream; ``/ready`` answers 503 before the process goes; new
work gets 503; the process exits 3 within a few seconds.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import httpx

from tests.server_process import start

LONG = 200
STREAMS = 4  # = inference slots: all running
QUEUED = 4


async def stream(client: httpx.AsyncClient, rid: str, started: asyncio.Event | None) -> str:
    body = {"target_text": "Under load.", "max_generate_length": LONG, "response_format": "pcm", "request_id": rid}
    try:
        async with client.stream("POST", "/generate", json=body) as response:
            if response.status_code != 200:
                return f"status {response.status_code}"
            async for chunk in response.aiter_raw():
                if chunk and started is not None:
                    started.set()
        return "complete"
    except httpx.TransportError as exc:
        return f"broken ({type(exc).__name__})"


def test_engine_sigkill_under_load_fails_in_flight_and_exits_3(tiny_v2: Path, tmp_path: Path):
    server = start(tiny_v2, tmp_path / "server.log", "--voices-dir", "")

    async def go():
        async with server.async_client(timeout=60.0) as client:
            started = [asyncio.Event() for _ in range(STREAMS)]
            running = [asyncio.create_task(stream(client, f"run-{i}", started[i])) for i in range(STREAMS)]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 30)
            queued = [asyncio.create_task(stream(client, f"wait-{i}", None)) for i in range(QUEUED)]
            await asyncio.sleep(0.3)
            waiting = (await client.get("/status")).json()["inference"]["queued"]
            os.kill(server.engine_pid(), signal.SIGKILL)
            killed = time.monotonic()
            outcomes = await asyncio.wait_for(asyncio.gather(*running, *queued), 15)
            failed_in = time.monotonic() - killed
            ready = refused = None
            try:
                ready = await client.get("/ready")
                refused = await client.post("/generate", json={"target_text": "Late.", "max_generate_length": 1})
            except httpx.TransportError:
                pass  # already gone: the exit code below still tells
            return waiting, outcomes, failed_in, ready, refused, killed

    try:
        waiting, outcomes, failed_in, ready, refused, killed = asyncio.run(go())
        code = server.process.wait(timeout=20)
        exited_in = time.monotonic() - killed
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
    log = server.log()
    assert waiting == QUEUED, log
    running, queued = outcomes[:STREAMS], outcomes[STREAMS:]
    assert all(o.startswith("broken") for o in running), (outcomes, log)
    assert all(o == "status 503" or o.startswith("broken") for o in queued), (outcomes, log)
    assert failed_in < 5.0, failed_in
    assert ready is not None and ready.status_code == 503, log
    assert ready.json()["status"] == "engine_dead"
    assert refused is not None and refused.status_code == 503
    assert code == 3, log
    assert exited_in < 10.0, exited_in
    print(f"engine kill: {outcomes}, clients failed in {failed_in:.2f} s, exit 3 after {exited_in:.1f} s")
