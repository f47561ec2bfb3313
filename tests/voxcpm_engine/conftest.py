"""Engine tests: the fp32 tiny checkpoints the batched-engine tests share (``ckpt_v1``, ``ckpt_v2``).

Without CUDA, Triton kernels run in Triton's interpreter (set up by ``tests/conftest.py``).
"""

import pytest

from voxcpm_engine.io.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def ckpt_v1(tiny_v1):
    """The tiny V1 checkpoint in fp32 (engine equality tests compare in fp32, see ``test_engine``)."""
    return load_checkpoint(tiny_v1, dtype="float32")


@pytest.fixture(scope="module")
def ckpt_v2(tiny_v2):
    """The tiny V2 checkpoint in fp32."""
    return load_checkpoint(tiny_v2, dtype="float32")
