"""Server test helpers: settings for the shared tiny engine, a served app, waiting for idle, decoding audio."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import av
import httpx
import numpy as np

from tests.tts_server.serving import AppServer, LoopRunner
from tts_server.app import create_app
from tts_server.config import ServerConfig
from voxcpm_engine.proc.client import AsyncEngine

ENGINE_SEQS = 4
ENGINE_MODEL_LEN = 256


def server_config(model: Any, **overrides: Any) -> ServerConfig:
    """Settings matching the shared engine, with test-sized limits."""
    base: dict[str, Any] = {
        "model": str(model),
        "device": "cpu",
        "max_num_seqs": ENGINE_SEQS,
        "max_num_batched_tokens": 64,
        "max_model_len": ENGINE_MODEL_LEN,
        "voices_dir": None,
        "host": "127.0.0.1",
        "queue_timeout": 30.0,
        "shutdown_grace": 2.0,
        "default_max_generate_length": 3,
        "engine_threads": 1,
    }
    return ServerConfig(**{**base, **overrides})


@dataclass
class Served:
    """An app served on loopback: its URL, the app, and the loop to run client code on."""

    url: str
    app: Any
    runner: LoopRunner
    server: AppServer

    def run(self, coro):
        """Run a coroutine on the serving loop."""
        return self.runner.run(coro)

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        """An HTTP client for this server."""
        return httpx.AsyncClient(base_url=self.url, timeout=30.0, **kwargs)

    @property
    def services(self):
        """The app's services (after start)."""
        return self.app.state.services

    def settled(self, timeout_s: float = 5.0) -> dict[str, Any]:
        """Wait until no request is held, queued or in the engine; returns the engine's stats then."""
        return self.run(settled(self, timeout_s))


def get_all(served: Served, *paths: str) -> list[Any]:
    """GET each path in turn through one client; returns the responses."""

    async def go() -> list[Any]:
        async with served.client() as client:
            return [await client.get(p) for p in paths]

    return served.run(go())


async def settled(served: Served, timeout_s: float = 5.0) -> dict[str, Any]:
    """See :meth:`Served.settled` (the coroutine, for use inside other coroutines)."""
    svc = served.services
    end = time.monotonic() + timeout_s
    while True:
        stats = await svc.engine.stats()
        idle = (stats["running"], stats["waiting"], stats["unfinished"]) == (0, 0, 0)
        if (
            idle
            and svc.queue.active == 0
            and svc.queue.depth == 0
            and svc.admission.active == 0
            and not len(svc.registry)
        ):
            return stats
        if time.monotonic() > end:
            raise AssertionError(
                f"not settled: engine {stats['running']}/{stats['waiting']}/{stats['unfinished']}, "
                f"slots {svc.queue.active}, queued {svc.queue.depth}, admitted {svc.admission.active}, "
                f"registered {len(svc.registry)}"
            )
        await asyncio.sleep(0.02)


@contextmanager
def serve(loop_runner: LoopRunner, engine: AsyncEngine, config: ServerConfig) -> Iterator[Served]:
    """Serve an app on ``engine`` under hypercorn for the ``with`` block."""
    app = create_app(config, engine=engine)
    server = AppServer(app)
    url = loop_runner.run(server.start())
    try:
        loop_runner.run(_until_ready(url))
        yield Served(url, app, loop_runner, server)
    finally:
        loop_runner.run(server.stop())


async def _until_ready(url: str, timeout_s: float = 60.0) -> None:
    end = time.monotonic() + timeout_s
    # The first request waits in the listen backlog until the lifespan has started the app.
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s) as client:
        while time.monotonic() < end:
            if (await client.get("/ready")).status_code == 200:
                return
            await asyncio.sleep(0.02)
    raise AssertionError(f"{url} not ready within {timeout_s} s")


def decode_audio(data: bytes, fmt: str, pcm_rate: int = 0) -> tuple[np.ndarray, int]:
    """Decode a response body with an independent decoder (numpy for pcm, ffmpeg via PyAV otherwise).

    Returns:
        Mono float64 samples in [-1, 1] and their sample rate.
    """
    if fmt == "pcm":
        return np.frombuffer(data, dtype="<i2").astype(np.float64) / 32768, pcm_rate
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        frames = [frame.to_ndarray() for frame in container.decode(stream)]
        rate = stream.codec_context.sample_rate
    samples = np.concatenate(frames, axis=1)[0] if frames else np.zeros(0)
    if samples.dtype == np.int16:
        return samples.astype(np.float64) / 32768, rate
    return samples.astype(np.float64), rate
