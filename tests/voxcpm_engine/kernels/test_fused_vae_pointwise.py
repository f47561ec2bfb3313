"""The 1x1 conv GEMM with its epilogue (``voxcpm_engine.kernels.fused_vae_pointwise``) against its math.

Runs in Triton's interpreter without CUDA, compiled with CUDA (``tests.voxcpm_engine.kernels.interpret``).
"""

from __future__ import annotations

import pytest
import torch

from tests.voxcpm_engine.kernels.interpret import DEVICE, randn, skip_if_compiled
from tests.voxcpm_engine.kernels.unit_streams import streamed_with_units
from tests.voxcpm_engine.tiny_configs import TINY
from voxcpm_engine.kernels import fused_vae_pointwise
from voxcpm_engine.model.audio_vae import AudioVAE
from voxcpm_engine.model.vae_layers import snake as vae_snake

skip_if_compiled(fused_vae_pointwise._pointwise_residual_kernel)

BF16 = torch.bfloat16


def _inputs(channels, length, batch=3, dtype=torch.float32):
    """Weight, h, bias, residual, next alpha, and the float64 result ``x + (w @ h + b)``."""
    w = randn(channels, channels, seed=4, dtype=dtype) / channels**0.5
    h, x = randn(batch, channels, length, seed=1, dtype=dtype), randn(batch, channels, length, seed=2, dtype=dtype)
    bias = randn(channels, seed=5)
    gen = torch.Generator().manual_seed(3)
    alpha = (torch.rand(1, channels, 1, generator=gen) * 1.5 + 0.25).to(DEVICE)
    want = x.double() + (torch.matmul(w.double(), h.double()) + bias.double()[:, None])
    return (w, h, bias, x), alpha, want


@pytest.mark.parametrize(("channels", "length"), [(16, 5), (32, 40), (64, 150), (100, 33), (192, 70)])
def test_pointwise_residual_equals_its_math(channels, length):
    """Widths under, at and over one tile, and widths that are not a power of two (masked tiles)."""
    args, alpha, want = _inputs(channels, length)
    got, none = fused_vae_pointwise.pointwise_residual(*args, tf32=False)
    assert none is None and got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    got, snaked = fused_vae_pointwise.pointwise_residual(*args, alpha, tf32=False)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(snaked.double(), vae_snake(want, alpha.double()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config", [(16, 16, 16, 1, 1), (32, 64, 16, 4, 2), (128, 32, 64, 4, 3)])
def test_every_tiling_gives_the_same_result(config):
    """Tiles of fewer output channels than the unit (several programs per run of frames), more
    than it (masked rows), and input-channel blocks that take several passes of the sum."""
    args, alpha, want = _inputs(64, 150)
    got, snaked = fused_vae_pointwise.pointwise_residual(*args, alpha, tf32=False, config=config)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(snaked.double(), vae_snake(want, alpha.double()), rtol=1e-5, atol=1e-5)


def test_launch_config_keeps_tiles_small_enough_not_to_spill():
    for channels in (16, 32, 64, 128, 256, 512, 1024, 2048):
        block_m, block_n, block_k, num_warps, _ = fused_vae_pointwise.launch_config(channels)
        assert block_m * block_n <= 32 * 32 * num_warps  # 32 fp32 accumulator values per thread at most
        assert block_m <= max(16, channels) and block_k <= max(16, channels)


def test_pointwise_residual_in_bf16_sums_in_fp32():
    """bf16 operands: within the rounding of the inputs and of the stores (as the cuBLAS path)."""
    args, alpha, want = _inputs(64, 70, dtype=BF16)
    got, snaked = fused_vae_pointwise.pointwise_residual(*args, alpha)
    assert got.dtype == snaked.dtype == BF16
    # One rounding at each store (2^-8; the interpreter truncates: 2^-7), sums of exact bf16 products.
    torch.testing.assert_close(got.double(), want, rtol=2**-6, atol=0.05)
    torch.testing.assert_close(snaked.double(), vae_snake(want, alpha.double()), rtol=2**-6, atol=0.05)


def test_mismatched_shapes_are_refused():
    (w, h, bias, x), _, _ = _inputs(16, 5)
    with pytest.raises(ValueError, match=r"weight \(16, 16\), h \(3, 16, 4\)"):
        fused_vae_pointwise.pointwise_residual(w, h[..., :4], bias, x)


@pytest.mark.parametrize("name", ["v1-1.5", "v2"])
def test_streamed_decode_with_gemm_units_equals_the_fused_paths(name, monkeypatch):
    """A whole tiny VAE streamed in chunks: every unit's 1x1 conv as the GEMM with its epilogue."""
    ref, got, calls = streamed_with_units(
        name, "gemm", monkeypatch, fused_vae_pointwise, "pointwise_residual", lambda a: a[1].shape
    )
    decoder_units = sum(3 for m in AudioVAE(TINY[name]).decoder.modules() if type(m).__name__ == "DecoderBlock")
    assert len(calls) == 2 * decoder_units  # every decoder unit, both chunks
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
