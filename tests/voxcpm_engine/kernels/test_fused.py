"""The fused Triton kernels of ``voxcpm_engine.kernels.fused`` against the op-by-op torch code they replace.

Runs in Triton's interpreter without CUDA (set up by ``tests.voxcpm_engine.kernels.interpret``), compiled
with CUDA.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.voxcpm_engine.kernels.interpret import DEVICE, DTYPES, close, randn, skip_if_compiled
from voxcpm_engine.kernels import fused
from voxcpm_engine.kernels.fused import add_rms_norm, cfg_euler_, rms_norm, rope_, silu_mul
from voxcpm_engine.model.sampler import guided_velocity
from voxcpm_engine.model.transformer import RMSNorm, apply_rotary

skip_if_compiled(fused._rms_norm_kernel)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [64, 96, 1024])
def test_rms_norm_matches_the_module(hidden, dtype):
    norm = RMSNorm(hidden, 1e-5).to(device=DEVICE, dtype=dtype)
    norm.weight.data = randn(hidden, dtype=dtype, seed=1)
    x = randn(3, 5, hidden, dtype=dtype)
    close(rms_norm(x, norm.weight, norm.eps), norm(x), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [None, 0.35])
def test_add_rms_norm_is_the_residual_add_then_the_norm(scale, dtype):
    norm = RMSNorm(128, 1e-6).to(device=DEVICE, dtype=dtype)
    x, branch = randn(4, 1, 128, dtype=dtype), randn(4, 1, 128, dtype=dtype, seed=2)
    h, y = add_rms_norm(x, branch, scale, norm.weight, norm.eps)
    expect = x + (branch if scale is None else branch * scale)
    close(h, expect, dtype)
    close(y, norm(expect), dtype)


def _tables(n, dim, dtype):
    return randn(n, dim, dtype=dtype, seed=3), randn(n, dim, dtype=dtype, seed=4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pos_kind", ["none", "1d", "2d"])
def test_rope_on_views_of_a_fused_qkv_output(pos_kind, dtype):
    bsz, seq, heads, kv_heads, dim = 3, 4, 4, 2, 32
    qkv = randn(bsz, seq, (heads + 2 * kv_heads) * dim, dtype=dtype)
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
    close(q.transpose(1, 2), q_ref, dtype)
    close(k.transpose(1, 2), k_ref, dtype)
    assert torch.equal(qkv[..., (heads + kv_heads) * dim :], v_before)  # v untouched


def test_rope_single_token_rows_with_any_seq_stride():
    q = randn(5, 1, 2, 16)
    k = randn(5, 1, 2, 16, seed=1)
    cos, sin = _tables(8, 16, torch.float32)
    pos = torch.tensor([[0], [3], [7], [1], [1]], device=DEVICE)
    q_ref, k_ref = apply_rotary(q.transpose(1, 2), k.transpose(1, 2), cos[pos].unsqueeze(1), sin[pos].unsqueeze(1))
    rope_(q, k, cos, sin, pos)
    close(q.transpose(1, 2), q_ref, torch.float32)
    close(k.transpose(1, 2), k_ref, torch.float32)


def test_rope_rejects_a_head_dim_it_cannot_tile():
    q = randn(1, 1, 2, 24)
    with pytest.raises(ValueError, match="power of two"):
        rope_(q, q.clone(), *_tables(4, 24, torch.float32), None)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", [96, 4096])
def test_silu_mul_on_the_halves_of_one_gemm_output(width, dtype):
    gate_up = randn(6, 1, 2 * width, dtype=dtype)
    gate, up = gate_up[..., :width], gate_up[..., width:]
    close(silu_mul(gate, up), F.silu(gate) * up, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cfg_euler_is_one_guided_euler_step_on_both_halves(dtype):
    b, feat, patch = 3, 64, 4
    x = randn(b, patch, feat, dtype=dtype)
    velocity = randn(2 * b, patch, feat, dtype=dtype, seed=1)
    cfg = torch.tensor([2.0, 1.5, 3.0], device=DEVICE)
    dt = 0.1875
    v_cond, v_uncond = velocity.split(b)
    expect = x - torch.tensor(dt, dtype=dtype, device=DEVICE) * guided_velocity(v_cond, v_uncond, cfg)
    x2 = torch.cat([x, x])
    cfg_euler_(x2, velocity, cfg, dt)
    close(x2[:b], expect, dtype)
    assert torch.equal(x2[:b], x2[b:])


def test_cfg_euler_rejects_mismatched_buffers():
    x = randn(4, 2, 8)
    with pytest.raises(ValueError, match="contiguous"):
        cfg_euler_(x, randn(4, 8, 2).transpose(1, 2), torch.ones(2, device=DEVICE), 0.1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("heads", "kv_heads", "seq", "dim"), [(16, 16, 9, 64), (4, 2, 11, 32), (2, 2, 5, 64), (2, 1, 32, 16)]
)
def test_short_attention_on_views_of_a_fused_qkv_output(heads, kv_heads, seq, dim, dtype):
    qkv = randn(3, seq, (heads + 2 * kv_heads) * dim, dtype=dtype)
    q = qkv[..., : heads * dim].view(3, seq, heads, dim).transpose(1, 2)
    k = qkv[..., heads * dim : (heads + kv_heads) * dim].view(3, seq, kv_heads, dim).transpose(1, 2)
    v = qkv[..., (heads + kv_heads) * dim :].view(3, seq, kv_heads, dim).transpose(1, 2)
    want = F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous(), enable_gqa=True)
    got = fused.short_attention(q, k, v)
    close(got, want, dtype)
    assert got.transpose(1, 2).is_contiguous()  # [B, S, heads, d] memory: the o_proj input without a copy


def test_short_attention_refuses_long_sequences():
    q = randn(1, 2, 33, 16)
    with pytest.raises(ValueError, match="unsupported"):
        fused.short_attention(q, q, q)
