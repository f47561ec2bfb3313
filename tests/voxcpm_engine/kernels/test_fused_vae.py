"""The VAE kernels of ``voxcpm_engine.kernels.fused_vae`` and ``fused_vae_upsample`` and the VAE's fused
paths against the op-by-op code.

Runs in Triton's interpreter without CUDA (set up by ``tests.voxcpm_engine.kernels.interpret``), compiled
with CUDA.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.voxcpm_engine.kernels.interpret import DEVICE, close, randn, skip_if_compiled
from tests.voxcpm_engine.tiny_configs import TINY, randomize
from tests.voxcpm_engine.vae_bf16 import INTERPRETER_SNR_DB, TINY_SNR_DB, snr_db
from voxcpm_engine.kernels import fused_vae, fused_vae_upsample
from voxcpm_engine.model.audio_vae import AudioVAE
from voxcpm_engine.model.vae_layers import snake as vae_snake

skip_if_compiled(fused_vae._snake_kernel)


@pytest.mark.parametrize("shape", [(2, 5, 37), (1, 3, 2048), (4, 64, 28)])
def test_snake_matches_the_op_by_op_activation(shape):
    x = randn(*shape) * 4
    alpha = (torch.rand(1, shape[1], 1, generator=torch.Generator().manual_seed(1)) * 1.5 + 0.25).to(DEVICE)
    close(fused_vae.snake(x, alpha), vae_snake(x, alpha), torch.float32)
    close(fused_vae.snake(x.transpose(1, 2).contiguous().transpose(1, 2), alpha), vae_snake(x, alpha), torch.float32)


@pytest.mark.skipif(DEVICE != "cuda", reason="SIN_MODE 2 is the GPU's sin.approx: compiled kernels only")
def test_reduced_sin_approx_snake_stays_within_sin_approxs_bound(monkeypatch):
    """``fused_vae.SIN_MODE = 2`` against the float64 Snake, beside libdevice's (mode 1), over the
    arguments the decoder's activations reach: within fp32's rounding of ``x`` plus 2 * 2^-20.9 / alpha
    (sin.approx's bound on [-pi, pi], times the Snake's 2 sin / alpha), rounded up."""
    x = torch.linspace(-200.0, 200.0, 1 << 20, device=DEVICE).view(1, 1, -1).repeat(1, 4, 1)
    alpha = torch.tensor([0.25, 0.7, 1.7, 3.0], device=DEVICE).view(1, 4, 1)
    want = vae_snake(x.double(), alpha.double())
    errors = {}
    for mode in (1, 2):
        monkeypatch.setattr(fused_vae, "SIN_MODE", mode)
        errors[mode] = (fused_vae.snake(x, alpha).double() - want).abs().amax(dim=(0, 2))
    assert torch.all(errors[2] <= errors[1] + 1.2e-6 / alpha.view(-1).double()), errors


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
    got, none = fused_vae_upsample.overlap_add(y, bias, stride)
    close(got, want, torch.float32)
    assert none is None
    alpha = _alpha(channels)
    got, snaked = fused_vae_upsample.overlap_add(y, bias, stride, snake_alpha=alpha)
    close(got, want, torch.float32)
    close(snaked, vae_snake(want, alpha), torch.float32)


def test_snake_rows_lays_out_context_and_activated_frames_as_gemm_rows():
    x, context, alpha = randn(2, 40, 70), randn(2, 40, 1, seed=1), _alpha(40)
    want = torch.cat([context, vae_snake(x, alpha)], dim=-1).transpose(1, 2)
    close(fused_vae_upsample.snake_rows(x, alpha, context), want, torch.float32)


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


# --- bf16 activations (EngineConfig.vae_dtype): every kernel sums in fp32 and rounds once at its store ---

BF16 = torch.bfloat16


def _bf16(*shape, seed=0, scale=1.0):
    """bf16 inputs, as a bf16 decode hands them over."""
    return (randn(*shape, seed=seed) * scale).to(BF16)


def close_bf16(got, want):
    """``got`` is one bf16 rounding of ``want`` (the exact result of the same bf16 inputs, in float64).

    Round to nearest is within half an ulp (2^-8 relative) on CUDA; the interpreter truncates (one
    ulp, 2^-7). A kernel that summed in bf16 would round at every tap or add on top of that."""
    torch.testing.assert_close(got.float(), want.float(), rtol=2**-7, atol=1e-5)


def test_bf16_snake_and_snake_rows():
    x, context, alpha = _bf16(2, 40, 70, scale=4), _bf16(2, 40, 1, seed=1), _alpha(40)
    want = vae_snake(x.double(), alpha.double())
    got = fused_vae.snake(x, alpha)
    assert got.dtype == BF16
    close_bf16(got, want)
    rows = fused_vae_upsample.snake_rows(x, alpha, context)
    assert rows.dtype == BF16
    close_bf16(rows, torch.cat([context.double(), want], dim=-1).transpose(1, 2))


@pytest.mark.parametrize(("dilation", "length"), [(1, 5), (9, 70)])
def test_bf16_depthwise_causal_conv_with_and_without_snake(dilation, length):
    channels, ctx = 6, 6 * dilation
    context, x = _bf16(3, channels, ctx), _bf16(3, channels, length, seed=1)
    weight, bias, alpha = _bf16(channels, 1, 7, seed=2), randn(channels, seed=3), _alpha(channels)  # bias, alpha fp32
    conv = F.conv1d(
        torch.cat([context, x], dim=-1).double(), weight.double(), bias.double(), groups=channels, dilation=dilation
    )
    got = fused_vae.depthwise_causal_conv(context, x, weight, bias, dilation)
    assert got.dtype == BF16
    close_bf16(got, conv)
    close_bf16(
        fused_vae.depthwise_causal_conv(context, x, weight, bias, dilation, alpha), vae_snake(conv, alpha.double())
    )


def test_bf16_mono_causal_conv_sums_every_channel_in_fp32_and_can_write_fp32():
    channels, length = 100, 130
    context, x = _bf16(2, channels, 6), _bf16(2, channels, length, seed=1)
    weight, bias = (randn(1, channels, 7, seed=2) / (7 * channels) ** 0.5).to(BF16), randn(1, seed=3)
    want = F.conv1d(torch.cat([context, x], dim=-1).double(), weight.double(), bias.double())
    got = fused_vae.mono_causal_conv(context, x, weight, bias, 1)
    assert got.dtype == BF16
    close_bf16(got, want)
    wav = fused_vae.mono_causal_conv(context, x, weight, bias, 1, out_dtype=torch.float32)
    assert wav.dtype == torch.float32  # the waveform: the fp32 sum itself, no bf16 rounding
    torch.testing.assert_close(wav.double(), want, rtol=1e-5, atol=1e-5)


def test_bf16_overlap_add_with_and_without_snake():
    stride, frames, channels = 3, 70, 40
    y, bias, alpha = _bf16(2, frames + 1, 2, stride, channels), randn(channels, seed=2), _alpha(channels)
    # Output sample t * stride + j: tap j of frame t + 1 plus tap stride + j of frame t, plus the bias.
    yd = y.double()
    want = (yd[:, 1:, 0] + yd[:, :-1, 1]).permute(0, 3, 1, 2).reshape(2, channels, -1) + bias.double()[:, None]
    got, snaked = fused_vae_upsample.overlap_add(y, bias, stride, snake_alpha=alpha)
    assert got.dtype == snaked.dtype == BF16
    close_bf16(got, want)
    close_bf16(snaked, vae_snake(want, alpha.double()))


def test_bf16_bias_residual_add_with_and_without_snake():
    y, x, bias, alpha = _bf16(2, 3, 50), _bf16(2, 3, 50, seed=1, scale=8), randn(3, seed=2), _alpha(3)
    want = x.double() + (y.double() + bias.double().view(1, -1, 1))
    got, none = fused_vae.bias_residual_add(y.clone(), bias, x)
    assert got.dtype == BF16 and none is None
    close_bf16(got, want)
    got, snaked = fused_vae.bias_residual_add(y.clone(), bias, x, snake_alpha=alpha)
    close_bf16(got, want)
    close_bf16(snaked, vae_snake(want, alpha.double()))


@pytest.mark.parametrize("name", ["v1-0.5b", "v2"])
@torch.no_grad()
def test_bf16_streamed_decode_on_the_fused_paths_is_close_to_the_op_by_op_ones(name):
    plain, fast = _vae_pair(name)
    z = randn(2, TINY[name].latent_dim, 5).to(BF16).float()
    ref_state = plain.new_stream_state(2, DEVICE)
    ref = torch.cat([plain.decode_stream(z[..., a:b], ref_state) for a, b in ((0, 1), (1, 5))], dim=-1)
    for vae in (plain, fast):
        vae.set_decode_dtype(BF16)
    states = [vae.new_stream_state(2, DEVICE) for vae in (plain, fast)]
    outs = [[], []]
    for start, end in ((0, 1), (1, 5)):
        for vae, state, out in zip((plain, fast), states, outs, strict=True):
            out.append(vae.decode_stream(z[..., start:end], state))
    eager, fused = (torch.cat(out, dim=-1) for out in outs)
    assert fused.dtype == torch.float32 and all(b.dtype == BF16 for b in states[1].buffers)
    bound = TINY_SNR_DB if DEVICE == "cuda" else INTERPRETER_SNR_DB  # the interpreter truncates
    assert snr_db(eager, ref) >= TINY_SNR_DB and snr_db(fused, ref) >= bound and snr_db(fused, eager) >= bound
