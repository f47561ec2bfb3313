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


@pytest.fixture(scope="module")
def lora_v2(tiny_v2, tmp_path_factory):
    """A rank-8 adapter of the tiny V2 model on every target (LM, DiT, projections), written by the real tool."""
    from voxcpm_engine.tools.synthetic_lora import write_lora

    return write_lora(tiny_v2, tmp_path_factory.mktemp("lora") / "v2", rank=8, seed=1, enable_proj=True)
