"""The one-kernel residual unit of ``voxcpm_engine.kernels.fused_vae_unit`` against its parts.

Runs in Triton's interpreter without CUDA, compiled with CUDA (``tests.voxcpm_engine.kernels.interpret``).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.voxcpm_engine.kernels.interpret import DEVICE, randn, skip_if_compiled
from tests.voxcpm_engine.kernels.unit_streams import streamed_with_units
from voxcpm_engine.kernels import fused_vae_unit
from voxcpm_engine.model.vae_layers import snake as vae_snake

skip_if_compiled(fused_vae_unit._residual_unit_kernel)

BF16 = torch.bfloat16


def _alpha(channels: int, seed: int = 7) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(1, channels, 1, generator=gen) * 1.5 + 0.25).to(DEVICE)


def _unit(channels, length, dilation, batch=3, dtype=torch.float32):
    """Inputs of one unit (context as strided views of a wider slot tensor, as the engine's) and the
    float64 reference: the residual plus the 1x1 conv of the Snake of the depthwise conv."""
    ctx = 6 * dilation
    flat = randn(batch, channels * ctx + 5, dtype=dtype)
    context = flat[:, : channels * ctx].view(batch, channels, ctx)
    x = randn(batch, channels, length, seed=1, dtype=dtype)
    a1, a2, a3 = _alpha(channels, 1), _alpha(channels, 2), _alpha(channels, 3)
    x_snaked = vae_snake(x.double(), a1.double()).to(dtype)
    dw_w, dw_b = randn(channels, 1, 7, seed=2, dtype=dtype) / 7**0.5, randn(channels, seed=3)
    pw_w, pw_b = randn(channels, channels, seed=4, dtype=dtype) / channels**0.5, randn(channels, seed=5)
    dw = F.conv1d(
        torch.cat([context, x_snaked], dim=-1).double(),
        dw_w.double(),
        dw_b.double(),
        groups=channels,
        dilation=dilation,
    )
    want = x.double() + torch.matmul(pw_w.double(), vae_snake(dw, a2.double())) + pw_b.double()[:, None]
    args = (context, x_snaked, x, dw_w, dw_b, a2, pw_w, pw_b, dilation)
    return args, a3, want


@pytest.mark.parametrize(("channels", "length", "dilation"), [(16, 5, 1), (32, 40, 3), (64, 150, 9), (128, 33, 9)])
def test_residual_unit_equals_the_units_math(channels, length, dilation):
    args, next_alpha, want = _unit(channels, length, dilation)
    got, none = fused_vae_unit.residual_unit(*args, tf32=False)
    assert none is None and got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    got, snaked = fused_vae_unit.residual_unit(*args, next_alpha, tf32=False)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(snaked.double(), vae_snake(want, next_alpha.double()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config", [(16, 16, 4), (32, 16, 2), (64, 32, 8)])
def test_every_tiling_gives_the_units_math(config):
    """Tiles narrower than the context (54 samples at dilation 9) read it in several tiles; wider
    channel blocks take more than one pass of the channel loop."""
    args, next_alpha, want = _unit(64, 150, 9)
    got, snaked = fused_vae_unit.residual_unit(*args, next_alpha, tf32=False, config=config)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(snaked.double(), vae_snake(want, next_alpha.double()), rtol=1e-5, atol=1e-5)


def test_launch_config_covers_every_width_it_takes():
    for channels in (16, 32, 64, 128, 256):
        block_t, block_c, num_warps = fused_vae_unit.launch_config(channels)
        assert channels * block_t <= 32 * 32 * num_warps  # 32 fp32 accumulator values per thread at most
        assert block_c <= channels


def test_residual_unit_in_bf16_sums_in_fp32():
    """bf16 activations and weights: within the rounding of h and of the stores (as the unfused path)."""
    args, next_alpha, want = _unit(64, 70, 3, dtype=BF16)
    got, snaked = fused_vae_unit.residual_unit(*args, next_alpha)
    assert got.dtype == snaked.dtype == BF16
    # h rounded to bf16 before the product (2^-8 each, summed over 64 channels), then one store: the
    # interpreter truncates instead of rounding (2^-7).
    torch.testing.assert_close(got.double(), want, rtol=2**-6, atol=0.05)
    torch.testing.assert_close(snaked.double(), vae_snake(want, next_alpha.double()), rtol=2**-6, atol=0.05)


def test_units_it_cannot_take_are_refused():
    assert fused_vae_unit.fits(16) and fused_vae_unit.fits(256)
    assert not any(fused_vae_unit.fits(c) for c in (8, 48, 512, 1024))
    args, _, _ = _unit(16, 5, 1)
    wide = (args[0].repeat(1, 3, 1), args[1].repeat(1, 3, 1), args[2].repeat(1, 3, 1), *args[3:])
    with pytest.raises(ValueError, match="48 channels"):
        fused_vae_unit.residual_unit(*wide)


def test_streamed_decode_with_one_kernel_units_equals_the_fused_paths(monkeypatch):
    """A whole tiny VAE streamed in chunks: units of 16-256 channels as one kernel, the rest as before."""
    # v1-1.5: units of 32 and 16 channels (one kernel), 8, 4 and 2 (not)
    ref, got, calls = streamed_with_units(
        "v1-1.5", "one-kernel", monkeypatch, fused_vae_unit, "residual_unit", lambda a: a[2].shape
    )
    assert calls and {c[1] for c in calls} <= {16, 32, 64, 128, 256}
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
