"""Shared fixtures: tiny synthetic checkpoints, written once per test session by the real generator.

Without CUDA, Triton kernels run in Triton's interpreter. Triton reads ``TRITON_INTERPRET`` when a
kernel is defined, so it is set here, before any test module imports ``voxcpm_engine.kernels.*``
(server tests import the engine too, and servers the tests start inherit it). Only tests that ask
for a Triton backend or the fused path (``EngineConfig.fused_kernels=True``) run Triton kernels on
the CPU at all.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

SHARED_MODELS = Path(__file__).resolve().parents[1].parent / "shared" / "models"


@pytest.fixture(autouse=True, scope="session")
def _single_cpu_thread():
    """Run torch on one CPU thread in tests.

    The tiny models gain nothing from intra-op threads, and when anything else is running on the
    2-core box OpenMP spin-waiting makes a tiny bf16 linear take 8 ms instead of 0.02 ms.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_v1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``tiny-v1`` checkpoint directory (VoxCPM1.5 layout, random weights)."""
    from voxcpm_engine.tools.synthetic import write_checkpoint

    return write_checkpoint("tiny-v1", tmp_path_factory.mktemp("ckpt") / "tiny-v1", seed=0)


@pytest.fixture(scope="session")
def tiny_v2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``tiny-v2`` checkpoint directory (VoxCPM2 layout, random weights)."""
    from voxcpm_engine.tools.synthetic import write_checkpoint

    return write_checkpoint("tiny-v2", tmp_path_factory.mktemp("ckpt") / "tiny-v2", seed=0)


@pytest.fixture(params=["tiny_v1", "tiny_v2"])
def tiny_ckpt(request: pytest.FixtureRequest) -> Path:
    """Each tiny checkpoint in turn."""
    return request.getfixturevalue(request.param)
