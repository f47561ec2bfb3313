"""Server test fixtures: one real engine process on the tiny VoxCPM2 model for the whole session.

Starting an engine costs seconds on the 2-core box, so the server tests share one, started on
one session-wide event loop; each test module builds its own apps (with the settings it needs)
on that engine and serves them with a real hypercorn (see ``harness.serve``). Tests that kill an
engine start their own.
"""

from __future__ import annotations

import pytest

from tests.tts_server.harness import ENGINE_MODEL_LEN, ENGINE_SEQS
from tests.tts_server.serving import LoopRunner
from voxcpm_engine.config.engine_config import EngineConfig
from voxcpm_engine.proc.client import AsyncEngine


@pytest.fixture(scope="session")
def loop_runner():
    runner = LoopRunner()
    yield runner
    runner.close()


@pytest.fixture(scope="session")
def shared_engine(loop_runner, tiny_v2):
    engine = AsyncEngine(
        tiny_v2,
        EngineConfig(max_num_seqs=ENGINE_SEQS, max_num_batched_tokens=64, max_model_len=ENGINE_MODEL_LEN),
        num_threads=1,
    )
    loop_runner.run(engine.start())
    yield engine
    loop_runner.run(engine.stop())
