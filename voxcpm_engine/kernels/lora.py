"""Segmented multi-adapter LoRA: two Triton kernels per layer group (CUDA path of :mod:`voxcpm_engine.lora.layers`).

The torch path of a mixed batch projects every row onto every slot's ``A`` (a third of a graphed
step with 8 adapters: 6 kernels per layer, most FLOPs spent on other rows' slots). Here the rows
are visited in slot order (a stable sort of the slot ids, made once per forward and shared by every
layer), so a block of rows usually holds one slot and multiplies by that slot's matrices only:

* ``shrink``: ``h[j, g] = A_g[slot] @ x[row j]`` for the ``G`` layers of a group that read the same
  input (q/k/v, or gate/up: one launch for all of them), rounded to the model dtype like
  ``F.linear``;
* ``expand``: ``out[row j, section g] += (B_g[slot] @ h[j, g]) * scaling_g[slot]`` in place, rounding
  to the model dtype after the product, after the scaling and after the add, the op order of the
  reference's ``base + (B(Ax)) * scaling`` (spec §9). Rows of slot 0 are not touched.

Results equal the torch path up to the fp32 accumulation order of the two small GEMMs. They run on
CUDA, or on the CPU under ``TRITON_INTERPRET=1`` (tests).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from voxcpm_engine.kernels.fused import _rows

# Tile sizes, the best of a sweep at VoxCPM2's graphed-step shapes on an H200 (.prof-style sweep: rows
# 128 and 256 x 9, in 1024/2048, rank 32, 8 adapters). A program's serial loop bounds these small
# GEMMs (a few hundred programs, each a chain of dependent loads), so the reduction over ``in`` is
# cut into splits of block_k * k_iters.
TUNING = {"block_m": 32, "block_k": 128, "k_iters": 4, "block_n": 128, "shrink_warps": 4, "expand_warps": 4}
MAX_GROUP = 3  # q/k/v


@triton.jit
def _slot_block(order_ptr, slot_ptr, start, M, T, BLOCK: tl.constexpr):
    """Sorted positions ``j``, their validity, token row in the input and slot, and the block's slot range."""
    j = start + tl.arange(0, BLOCK)
    ok = j < M
    seq = j // T
    slot = tl.load(slot_ptr + seq, mask=ok, other=0)
    tok = tl.load(order_ptr + seq, mask=ok, other=0) * T + j % T
    lo = tl.maximum(tl.min(tl.where(ok, slot, 1 << 30), axis=0), 1)  # slot 0 rows get no adapter term
    hi = tl.max(tl.where(ok, slot, -1), axis=0)
    return j, ok, tok.to(tl.int64), slot, lo, hi


@triton.jit
def _shrink_kernel(
    x_ptr, stride_x, a0, a1, a2, h_ptr, stride_hs, stride_h, order_ptr, slot_ptr, M, T, K, R, K_SPLIT,
    IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    # Split over K (program axis 2) into fp32 partials that the expand kernel sums in a fixed order:
    # a short serial loop per program, and deterministic unlike atomics.
    g = tl.program_id(1)
    split = tl.program_id(2)
    a_ptr = a0
    if g == 1:
        a_ptr = a1
    if g == 2:
        a_ptr = a2
    j, ok, tok, slot, lo, hi = _slot_block(order_ptr, slot_ptr, tl.program_id(0) * BLOCK_M, M, T, BLOCK_M)
    r = tl.arange(0, BLOCK_R)
    kk = tl.arange(0, BLOCK_K)
    k_end = tl.minimum(K, (split + 1) * K_SPLIT)
    h = tl.zeros([BLOCK_M, BLOCK_R], dtype=tl.float32)
    for s in range(lo, hi + 1):
        acc = tl.zeros([BLOCK_M, BLOCK_R], dtype=tl.float32)
        for k0 in range(split * K_SPLIT, k_end, BLOCK_K):
            k = k0 + kk
            k_ok = k < k_end
            xv = tl.load(x_ptr + tok[:, None] * stride_x + k[None, :], mask=ok[:, None] & k_ok[None, :], other=0.0)
            av = tl.load(
                a_ptr + s * R * K + r[None, :] * K + k[:, None], mask=(r < R)[None, :] & k_ok[:, None], other=0.0
            )
            if IEEE:
                acc += tl.dot(xv, av, input_precision="ieee")
            else:
                acc += tl.dot(xv, av)
        h = tl.where((slot == s)[:, None], acc, h)
    h_ptrs = h_ptr + split * stride_hs + j[:, None].to(tl.int64) * stride_h + g * BLOCK_R + r[None, :]
    tl.store(h_ptrs, h, mask=ok[:, None])


@triton.jit
def _expand_kernel(
    h_ptr, stride_hs, stride_h, b0, b1, b2, s0, s1, s2, o_ptr, stride_o, order_ptr, slot_ptr, M, T, W0, W1, W2, R,
    IEEE: tl.constexpr, SPLITS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    # Column tiles are numbered section by section, so no tile straddles two layers' outputs.
    t = tl.program_id(1)
    tiles0 = tl.cdiv(W0, BLOCK_N)
    tiles1 = tl.cdiv(W1, BLOCK_N)
    g = 0
    b_ptr = b0
    s_ptr = s0
    width = W0
    col0 = 0
    if t >= tiles0:
        g = 1
        b_ptr = b1
        s_ptr = s1
        width = W1
        col0 = W0
        t -= tiles0
    if (t >= tiles1) & (g == 1):
        g = 2
        b_ptr = b2
        s_ptr = s2
        width = W2
        col0 = W0 + W1
        t -= tiles1
    j, ok, tok, slot, lo, hi = _slot_block(order_ptr, slot_ptr, tl.program_id(0) * BLOCK_M, M, T, BLOCK_M)
    r = tl.arange(0, BLOCK_R)
    n = t * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < width
    dtype = o_ptr.dtype.element_ty
    h_ptrs = h_ptr + j[:, None].to(tl.int64) * stride_h + g * BLOCK_R + r[None, :]
    hv = tl.load(h_ptrs, mask=ok[:, None], other=0.0)
    for split in tl.static_range(1, SPLITS):
        hv += tl.load(h_ptrs + split * stride_hs, mask=ok[:, None], other=0.0)
    hv = hv.to(dtype)  # the shrink GEMM's output, rounded like F.linear's
    d = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for s in range(lo, hi + 1):
        bv = tl.load(
            b_ptr + s * width * R + n[None, :] * R + r[:, None], mask=n_ok[None, :] & (r < R)[:, None], other=0.0
        )
        if IEEE:
            acc = tl.dot(hv, bv, input_precision="ieee")
        else:
            acc = tl.dot(hv, bv)
        d = tl.where((slot == s)[:, None], acc, d)
    scaling = tl.load(s_ptr + slot, mask=ok, other=0.0).to(tl.float32)
    d = (d.to(dtype).to(tl.float32) * scaling[:, None]).to(dtype)
    o_ptrs = o_ptr + tok[:, None] * stride_o + col0 + n[None, :]
    keep = ok[:, None] & n_ok[None, :] & (slot != 0)[:, None]
    base = tl.load(o_ptrs, mask=keep, other=0.0)
    tl.store(o_ptrs, (base.to(tl.float32) + d.to(tl.float32)).to(dtype), mask=keep)


def add_lora_(
    x: Tensor,
    out: Tensor,
    a: Sequence[Tensor],
    b: Sequence[Tensor],
    scaling: Sequence[Tensor],
    order: Tensor,
    sorted_slots: Tensor,
) -> None:
    """Add each row's adapter term of ``G`` layers reading ``x`` to their outputs, side by side in ``out``.

    Args:
        x: Layer input ``[n, ..., in]`` (last dim contiguous); dim 0 is the row that selects the slot.
        out: The layers' outputs side by side ``[n, ..., sum(out_g)]`` (e.g. a fused q/k/v GEMM's
            result), updated in place; rows of slot 0 are left as they are.
        a: Per layer ``lora_a [S, r_max, in]`` (contiguous), ``G = len(a)`` in 1..3.
        b: Per layer ``lora_b [S, out_g, r_max]`` (contiguous).
        scaling: Per layer ``lora_scaling [S]``.
        order: ``[n]`` int64 rows in slot order (a stable sort of the slot ids).
        sorted_slots: ``[n]`` int64 slot ids in that order.
    """
    groups = len(a)
    if not 1 <= groups <= MAX_GROUP or len(b) != groups or len(scaling) != groups:
        raise ValueError(f"1 to {MAX_GROUP} layers per group with one A, B and scaling each, got {groups}")
    x2, o2 = _rows(x), _rows(out)
    rows, k = x2.shape
    widths = [t.shape[1] for t in b]
    if o2.shape != (rows, sum(widths)) or rows % order.numel():
        raise ValueError(f"LoRA group: input {tuple(x.shape)}, output {tuple(out.shape)}, widths {widths}")
    rank = a[0].shape[1]
    block_r = max(16, triton.next_power_of_2(rank))
    k_split = TUNING["block_k"] * TUNING["k_iters"]
    splits = triton.cdiv(k, k_split)
    h = x2.new_empty(splits, rows, groups * block_r, dtype=torch.float32)
    a3, b3, s3 = (list(t) + [t[0]] * (MAX_GROUP - groups) for t in (a, b, scaling))
    w3 = widths + [0] * (MAX_GROUP - groups)
    per_row = rows // order.numel()
    ieee = x.dtype == torch.float32
    block_m = TUNING["block_m"]
    m_blocks = triton.cdiv(rows, block_m)
    _shrink_kernel[(m_blocks, groups, splits)](
        x2, x2.stride(0), *a3, h, h.stride(0), h.stride(1), order, sorted_slots, rows, per_row, k, rank, k_split,
        IEEE=ieee, BLOCK_M=block_m, BLOCK_K=TUNING["block_k"], BLOCK_R=block_r, num_warps=TUNING["shrink_warps"],
    )  # fmt: skip
    block_n = TUNING["block_n"]
    n_tiles = sum(triton.cdiv(w, block_n) for w in widths)
    _expand_kernel[(m_blocks, n_tiles)](
        h, h.stride(0), h.stride(1), *b3, *s3, o2, o2.stride(0), order, sorted_slots, rows, per_row, *w3, rank,
        IEEE=ieee, SPLITS=splits, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_R=block_r, num_warps=TUNING["expand_warps"],
    )  # fmt: skip
