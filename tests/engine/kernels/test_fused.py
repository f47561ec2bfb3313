"""The fused Triton kernels of ``engine.kernels.fused`` against the op-by-op torch code they replace.

Runs in Triton's interpreter without CUDA (``TRITON_INTERPRET=1`` is set before the kernels are
imported), compiled with CUDA. fp32: equal up to fp32 rounding order; bf16 only on CUDA (the
interpreter's bf16 casts truncate instead of rounding).
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

import triton

from engine.kernels import fused
from engine.kernels.fused import add_rms_norm, cfg_euler_, rms_norm, rope_, silu_mul
from engine.model.audio_vae import AudioVAE
from engine.model.sampler import guided_velocity
from engine.model.transformer import RMSNorm, apply_rotary
from engine.model.vae_layers import snake as vae_snake
from tests.engine.model.vae_configs import TINY, randomize

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and isinstance(fused._rms_norm_kernel, triton.runtime.JITFunction):
    pytest.skip("Triton kernels were imported without TRITON_INTERPRET=1", allow_module_level=True)
DTYPES = [torch.float32] + ([torch.bfloat16] if DEVICE == "cuda" else [])
TOL = {torch.float32: 2e-6, torch.bfloat16: 2e-2}


def _randn(*shape, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen).to(device=DEVICE, dtype=dtype)


def _close(a, b, dtype):
    torch.testing.assert_close(a.float(), b.float(), atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [64, 96, 1024])
def test_rms_norm_matches_the_module(hidden, dtype):
    norm = RMSNorm(hidden, 1e-5).to(device=DEVICE, dtype=dtype)
    norm.weight.data = _randn(hidden, dtype=dtype, seed=1)
    x = _randn(3, 5, hidden, dtype=dtype)
    _close(rms_norm(x, norm.weight, norm.eps), norm(x), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [None, 0.35])
def test_add_rms_norm_is_the_residual_add_then_the_norm(scale, dtype):
    norm = RMSNorm(128, 1e-6).to(device=DEVICE, dtype=dtype)
    x, branch = _randn(4, 1, 128, dtype=dtype), _randn(4, 1, 128, dtype=dtype, seed=2)
    h, y = add_rms_norm(x, branch, scale, norm.weight, norm.eps)
    expect = x + (branch if scale is None else branch * scale)
    _close(h, expect, dtype)
    _close(y, norm(expect), dtype)


def _tables(n, dim, dtype):
    return _randn(n, dim, dtype=dtype, seed=3), _randn(n, dim, dtype=dtype, seed=4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pos_kind", ["none", "1d", "2d"])
def test_rope_on_views_of_a_fused_qkv_output(pos_kind, dtype):
    bsz, seq, heads, kv_heads, dim = 3, 4, 4, 2, 32
    qkv = _randn(bsz, seq, (heads + 2 * kv_heads) * dim, dtype=dtype)
    q = qkv[..., : heads * dim].view(bsz, seq, heads, dim)
    k = qkv[..., heads * dim : (heads + kv_heads) * dim].view(bsz, seq, kv_heads, dim)
    cos, sin = _tables(16, dim, dtype)
    positions = {
        "none": None,
        "1d": torch.tensor([5, 2, 9, 0], device=DEVICE),
        "2d": torch.tensor([[1, 2, 3, 4], [7, 8, 9, 10], [0, 15, 3, 3]], device=DEVICE),
    }[pos_kind]
    pos = torch.arange(seq, device=DEVICE) if positions is None else positions
    c, s = cos[pos], sin[pos]
    if pos.dim() == 2:
        c, s = c.unsqueeze(1), s.unsqueeze(1)
    q_ref, k_ref = apply_rotary(q.transpose(1, 2), k.transpose(1, 2), c, s)
    v_before = qkv[..., (heads + kv_heads) * dim :].clone()
    rope_(q, k, cos, sin, positions)
    _close(q.transpose(1, 2), q_ref, dtype)
    _close(k.transpose(1, 2), k_ref, dtype)
    assert torch.equal(qkv[..., (heads + kv_heads) * dim :], v_before)  # v untouched


def test_rope_single_token_rows_with_any_seq_stride():
    q = _randn(5, 1, 2, 16)
    k = _randn(5, 1, 2, 16, seed=1)
    cos, sin = _tables(8, 16, torch.float32)
    pos = torch.tensor([[0], [3], [7], [1], [1]], device=DEVICE)
    q_ref, k_ref = apply_rotary(q.transpose(1, 2), k.transpose(1, 2), cos[pos].unsqueeze(1), sin[pos].unsqueeze(1))
    rope_(q, k, cos, sin, pos)
    _close(q.transpose(1, 2), q_ref, torch.float32)
    _close(k.transpose(1, 2), k_ref, torch.float32)


def test_rope_rejects_a_head_dim_it_cannot_tile():
    q = _randn(1, 1, 2, 24)
    with pytest.raises(ValueError, match="power of two"):
        rope_(q, q.clone(), *_tables(4, 24, torch.float32), None)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", [96, 4096])
def test_silu_mul_on_the_halves_of_one_gemm_output(width, dtype):
    gate_up = _randn(6, 1, 2 * width, dtype=dtype)
    gate, up = gate_up[..., :width], gate_up[..., width:]
    _close(silu_mul(gate, up), F.silu(gate) * up, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cfg_euler_is_one_guided_euler_step_on_both_halves(dtype):
    b, feat, patch = 3, 64, 4
    x = _randn(b, patch, feat, dtype=dtype)
    velocity = _randn(2 * b, patch, feat, dtype=dtype, seed=1)
    cfg = torch.tensor([2.0, 1.5, 3.0], device=DEVICE)
    dt = 0.1875
    v_cond, v_uncond = velocity.split(b)
    expect = x - torch.tensor(dt, dtype=dtype, device=DEVICE) * guided_velocity(v_cond, v_uncond, cfg)
    x2 = torch.cat([x, x])
    cfg_euler_(x2, velocity, cfg, dt)
    _close(x2[:b], expect, dtype)
    assert torch.equal(x2[:b], x2[b:])


def test_cfg_euler_rejects_mismatched_buffers():
    x = _randn(4, 2, 8)
    with pytest.raises(ValueError, match="contiguous"):
        cfg_euler_(x, _randn(4, 8, 2).transpose(1, 2), torch.ones(2, device=DEVICE), 0.1)


@pytest.mark.parametrize("shape", [(2, 5, 37), (1, 3, 2048), (4, 64, 28)])
def test_snake_matches_the_op_by_op_activation(shape):
    x = _randn(*shape) * 4
    alpha = (torch.rand(1, shape[1], 1, generator=torch.Generator().manual_seed(1)) * 1.5 + 0.25).to(DEVICE)
    _close(fused.snake(x, alpha), vae_snake(x, alpha), torch.float32)
    _close(fused.snake(x.transpose(1, 2).contiguous().transpose(1, 2), alpha), vae_snake(x, alpha), torch.float32)


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
    z = _randn(2, TINY[name].latent_dim, 3)
    torch.testing.assert_close(fast.decode(z), plain.decode(z), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("dilation", "length"), [(1, 5), (3, 40), (9, 28), (9, 70)])
def test_depthwise_causal_conv_equals_conv1d_over_the_concatenation(dilation, length):
    channels, ctx = 6, 6 * dilation
    flat = _randn(3, channels * ctx + 5)  # context rows as strided views of a wider slot tensor
    context = flat[:, : channels * ctx].view(3, channels, ctx)
    x = _randn(3, channels, length, seed=1)
    weight, bias = _randn(channels, 1, 7, seed=2), _randn(channels, seed=3)
    want = F.conv1d(torch.cat([context, x], dim=-1), weight, bias, groups=channels, dilation=dilation)
    _close(fused.depthwise_causal_conv(context, x, weight, bias, dilation), want, torch.float32)


@pytest.mark.parametrize("name", ["v1-0.5b", "v1-1.5", "v2"])
@torch.no_grad()
def test_streamed_vae_decode_with_fused_paths_equals_the_op_by_op_stream(name):
    plain, fast = _vae_pair(name)
    z = _randn(2, TINY[name].latent_dim, 5)
    states = [vae.new_stream_state(2, DEVICE) for vae in (plain, fast)]
    for start, end in ((0, 1), (1, 5)):  # chunks shorter and longer than the contexts
        want = plain.decode_stream(z[..., start:end], states[0])
        got = fast.decode_stream(z[..., start:end], states[1])
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for a, b in zip(states[0].buffers, states[1].buffers, strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("heads", "kv_heads", "seq", "dim"), [(16, 16, 9, 64), (4, 2, 11, 32), (2, 2, 5, 64), (2, 1, 32, 16)]
)
def test_short_attention_on_views_of_a_fused_qkv_output(heads, kv_heads, seq, dim, dtype):
    qkv = _randn(3, seq, (heads + 2 * kv_heads) * dim, dtype=dtype)
    q = qkv[..., : heads * dim].view(3, seq, heads, dim).transpose(1, 2)
    k = qkv[..., heads * dim : (heads + kv_heads) * dim].view(3, seq, kv_heads, dim).transpose(1, 2)
    v = qkv[..., (heads + kv_heads) * dim :].view(3, seq, kv_heads, dim).transpose(1, 2)
    want = F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous(), enable_gqa=True)
    got = fused.short_attention(q, k, v)
    _close(got, want, dtype)
    assert got.transpose(1, 2).is_contiguous()  # [B, S, heads, d] memory: the o_proj input without a copy


def test_short_attention_refuses_long_sequences():
    q = _randn(1, 2, 33, 16)
    with pytest.raises(ValueError, match="unsupported"):
        fused.short_attention(q, q, q)
