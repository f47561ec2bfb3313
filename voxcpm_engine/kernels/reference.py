"""Torch reference implementations of the paged-KV operations (any device, readable, no cleverness).

These define the semantics the Triton and flash-attn paths must reproduce:

* The cache of one layer is ``k_cache``/``v_cache`` ``[num_blocks, block_size, num_kv_heads, head_dim]``.
* Position ``p`` of sequence ``b`` lives in slot ``block_tables[b, p // block_size] * block_size + p % block_size``.
* A step brings ``q_len_b >= 1`` new queries for sequence ``b`` that sit at the END of its ``seq_lens[b]``
  positions and attend causally to every position up to and including their own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def store_kv_torch(k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor) -> None:
    """Writes new K/V rows into their cache slots (in place).

    Args:
        k: New keys ``[N, num_kv_heads, head_dim]``.
        v: New values ``[N, num_kv_heads, head_dim]``.
        k_cache: Key cache ``[num_blocks, block_size, num_kv_heads, head_dim]``, contiguous in its first two dims.
        v_cache: Value cache, same layout as ``k_cache``.
        slot_mapping: ``[N]`` integer slot of each row; ``-1`` skips the row (padding tokens).
    """
    _check_store_args(k, v, k_cache, v_cache, slot_mapping)
    # ``view`` (not ``reshape``/``flatten``) so that a cache that cannot be addressed by slot raises instead
    # of silently writing into a copy.
    k_slots = k_cache.view(-1, *k_cache.shape[2:])
    v_slots = v_cache.view(-1, *v_cache.shape[2:])
    keep = slot_mapping >= 0
    # Boolean indexing syncs on CUDA; acceptable for the reference, the Triton kernel skips rows on device.
    slots = slot_mapping[keep].to(torch.long)
    k_slots.index_copy_(0, slots, k[keep].to(k_cache.dtype))
    v_slots.index_copy_(0, slots, v[keep].to(v_cache.dtype))


def _check_store_args(k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor) -> None:
    if k.shape != v.shape or k.dim() != 3:
        raise ValueError(f"k and v must both be [N, kv_heads, head_dim], got {tuple(k.shape)} and {tuple(v.shape)}")
    if k_cache.shape != v_cache.shape or k_cache.dim() != 4 or k_cache.shape[2:] != k.shape[1:]:
        raise ValueError(f"cache {tuple(k_cache.shape)} does not hold rows of shape {tuple(k.shape[1:])}")
    if slot_mapping.shape != (k.shape[0],):
        raise ValueError(f"slot_mapping must be [{k.shape[0]}], got {tuple(slot_mapping.shape)}")


def paged_attention_torch(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    *,
    cu_seqlens_q: Tensor,
    seq_lens: Tensor,
    block_tables: Tensor,
    scale: float | None = None,
) -> Tensor:
    """Causal paged attention over a varlen batch, one SDPA call per sequence.

    Args:
        q: Packed queries ``[total_q, num_heads, head_dim]``; rows of sequence ``b`` are
            ``cu_seqlens_q[b]:cu_seqlens_q[b + 1]``.
        k_cache: Key cache ``[num_blocks, block_size, num_kv_heads, head_dim]``.
        v_cache: Value cache, same layout.
        cu_seqlens_q: ``[B + 1]`` cumulative query counts, starting at 0.
        seq_lens: ``[B]`` total KV length of each sequence after this step (new tokens included).
        block_tables: ``[B, max_blocks_per_seq]`` physical block ids (padding ``-1``).
        scale: Softmax scale; ``1 / sqrt(head_dim)`` when ``None``.

    Returns:
        ``[total_q, num_heads, head_dim]`` in the dtype of ``q``.
    """
    block_size = k_cache.shape[1]
    k_slots = k_cache.reshape(-1, *k_cache.shape[2:])
    v_slots = v_cache.reshape(-1, *v_cache.shape[2:])
    out = torch.empty_like(q)
    starts = cu_seqlens_q.tolist()
    for b, seq_len in enumerate(seq_lens.tolist()):
        q_b = q[starts[b] : starts[b + 1]]  # [q_len, heads, d]
        q_len = q_b.shape[0]
        if q_len == 0:
            continue
        if not 0 < q_len <= seq_len:
            raise ValueError(f"sequence {b}: {q_len} queries but only {seq_len} KV positions")
        positions = torch.arange(seq_len, device=q.device)
        blocks = block_tables[b, positions // block_size].to(torch.long)
        slots = blocks * block_size + positions % block_size
        k_b = k_slots[slots].transpose(0, 1)  # [kv_heads, seq_len, d]
        v_b = v_slots[slots].transpose(0, 1)
        # The queries are the last q_len positions: query i sits at seq_len - q_len + i.
        query_pos = positions[seq_len - q_len :].view(q_len, 1)
        mask = positions.view(1, seq_len) <= query_pos  # [q_len, seq_len], True = attend
        o_b = F.scaled_dot_product_attention(
            q_b.transpose(0, 1), k_b, v_b, attn_mask=mask, scale=scale, enable_gqa=True
        )  # [heads, q_len, d]
        out[starts[b] : starts[b + 1]] = o_b.transpose(0, 1)
    return out
