"""The VAE kernels of ``voxcpm_engine.kernels.fused_vae`` and the VAE's fused paths against the op-by-op code.

Runs in Triton's interpreter without CUDA (set up by ``tests.voxcpm_engine.kernels.interpret``), compiled
with CUDA.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.voxcpm_engine.kernels.interpret import DEVICE, close, randn, skip_if_compiled
from tests.voxcpm_engine.tiny_configs import TINY, randomize
from voxcpm_engine.kernels import fused_vae
from voxcpm_engine.model.audio_vae import AudioVAE
from voxcpm_engine.model.vae_layers import snake as vae_snake

skip_if_compiled(fused_vae._snake_kernel)


@pytest.mark.parametrize("shape", [(2, 5, 37), (1, 3, 2048), (4, 64, 28)])
def test_snake_matches_the_op_by_op_activation(shape):
    x = randn(*shape) * 4
    alpha = (torch.rand(1, shape[1], 1, generator=torch.Generator().manual_seed(1)) * 1.5 + 0.25).to(DEVICE)
    close(fused_vae.snake(x, alpha), vae_snake(x, alpha), torch.float32)
    close(fused_vae.snake(x.transpose(1, 2).contiguous().transpose(1, 2), alpha), vae_snake(x, alpha), torch.float32)


def _f64(conv, *args, **kwargs):
    """A reference conv in float64, back in fp32 (cuDNN would run an fp32 one in TF32 by default)."""
    return conv(*[a.double() if isinstance(a, torch.Tensor) else a for a in args], **kwargs).float()


def _vae_pair(name):
    """The same random tiny VAE twice: op by op, and on the fused paths."""
    plain = randomize(AudioVAE(TINY[name])).eval().to(DEVICE)
    fast = AudioVAE(TINY[name]).eval().to(DEVICE)
    fast.load_state_dict(plain.state_dict())
    fast.use_fused_kernels()
    return plain, fast


@pytest.mark.parametrize("name", ["v1-1.5", "v2"])
@torch.no_grad()
def test_vae_with_fused_snake_decodes_like_the_op_by_op_vae(name):
    plain, fast = _vae_pair(name)
    z = randn(2, TINY[name].latent_dim, 3)
    torch.testing.assert_close(fast.decode(z), plain.decode(z), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("dilation", "length"), [(1, 5), (3, 40), (9, 28), (9, 70)])
def test_depthwise_causal_conv_equals_conv1d_over_the_concatenation(dilation, length):
    channels, ctx = 6, 6 * dilation
    flat = randn(3, channels * ctx + 5)  # context rows as strided views of a wider slot tensor
    context = flat[:, : channels * ctx].view(3, channels, ctx)
    x = randn(3, channels, length, seed=1)
    weight, bias = randn(channels, 1, 7, seed=2), randn(channels, seed=3)
    want = _f64(F.conv1d, torch.cat([context, x], dim=-1), weight, bias, groups=channels, dilation=dilation)
    close(fused_vae.depthwise_causal_conv(context, x, weight, bias, dilation), want, torch.float32)


@pytest.mark.parametrize("name", ["v1-0.5b", "v1-1.5", "v2"])
@torch.no_grad()
def test_streamed_vae_decode_with_fused_paths_equals_the_op_by_op_stream(name):
    plain, fast = _vae_pair(name)
    z = randn(2, TINY[name].latent_dim, 5)
    states = [vae.new_stream_state(2, DEVICE) for vae in (plain, fast)]
    for start, end in ((0, 1), (1, 5)):  # chunks shorter and longer than the contexts
        want = plain.decode_stream(z[..., start:end], states[0])
        got = fast.decode_stream(z[..., start:end], states[1])
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for a, b in zip(states[0].buffers, states[1].buffers, strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("dilation", "length"), [(1, 5), (9, 70)])
def test_depthwise_conv_with_fused_snake_equals_conv_then_snake(dilation, length):
    channels, ctx = 4, 6 * dilation
    context, x = randn(2, channels, ctx), randn(2, channels, length, seed=1)
    weight, bias = randn(channels, 1, 7, seed=2), randn(channels, seed=3)
    alpha = (torch.rand(1, channels, 1, generator=torch.Generator().manual_seed(4)) + 0.25).to(DEVICE)
    conv = _f64(F.conv1d, torch.cat([context, x], dim=-1), weight, bias, groups=channels, dilation=dilation)
    got = fused_vae.depthwise_causal_conv(context, x, weight, bias, dilation, snake_alpha=alpha)
    close(got, vae_snake(conv, alpha), torch.float32)


def _alpha(channels, seed=4):
    return (torch.rand(1, channels, 1, generator=torch.Generator().manual_seed(seed)) + 0.25).to(DEVICE)


@pytest.mark.parametrize(("stride", "frames", "channels"), [(2, 5, 3), (3, 70, 40), (7, 1, 33)])
def test_overlap_add_equals_the_streamed_transposed_conv(stride, frames, channels):
    in_ch = 5
    x = randn(2, in_ch, frames + 1)  # the context frame first
    weight, bias = randn(in_ch, channels, 2 * stride, seed=1), randn(channels, seed=2)
    y = (x.transpose(1, 2) @ weight.permute(0, 2, 1).reshape(in_ch, -1)).view(2, frames + 1, 2, stride, channels)
    want = _f64(F.conv_transpose1d, x, weight, bias, stride)[..., stride:-stride]
    got, none = fused_vae.overlap_add(y, bias, stride)
    close(got, want, torch.float32)
    assert none is None
    alpha = _alpha(channels)
    got, snaked = fused_vae.overlap_add(y, bias, stride, snake_alpha=alpha)
    close(got, want, torch.float32)
    close(snaked, vae_snake(want, alpha), torch.float32)


def test_snake_rows_lays_out_context_and_activated_frames_as_gemm_rows():
    x, context, alpha = randn(2, 40, 70), randn(2, 40, 1, seed=1), _alpha(40)
    want = torch.cat([context, vae_snake(x, alpha)], dim=-1).transpose(1, 2)
    close(fused_vae.snake_rows(x, alpha, context), want, torch.float32)


def test_bias_residual_add_writes_x_plus_y_plus_bias_into_y():
    y, x, bias = randn(2, 3, 50), randn(2, 3, 50, seed=1), randn(3, seed=2)
    want = x + (y + bias.view(1, -1, 1))
    got, none = fused_vae.bias_residual_add(y.clone(), bias, x)
    close(got, want, torch.float32)
    assert none is None
    alpha = _alpha(3)
    target = y.clone()
    got, snaked = fused_vae.bias_residual_add(target, bias, x, snake_alpha=alpha)
    assert got.data_ptr() == target.data_ptr()
    close(got, want, torch.float32)
    close(snaked, vae_snake(want, alpha), torch.float32)


@pytest.mark.parametrize(("channels", "length"), [(5, 3), (64, 200), (100, 130)])
def test_mono_causal_conv_equals_conv1d_over_the_concatenation(channels, length):
    context, x = randn(2, channels, 6), randn(2, channels, length, seed=1)
    weight, bias = randn(1, channels, 7, seed=2) / (7 * channels) ** 0.5, randn(1, seed=3)  # unit-scale outputs
    want = _f64(F.conv1d, torch.cat([context, x], dim=-1), weight, bias)
    close(fused_vae.mono_causal_conv(context, x, weight, bias, 1), want, torch.float32)
