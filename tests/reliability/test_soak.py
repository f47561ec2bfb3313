"""A bounded soak (~40 s) of steady mixed load on the shared server, with memory sampled throughout.

Six closed-loop clients (4 inference slots, so some always queue) send short requests in every
response format, streamed and whole, with inline prompt audio on some and a disconnect mid-stream
on others. The resident memory of the server process and of its engine process is sampled every
half second. After a warm-up, the mean of the last third of the samples must stay within 10% plus
a small absolute slack (32 MiB; allocator and page-cache noise) of the mean of the first third. Every
request must succeed, and afterwards the server is idle with every KV block free.
"""

from __future__ import annotations

import asyncio
import base64
import statistics
import time

import httpx

from tests.server_process import Server, idle, rss_kb
from tests.tts_server.serving import sine_wav

SOAK_S = 40.0
WARMUP_S = 8.0
WORKERS = 6
SLACK_KB = 32 * 1024
FORMATS = ("pcm", "wav", "mp3", "flac", "opus", "aac")
PROMPT = base64.b64encode(sine_wav(0.5)).decode()


async def worker(client: httpx.AsyncClient, n: int, end: float, outcomes: list[str]) -> None:
    i = 0
    while time.monotonic() < end:
        i += 1
        body: dict[str, object] = {
            "target_text": f"Soak {n} request {i}.",
            "max_generate_length": 3,
            "response_format": FORMATS[(n + i) % len(FORMATS)],
            "stream": i % 3 != 0,
        }
        if i % 4 == 1:
            body.update(prompt_audio=PROMPT, prompt_text="A prompt.")
        if i % 5 == 2:  # drop mid-stream
            body.update(max_generate_length=20, stream=True)
            async with client.stream("POST", "/generate", json=body) as response:
                async for chunk in response.aiter_raw():
                    if chunk:
                        break
                outcomes.append(f"{response.status_code} dropped")
            continue
        response = await client.post("/generate", json=body)
        outcomes.append(f"{response.status_code}" if response.content else "empty")


async def sampler(pids: list[int], end: float, samples: list[tuple[float, list[int]]]) -> None:
    t0 = time.monotonic()
    while time.monotonic() < end:
        samples.append((time.monotonic() - t0, [rss_kb(pid) for pid in pids]))
        await asyncio.sleep(0.5)


def test_soak_memory_is_steady(server: Server):
    pids = [server.process.pid, server.engine_pid()]

    async def go():
        outcomes: list[str] = []
        samples: list[tuple[float, list[int]]] = []
        end = time.monotonic() + SOAK_S
        async with server.async_client(timeout=60.0) as client:
            await asyncio.gather(
                sampler(pids, end, samples), *(worker(client, n, end, outcomes) for n in range(WORKERS))
            )
        return outcomes, samples

    outcomes, samples = asyncio.run(go())
    counts = {o: outcomes.count(o) for o in set(outcomes)}
    assert set(counts) <= {"200", "200 dropped"}, counts
    assert len(outcomes) >= 50, counts
    steady = [rss for t, rss in samples if t >= WARMUP_S]
    third = len(steady) // 3
    report = []
    for k, name in enumerate(("server", "engine")):
        first = statistics.mean(s[k] for s in steady[:third])
        last = statistics.mean(s[k] for s in steady[-third:])
        report.append(f"{name} RSS {first / 1024:.0f} -> {last / 1024:.0f} MiB")
        assert last <= first * 1.10 + SLACK_KB, (name, first, last, counts)
    status = server.wait_settled()
    assert idle(status), status
    print(f"soak: {len(outcomes)} requests {counts}; " + "; ".join(report))
