"""What the engine-process tests share: limits, request settings, and small async and audio helpers."""

import asyncio
import io
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from voxcpm_engine.config.engine_config import EngineConfig
from voxcpm_engine.proc.client import AsyncEngine
from voxcpm_engine.types import GenerationParams

CONFIG = EngineConfig(max_num_seqs=8, max_num_batched_tokens=64, max_model_len=256, max_loras=2)
SMALL = EngineConfig(max_num_seqs=4, max_num_batched_tokens=64, max_model_len=256)
TEXT = "The client under test."
LONG = 200  # steps: never finishes within a test unless aborted


def params(n, seed):
    return GenerationParams(min_steps=n, max_steps=n, seed=seed)


async def collect(stream):
    return [chunk async for chunk in stream]


async def settled(engine, timeout_s=1.0):
    """Stats once nothing is running, waiting or unfinished (or the last stats at the timeout)."""
    end = time.monotonic() + timeout_s
    while True:
        stats = await engine.stats()
        if (stats["running"], stats["waiting"], stats["unfinished"]) == (0, 0, 0) or time.monotonic() > end:
            return stats
        await asyncio.sleep(0.02)


async def until(condition):
    while not condition():
        await asyncio.sleep(0.01)


def tone(sr, seconds, freq=220.0):
    t = np.arange(int(sr * seconds)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def flac(samples, sr):
    buf = io.BytesIO()
    sf.write(buf, samples, sr, format="FLAC", subtype="PCM_24")
    return buf.getvalue()


@contextmanager
def started_engine(runner: Any, checkpoint: Path, config: EngineConfig) -> Iterator[AsyncEngine]:
    """An engine process (one torch thread) started on ``runner``'s loop, stopped after the block."""
    engine = AsyncEngine(checkpoint, config, num_threads=1)
    runner.run(engine.start())
    try:
        yield engine
    finally:
        runner.run(engine.stop())
