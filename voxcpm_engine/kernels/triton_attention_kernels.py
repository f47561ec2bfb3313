"""Triton kernels of unified paged attention (host side: :mod:`voxcpm_engine.kernels.triton_attention`).

Layout of the launch (after vLLM's unified Triton attention): the packed queries of every sequence are cut
into q-blocks of ``BLOCK_Q`` tokens; one program handles one q-block of one KV head, i.e. ``BLOCK_Q`` tokens
times the ``GROUP`` query heads that share that KV head, as ``BLOCK_M = BLOCK_Q * GROUP_PAD`` rows of one
tile. Sharing the K/V tile loads across the query heads of a group is what makes GQA decode cheap (VoxCPM
has 8 query heads per KV head).

The grid is sized without a host sync: sequence ``b`` owns the q-block ids
``cu_seqlens_q[b] // BLOCK_Q + b ...`` which leaves room for ``ceil(q_len_b / BLOCK_Q)`` blocks; a program
finds its sequence by binary search over ``cu_seqlens_q`` and exits if its block id is spare.

Split-KV (flash decoding): with ``NUM_SPLITS > 1`` a third grid axis cuts each program's key range into equal
shares; each writes a normalised fp32 partial and its log-sum-exp, and :func:`combine_splits_kernel` merges
them. This gives small decode batches (1 sequence x 2 KV heads is 2 programs) enough parallelism.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _find_seq(cu_seqlens_q_ptr, q_block_id, num_seqs, BLOCK_Q: tl.constexpr):
    """Largest ``b`` with ``cu_seqlens_q[b] // BLOCK_Q + b <= q_block_id`` (the sequence owning the block)."""
    lo: tl.int32 = 0
    hi = num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        first_block = tl.load(cu_seqlens_q_ptr + mid) // BLOCK_Q + mid
        if first_block <= q_block_id:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit
def paged_attention_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    out_ptr,
    part_out_ptr,
    part_lse_ptr,
    cu_seqlens_q_ptr,
    seq_lens_ptr,
    block_tables_ptr,
    num_seqs,
    num_heads,
    scale_log2,
    stride_q_tok,
    stride_q_head,
    stride_o_tok,
    stride_o_head,
    stride_c_block,
    stride_c_slot,
    stride_c_head,
    stride_bt,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    q_block_id = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)

    seq = _find_seq(cu_seqlens_q_ptr, q_block_id, num_seqs, BLOCK_Q)
    q_start = tl.load(cu_seqlens_q_ptr + seq)
    q_len = tl.load(cu_seqlens_q_ptr + seq + 1) - q_start
    local_block = q_block_id - (q_start // BLOCK_Q + seq)
    if local_block * BLOCK_Q >= q_len:
        return  # a spare block id of this sequence
    seq_len = tl.load(seq_lens_ptr + seq)
    context_len = seq_len - q_len  # KV positions that precede this step's queries

    # Row m of the tile is query token m // GROUP_PAD of the block and query head m % GROUP_PAD of the group.
    offs_m = tl.arange(0, BLOCK_M)
    q_tok = local_block * BLOCK_Q + offs_m // GROUP_PAD  # index among the sequence's queries
    head = kv_head * GROUP + offs_m % GROUP_PAD
    row_ok = (q_tok < q_len) & (offs_m % GROUP_PAD < GROUP)
    query_pos = context_len + q_tok  # absolute position: attends to keys <= query_pos

    offs_d = tl.arange(0, HEAD_DIM_PAD)
    d_ok = offs_d < HEAD_DIM
    q_rows = (q_start + q_tok).to(tl.int64) * stride_q_tok + head * stride_q_head
    q = tl.load(q_ptr + q_rows[:, None] + offs_d[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], dtype=tl.float32)

    # Keys past the last query of this block are masked for every row, so the loop stops there.
    last_q_tok = tl.minimum((local_block + 1) * BLOCK_Q, q_len) - 1
    kv_end = context_len + last_q_tok + 1
    # Split-KV (flash decoding): split s of NUM_SPLITS takes an equal share of this block's key tiles.
    tiles_per_split = tl.cdiv(tl.cdiv(kv_end, BLOCK_N), NUM_SPLITS)
    kv_lo = split * tiles_per_split * BLOCK_N
    kv_hi = tl.minimum(kv_lo + tiles_per_split * BLOCK_N, kv_end)
    offs_n = tl.arange(0, BLOCK_N)
    bt_row = block_tables_ptr + seq.to(tl.int64) * stride_bt
    for start_n in range(kv_lo, kv_hi, BLOCK_N):
        pos = start_n + offs_n
        pos_ok = pos < kv_end
        # Per-key block lookup: works for any block_size, and the table row is hot in L1 anyway.
        phys = tl.load(bt_row + pos // BLOCK_SIZE, mask=pos_ok, other=0).to(tl.int64)
        kv_off = phys * stride_c_block + (pos % BLOCK_SIZE) * stride_c_slot + kv_head * stride_c_head
        kv_mask = pos_ok[:, None] & d_ok[None, :]
        # Masked lanes read 0, never the (possibly NaN) garbage of unused slots.
        k = tl.load(k_cache_ptr + kv_off[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_cache_ptr + kv_off[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)

        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2  # [BLOCK_M, BLOCK_N], fp32
        causal = (pos[None, :] <= query_pos[:, None]) & pos_ok[None, :]
        s = tl.where(causal, s, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # Rows with nothing visible yet (padding rows) keep m = -inf; subtracting 0 instead avoids NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None]
        acc += tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    # Rows that saw no key (padding rows; with splits, an empty or fully masked share) have l = 0: the guard
    # keeps them finite, and with splits their log-sum-exp of -inf gives them zero weight in the combine.
    acc = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    out_mask = row_ok[:, None] & d_ok[None, :]
    if NUM_SPLITS == 1:
        o_rows = (q_start + q_tok).to(tl.int64) * stride_o_tok + head * stride_o_head
        tl.store(out_ptr + o_rows[:, None] + offs_d[None, :], acc.to(out_ptr.dtype.element_ty), mask=out_mask)
    else:
        # Partials are fp32 [total_q, num_heads, NUM_SPLITS, HEAD_DIM_PAD] and lse [total_q, num_heads, NUM_SPLITS].
        part = ((q_start + q_tok).to(tl.int64) * num_heads + head) * NUM_SPLITS + split
        tl.store(part_out_ptr + part[:, None] * HEAD_DIM_PAD + offs_d[None, :], acc, mask=out_mask)
        lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.log2(tl.where(l_i == 0.0, 1.0, l_i)))
        tl.store(part_lse_ptr + part, lse, mask=row_ok)


@triton.jit
def combine_splits_kernel(
    part_out_ptr,
    part_lse_ptr,
    out_ptr,
    stride_o_tok,
    stride_o_head,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
):
    # One program per (query token, head): weight each split's normalised partial by its share of the
    # softmax mass, 2^(lse_s - max lse) / sum.
    tok = tl.program_id(0)
    head = tl.program_id(1)
    part = (tok.to(tl.int64) * tl.num_programs(1) + head) * NUM_SPLITS + tl.arange(0, NUM_SPLITS)
    lse = tl.load(part_lse_ptr + part)
    lse_max = tl.max(lse, axis=0)
    # Every owned row saw key 0 in split 0, so lse_max is finite; the guard is for safety only.
    weight = tl.exp2(lse - tl.where(lse_max == float("-inf"), 0.0, lse_max))
    weight = weight / tl.maximum(tl.sum(weight, axis=0), 1e-30)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    d_ok = offs_d < HEAD_DIM  # the padded columns of the partials are never written
    partial = tl.load(part_out_ptr + part[:, None] * HEAD_DIM_PAD + offs_d[None, :], mask=d_ok[None, :], other=0.0)
    out = tl.sum(partial * weight[:, None], axis=0)
    o_ptr = out_ptr + tok.to(tl.int64) * stride_o_tok + head * stride_o_head + offs_d
    tl.store(o_ptr, out.to(out_ptr.dtype.element_ty), mask=d_ok)
