"""SIGTERM under load, beyond ``tests/tts_server/test_main.py`` (which covers one short and one long stream).

Here all 4 inference slots stream and 4 more requests wait in the queue when SIGTERM arrives, with
a grace period long enough for all of them. Checked: ``/ready`` is 503 ("draining") on the first
poll right after the signal, new work gets 503 with ``Retry-After``, every running *and* every
queued request still completes with its whole audio (the queue drains, it is not dropped), and the
process exits 0 well within the grace period once they are done.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx

from tests.server_process import start

STEPS = 12
RUNNING = 4
QUEUED = 4
GRACE_S = 20


async def generate(client: httpx.AsyncClient, rid: str, started: asyncio.Event | None) -> bytes | str:
    body = {"target_text": "Drain me.", "max_generate_length": STEPS, "response_format": "pcm", "request_id": rid}
    data = bytearray()
    try:
        async with client.stream("POST", "/generate", json=body) as response:
            if response.status_code != 200:
                return f"status {response.status_code}"
            async for chunk in response.aiter_raw():
                data += chunk
                if chunk and started is not None:
                    started.set()
    except httpx.TransportError as exc:
        return f"broken ({type(exc).__name__})"
    return bytes(data)


def test_sigterm_under_load_drains_running_and_queued_then_exits_0(tiny_v2: Path, tmp_path: Path):
    server = start(tiny_v2, tmp_path / "server.log", "--voices-dir", "", "--shutdown-grace", str(GRACE_S))

    async def go():
        async with server.async_client(timeout=60.0) as client:
            spp = (await client.get("/info")).json()["samples_per_patch"]
            started = [asyncio.Event() for _ in range(RUNNING)]
            tasks = [asyncio.create_task(generate(client, f"run-{i}", started[i])) for i in range(RUNNING)]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 30)
            tasks += [asyncio.create_task(generate(client, f"wait-{i}", None)) for i in range(QUEUED)]
            while (await client.get("/status")).json()["inference"]["queued"] < QUEUED:
                await asyncio.sleep(0.02)
            server.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            while True:  # the signal handler runs on the server's loop: give it a moment, no more
                ready = await client.get("/ready")
                if ready.status_code == 503 or time.monotonic() - signalled > 0.5:
                    break
            ready_after = time.monotonic() - signalled
            refused = await client.post("/generate", json={"target_text": "Late.", "max_generate_length": 1})
            results = await asyncio.gather(*tasks)
            return spp, ready, ready_after, refused, results, signalled

    try:
        spp, ready, ready_after, refused, results, signalled = asyncio.run(go())
        code = server.process.wait(timeout=GRACE_S + 15)
        exited_after = time.monotonic() - signalled
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
    log = server.log()
    assert ready.status_code == 503 and ready.json()["status"] == "draining" and ready_after < 0.5
    assert refused.status_code == 503 and refused.headers["retry-after"]
    whole = STEPS * spp * 2
    assert [len(r) if isinstance(r, bytes) else r for r in results] == [whole] * (RUNNING + QUEUED), log
    assert code == 0, log
    assert exited_after < GRACE_S, exited_after  # done when the work is, not at the grace's end
    assert "cancelled" not in log
    print(f"drain: /ready 503 after {ready_after * 1000:.0f} ms; {RUNNING + QUEUED} whole; exit 0 after "
          f"{exited_after:.1f} s")  # fmt: skip
