"""Fused Triton kernels for the transformer stacks and the Euler sampler (the CUDA fast path).

A graphed decode step is bound by the number of kernels it launches, not by FLOPs: written op by
op, one MiniCPM layer issues ~35 kernels (RMSNorm alone is seven: cast, square, mean, add, rsqrt,
multiply, weight) and one Euler step of the sampler another ~20 for CFG-Zero*. These kernels do
each of those elementwise chains in one pass over the data (the AudioVAE's are in
:mod:`voxcpm_engine.kernels.fused_vae`), keeping the reference's numerics: fp32
statistics and rotation, and rounding to the model dtype at the same points as the op-by-op code
(so the results differ from it only by fp32 rounding order and FMA contraction).

Every kernel takes strided rows (the last dimension contiguous) so that views of a fused GEMM
output (q/k/v, gate/up) go in without copies. They run on CUDA, or on the CPU under
``TRITON_INTERPRET=1`` (tests).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from voxcpm_engine.kernels.fused_limits import SHORT_ATTENTION_MAX


@triton.jit
def _rms_norm_kernel(
    x_ptr,
    r_ptr,
    h_ptr,
    w_ptr,
    y_ptr,
    stride_x,
    stride_r,
    stride_h,
    stride_y,
    n_cols,
    scale,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    ok = offs < n_cols
    x = tl.load(x_ptr + row * stride_x + offs, mask=ok, other=0.0)
    dtype = x.dtype
    if HAS_RESIDUAL:
        # h = x + branch * scale, each op rounded to the model dtype like the op-by-op residual add.
        branch = tl.load(r_ptr + row * stride_r + offs, mask=ok, other=0.0)
        if HAS_SCALE:
            branch = (branch.to(tl.float32) * scale).to(dtype)
        x = (x.to(tl.float32) + branch.to(tl.float32)).to(dtype)
        tl.store(h_ptr + row * stride_h + offs, x, mask=ok)
    xf = x.to(tl.float32)
    variance = tl.sum(xf * xf, axis=0) / n_cols
    normed = (xf * (1.0 / tl.sqrt(variance + eps))).to(dtype)
    w = tl.load(w_ptr + offs, mask=ok, other=0.0)
    tl.store(y_ptr + row * stride_y + offs, (normed.to(tl.float32) * w.to(tl.float32)).to(dtype), mask=ok)


def _rows(t: Tensor) -> Tensor:
    """``t`` as ``[rows, cols]`` without a copy (needs a contiguous last dim and uniform row strides)."""
    if t.stride(-1) != 1:
        raise ValueError(f"fused kernels need a contiguous last dim, got strides {t.stride()}")
    return t.reshape(-1, t.shape[-1]) if t.dim() != 2 else t


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm of the last dim, as :class:`voxcpm_engine.model.transformer.RMSNorm` computes it (one kernel)."""
    x2 = _rows(x)
    y = x.new_empty(x.shape)
    n = x2.shape[1]
    _rms_norm_kernel[(x2.shape[0],)](
        x2, x2, x2, weight, y, x2.stride(0), 0, 0, n, n, 1.0, eps,
        HAS_RESIDUAL=False, HAS_SCALE=False, BLOCK=triton.next_power_of_2(n),
    )  # fmt: skip
    return y


def add_rms_norm(x: Tensor, branch: Tensor, scale: float | None, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """The residual add of a block and the next RMSNorm in one kernel.

    Args:
        x: Residual stream ``[..., H]``.
        branch: Block output ``[..., H]`` (same shape).
        scale: muP branch scale, or ``None``.
        weight: Weight of the norm that follows.
        eps: Its epsilon.

    Returns:
        ``(h, norm(h))`` with ``h = x + branch * scale``.
    """
    x2, b2 = _rows(x), _rows(branch)
    h, y = x.new_empty(x.shape), x.new_empty(x.shape)
    n = x2.shape[1]
    _rms_norm_kernel[(x2.shape[0],)](
        x2, b2, h, weight, y, x2.stride(0), b2.stride(0), n, n, n, 1.0 if scale is None else scale, eps,
        HAS_RESIDUAL=True, HAS_SCALE=scale is not None, BLOCK=triton.next_power_of_2(n),
    )  # fmt: skip
    return h, y


@triton.jit(do_not_specialize=["seq"])
def _rope_kernel(
    q_ptr,
    k_ptr,
    cos_ptr,
    sin_ptr,
    pos_ptr,
    seq,
    stride_q_tok,
    stride_q_head,
    stride_k_tok,
    stride_k_head,
    stride_pos_b,
    stride_pos_s,
    stride_table,
    NUM_Q_HEADS: tl.constexpr,
    NUM_K_HEADS: tl.constexpr,
    HALF: tl.constexpr,
    BLOCK_H: tl.constexpr,
    HAS_POS: tl.constexpr,
):
    tok = tl.program_id(0)
    b = tok // seq
    s = tok % seq
    if HAS_POS:
        pos = tl.load(pos_ptr + b.to(tl.int64) * stride_pos_b + s * stride_pos_s).to(tl.int64)
    else:
        pos = s.to(tl.int64)
    d = tl.arange(0, HALF)
    cos1 = tl.load(cos_ptr + pos * stride_table + d).to(tl.float32)
    cos2 = tl.load(cos_ptr + pos * stride_table + HALF + d).to(tl.float32)
    sin1 = tl.load(sin_ptr + pos * stride_table + d).to(tl.float32)
    sin2 = tl.load(sin_ptr + pos * stride_table + HALF + d).to(tl.float32)
    heads = tl.arange(0, BLOCK_H)
    tok64 = tok.to(tl.int64)
    _rotate(q_ptr + tok64 * stride_q_tok, stride_q_head, NUM_Q_HEADS, heads, d, cos1, cos2, sin1, sin2, HALF)
    _rotate(k_ptr + tok64 * stride_k_tok, stride_k_head, NUM_K_HEADS, heads, d, cos1, cos2, sin1, sin2, HALF)


@triton.jit
def _rotate(base, stride_head, n_heads, heads, d, cos1, cos2, sin1, sin2, HALF: tl.constexpr):
    # x * cos + rotate_half(x) * sin in fp32, rounded back (NeoX layout), for every head of one token.
    ok = (heads < n_heads)[:, None]
    ptr = base + heads[:, None] * stride_head + d[None, :]
    x1 = tl.load(ptr, mask=ok, other=0.0)
    x2 = tl.load(ptr + HALF, mask=ok, other=0.0)
    x1f, x2f = x1.to(tl.float32), x2.to(tl.float32)
    tl.store(ptr, (x1f * cos1[None, :] - x2f * sin1[None, :]).to(x1.dtype), mask=ok)
    tl.store(ptr + HALF, (x2f * cos2[None, :] + x1f * sin2[None, :]).to(x1.dtype), mask=ok)


def rope_(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, positions: Tensor | None) -> None:
    """Rotate ``q`` and ``k`` in place (LongRoPE tables, NeoX layout), like :func:`apply_rotary`.

    Args:
        q: Queries ``[B, S, heads, head_dim]`` (any token/head strides, last dim contiguous).
        k: Keys ``[B, S, kv_heads, head_dim]``.
        cos: Table ``[positions, head_dim]`` (model dtype).
        sin: Table ``[positions, head_dim]``.
        positions: ``[B, S]`` or ``[S]`` positions; ``None`` means ``0..S-1`` for every row.
    """
    bsz, seq, n_q, dim = q.shape
    n_k = k.shape[2]
    if dim % 2 or (dim // 2) & (dim // 2 - 1):
        raise ValueError(f"rope_: head_dim / 2 must be a power of two, got head_dim {dim}")
    if q.stride(-1) != 1 or k.stride(-1) != 1 or cos.stride(-1) != 1:
        raise ValueError("rope_: q, k and the tables need a contiguous last dim")
    q_tok, k_tok = _token_stride(q), _token_stride(k)
    if positions is None:
        pos, stride_b, stride_s = q, 0, 0
    elif positions.dim() == 1:
        pos, stride_b, stride_s = positions, 0, positions.stride(0)
    else:
        pos, stride_b, stride_s = positions, positions.stride(0), positions.stride(1)
    _rope_kernel[(bsz * seq,)](
        q, k, cos, sin, pos, seq, q_tok, q.stride(2), k_tok, k.stride(2), stride_b, stride_s,
        cos.stride(0), NUM_Q_HEADS=n_q, NUM_K_HEADS=n_k, HALF=dim // 2,
        BLOCK_H=triton.next_power_of_2(max(n_q, n_k)), HAS_POS=positions is not None,
    )  # fmt: skip


def _token_stride(x: Tensor) -> int:
    """Stride between consecutive tokens of ``[B, S, heads, d]`` viewed as ``[B * S, heads, d]``."""
    if x.shape[1] == 1:
        return x.stride(0)
    if x.shape[0] > 1 and x.stride(0) != x.shape[1] * x.stride(1):
        raise ValueError(f"rope_: tokens need one stride (a view of [B*S, ...]), got strides {x.stride()}")
    return x.stride(1)


@triton.jit
def _silu_mul_kernel(g_ptr, u_ptr, y_ptr, stride_g, stride_u, stride_y, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n_cols
    g = tl.load(g_ptr + row * stride_g + offs, mask=ok, other=0.0)
    u = tl.load(u_ptr + row * stride_u + offs, mask=ok, other=0.0)
    gf = g.to(tl.float32)
    act = (gf / (1.0 + tl.exp(-gf))).to(g.dtype)  # silu rounded, then the product (two bf16 ops)
    tl.store(y_ptr + row * stride_y + offs, (act.to(tl.float32) * u.to(tl.float32)).to(g.dtype), mask=ok)


def silu_mul(gate: Tensor, up: Tensor) -> Tensor:
    """``silu(gate) * up`` in one kernel (``gate``/``up`` may be the two halves of one GEMM output)."""
    g2, u2 = _rows(gate), _rows(up)
    y = gate.new_empty(gate.shape)
    y2 = y.view(-1, y.shape[-1])
    n = g2.shape[1]
    block = min(1024, triton.next_power_of_2(n))
    _silu_mul_kernel[(g2.shape[0], triton.cdiv(n, block))](
        g2, u2, y2, g2.stride(0), u2.stride(0), y2.stride(0), n, BLOCK=block
    )
    return y


@triton.jit(do_not_specialize=["n_rows"])
def _cfg_euler_kernel(x_ptr, v_ptr, cfg_ptr, n_rows, n_elems, dt, BLOCK: tl.constexpr):
    # Row r: v_cond = v[r], v_uncond = v[r + B]; x[r] == x[r + B] (the CFG batch) both get the update.
    r = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    ok = offs < n_elems
    vc = tl.load(v_ptr + r * n_elems + offs, mask=ok, other=0.0)
    vu = tl.load(v_ptr + (r + n_rows) * n_elems + offs, mask=ok, other=0.0)
    x = tl.load(x_ptr + r * n_elems + offs, mask=ok, other=0.0)
    dtype = x.dtype
    vcf, vuf = vc.to(tl.float32), vu.to(tl.float32)
    # CFG-Zero*: the op-by-op code rounds every intermediate to the model dtype; so do we.
    dot = tl.sum((vcf * vuf).to(dtype).to(tl.float32), axis=0).to(dtype).to(tl.float32)
    norm_sq = tl.sum((vuf * vuf).to(dtype).to(tl.float32), axis=0).to(dtype).to(tl.float32)
    norm_sq = (norm_sq + 1e-8).to(dtype).to(tl.float32)
    st = (dot / norm_sq).to(dtype).to(tl.float32)
    scaled_uncond = (vuf * st).to(dtype).to(tl.float32)
    delta = (vcf - scaled_uncond).to(dtype).to(tl.float32)
    cfg = tl.load(cfg_ptr + r).to(tl.float32)
    guided = (cfg * delta).to(dtype).to(tl.float32)
    velocity = (scaled_uncond + guided).to(dtype).to(tl.float32)
    step = (velocity * dt).to(dtype).to(tl.float32)
    out = (x.to(tl.float32) - step).to(dtype)
    tl.store(x_ptr + r * n_elems + offs, out, mask=ok)
    tl.store(x_ptr + (r + n_rows) * n_elems + offs, out, mask=ok)


def cfg_euler_(x: Tensor, velocity: Tensor, cfg_value: Tensor, dt: float) -> None:
    """One Euler step with CFG-Zero* guidance, in place on the CFG batch ``x``.

    Args:
        x: ``[2B, ...]`` contiguous current sample; rows ``r`` and ``r + B`` hold the same values
            and both receive ``x - dt * guided_velocity``.
        velocity: ``[2B, ...]`` contiguous estimator output, conditional rows first.
        cfg_value: ``[B]`` fp32 guidance scales.
        dt: The step size (a value of the model dtype).
    """
    if not (x.is_contiguous() and velocity.is_contiguous() and x.shape == velocity.shape):
        raise ValueError("cfg_euler_: x and velocity must be contiguous and of one shape")
    b = x.shape[0] // 2
    n = x[0].numel()
    _cfg_euler_kernel[(b,)](x, velocity, cfg_value, b, n, float(dt), BLOCK=triton.next_power_of_2(n))


@triton.jit
def _short_attention_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    o_ptr,
    seq,
    scale,
    sq_b,
    sq_h,
    sq_s,
    sk_b,
    sk_h,
    sk_s,
    sv_b,
    sv_h,
    sv_s,
    so_b,
    so_h,
    so_s,
    NUM_HEADS: tl.constexpr,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_S: tl.constexpr,
    PRECISION: tl.constexpr,
):
    # One program per (row, head): the whole [S, S] score matrix of a short sequence in registers.
    pid = tl.program_id(0)
    b = (pid // NUM_HEADS).to(tl.int64)
    h = pid % NUM_HEADS
    kv = h // GROUP
    s = tl.arange(0, BLOCK_S)
    d = tl.arange(0, HEAD_DIM)
    ok = s < seq
    q = tl.load(q_ptr + b * sq_b + h * sq_h + s[:, None] * sq_s + d[None, :], mask=ok[:, None], other=0.0)
    k = tl.load(k_ptr + b * sk_b + kv * sk_h + s[:, None] * sk_s + d[None, :], mask=ok[:, None], other=0.0)
    v = tl.load(v_ptr + b * sv_b + kv * sv_h + s[:, None] * sv_s + d[None, :], mask=ok[:, None], other=0.0)
    scores = tl.dot(q, tl.trans(k), input_precision=PRECISION).to(tl.float32) * scale
    scores = tl.where(ok[None, :], scores, float("-inf"))
    p = tl.exp(scores - tl.max(scores, axis=1)[:, None])
    p = p / tl.sum(p, axis=1)[:, None]
    out = tl.dot(p.to(v.dtype), v, input_precision=PRECISION).to(tl.float32)
    tl.store(
        o_ptr + b * so_b + h * so_h + s[:, None] * so_s + d[None, :], out.to(o_ptr.dtype.element_ty), mask=ok[:, None]
    )


def short_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Bidirectional attention over short sequences, one program per (row, head) (DiT, local encoder).

    The DiT runs 80 attention calls per step on 9-11 tokens; a general SDPA kernel spends ~35 us on
    each at batch 64, this one a few.

    Args:
        q: ``[B, heads, S, d]`` (any strides, last dim contiguous), ``S <= SHORT_ATTENTION_MAX``.
        k: ``[B, kv_heads, S, d]``.
        v: ``[B, kv_heads, S, d]``.

    Returns:
        ``[B, heads, S, d]``, laid out as ``[B, S, heads, d]`` (so the output projection needs no copy).
    """
    bsz, heads, seq, dim = q.shape
    kv_heads = k.shape[1]
    if seq > SHORT_ATTENTION_MAX or dim & (dim - 1) or dim < 16 or heads % kv_heads:
        raise ValueError(f"short_attention: unsupported shape q {tuple(q.shape)}, k {tuple(k.shape)}")
    out = torch.empty(bsz, seq, heads, dim, dtype=q.dtype, device=q.device).transpose(1, 2)
    _short_attention_kernel[(bsz * heads,)](
        q, k, v, out, seq, dim**-0.5, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
        NUM_HEADS=heads, GROUP=heads // kv_heads, HEAD_DIM=dim, BLOCK_S=max(16, triton.next_power_of_2(seq)),
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",  # fp32 models: no TF32 in the products
    )  # fmt: skip
    return out
