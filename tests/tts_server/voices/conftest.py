"""The voices tests' engine: a tiny VoxCPM2 engine process with two LoRA slots, one per test module."""

from __future__ import annotations

import pytest

from voxcpm_engine.config.engine_config import EngineConfig
from voxcpm_engine.proc.client import AsyncEngine

CONFIG = EngineConfig(max_num_seqs=4, max_num_batched_tokens=64, max_model_len=256, max_loras=2)


@pytest.fixture(scope="module")
def runner(loop_runner):
    """The suite's one event loop (the engine below belongs to it)."""
    return loop_runner


@pytest.fixture(scope="module")
def engine(runner, tiny_v2):
    eng = AsyncEngine(tiny_v2, CONFIG, num_threads=1)
    runner.run(eng.start())
    yield eng
    runner.run(eng.stop())
