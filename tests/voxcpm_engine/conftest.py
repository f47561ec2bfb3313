"""Engine tests: without CUDA, Triton kernels run in Triton's interpreter.

Triton reads ``TRITON_INTERPRET`` when a kernel is defined, so it is set here, before any test
module of the engine imports ``voxcpm_engine.kernels.*``. Only tests that ask for a Triton backend or the
fused path (``EngineConfig.fused_kernels=True``) run Triton kernels on the CPU at all.

Also the fp32 tiny checkpoints the batched-engine tests share (``ckpt_v1``, ``ckpt_v2``).
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from voxcpm_engine.io.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def ckpt_v1(tiny_v1):
    """The tiny V1 checkpoint in fp32 (engine equality tests compare in fp32, see ``test_engine``)."""
    return load_checkpoint(tiny_v1, dtype="float32")


@pytest.fixture(scope="module")
def ckpt_v2(tiny_v2):
    """The tiny V2 checkpoint in fp32."""
    return load_checkpoint(tiny_v2, dtype="float32")
