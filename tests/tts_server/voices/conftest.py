"""The voices tests' engine: a tiny VoxCPM2 engine process with two LoRA slots, one per test module."""

from __future__ import annotations

import pytest

from tests.voxcpm_engine.proc.engine_helpers import started_engine
from voxcpm_engine.config.engine_config import EngineConfig

CONFIG = EngineConfig(max_num_seqs=4, max_num_batched_tokens=64, max_model_len=256, max_loras=2)


@pytest.fixture(scope="module")
def runner(loop_runner):
    """The suite's one event loop (the engine below belongs to it)."""
    return loop_runner


@pytest.fixture(scope="module")
def engine(runner, tiny_v2):
    with started_engine(runner, tiny_v2, CONFIG) as eng:
        yield eng
