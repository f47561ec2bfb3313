"""``python -m tts_server`` as a real process: SIGTERM drain, engine death exit code, start failures."""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
LONG = 200


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model, port, *extra):
    args = [
        sys.executable, "-m", "tts_server", "--model", str(model), "--device", "cpu", "--host", "127.0.0.1",
        "--port", str(port), "--max-num-seqs", "2", "--max-num-batched-tokens", "64", "--max-model-len", "256",
        "--engine-threads", "1", "--voices-dir", "", "--log-level", "info", *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


async def until_ready(client, process, timeout_s=90.0):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        assert process.poll() is None, process.stdout.read()
        try:
            if (await client.get("/ready")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("server not ready")


async def open_stream(client, steps, rid, timesteps=10):
    body = {
        "target_text": "Draining.",
        "response_format": "pcm",
        "max_generate_length": steps,
        "request_id": rid,
        "inference_timesteps": timesteps,
    }
    response = await client.send(client.build_request("POST", "/generate", json=body), stream=True)
    assert response.status_code == 200
    chunks = response.aiter_bytes()
    first = await anext(chunks)
    return response, chunks, first


async def read_all(chunks, first):
    """The body and whether the transfer broke off (the server closed the connection mid-body)."""
    data = bytearray(first)
    try:
        async for chunk in chunks:
            data += chunk
    except httpx.RemoteProtocolError:
        return bytes(data), True
    return bytes(data), False


def test_sigterm_drains_in_flight_streams_then_exits_zero(tiny_v2):
    port = free_port()
    process = start_server(tiny_v2, port, "--shutdown-grace", "3", "--stream-buffer-seconds", "1")

    async def go():
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            await until_ready(client, process)
            spp = (await client.get("/info")).json()["samples_per_patch"]
            short, short_chunks, short_first = await open_stream(client, 6, "short")
            # 100 sampler steps a patch: the long stream cannot finish within the grace, however fast the box
            long, long_chunks, long_first = await open_stream(client, LONG, "long", timesteps=100)
            t0 = time.monotonic()
            process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            ready = await client.get("/ready")
            refused = await client.post("/generate", json={"target_text": "Late.", "max_generate_length": 1})
            status = (await client.get("/status")).json()
            short_data, short_broken = await read_all(short_chunks, short_first)
            long_data, long_broken = await read_all(long_chunks, long_first)
            long_ended = time.monotonic() - t0
            await short.aclose()
            await long.aclose()
            return (
                spp,
                ready,
                refused,
                status,
                (len(short_data), short_broken),
                (len(long_data), long_broken),
                long_ended,
            )

    try:
        spp, ready, refused, status, short_data, long_data, long_ended = asyncio.run(go())
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log = process.stdout.read()
    assert ready.status_code == 503 and ready.json()["status"] == "draining"
    assert refused.status_code == 503 and refused.headers["retry-after"]
    assert status["status"] == "draining" and status["can_accept_requests"] is False
    assert short_data == (6 * spp * 2, False)  # finished within the grace period, whole
    # cut at the grace period's end, broken off (not a clean end that would look like a whole file)
    assert 0 < long_data[0] < LONG * spp * 2 and long_data[1] and 2.5 < long_ended < 10
    assert code == 0, log
    assert "SIGTERM: draining" in log and "cut off 1 request" in log


def test_engine_death_exits_with_code_3(tiny_v2):
    port = free_port()
    process = start_server(tiny_v2, port)

    async def go():
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            await until_ready(client, process)
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        engines = [c for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
        assert len(engines) == 1, children  # the engine-core process (not the resource tracker)
        os.kill(int(engines[0]), signal.SIGKILL)

    try:
        asyncio.run(go())
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log = process.stdout.read()
    assert code == 3, log
    assert "exiting for the supervisor to restart" in log


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--max-num-seqs", "0"], 2, "--max-num-seqs"),
        (["--model", "/no/such/checkpoint"], 1, "could not start"),
    ],
)
def test_bad_settings_and_failed_starts_exit_non_zero(args, code, message):
    argv = args if "--model" in args else ["--model", "m", *args]
    result = subprocess.run(
        [sys.executable, "-m", "tts_server", "--device", "cpu", "--port", str(free_port()), *argv],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == code, result.stderr
    assert message in result.stderr
