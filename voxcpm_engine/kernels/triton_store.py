"""Triton kernel that writes new K/V rows into their paged-cache slots (vLLM's ``reshape_and_cache_flash``)."""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from .reference import _check_store_args


@triton.jit
def _store_kv_kernel(
    k_ptr,
    v_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slot_mapping_ptr,
    stride_k_tok,
    stride_k_head,
    stride_v_tok,
    stride_v_head,
    stride_c_block,
    stride_c_slot,
    stride_c_head,
    HEAD_DIM: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_E: tl.constexpr,
):
    # One program per token: its whole [kv_heads, head_dim] row (at most 2 x 128 elements for VoxCPM).
    tok = tl.program_id(0)
    slot = tl.load(slot_mapping_ptr + tok).to(tl.int64)
    if slot < 0:
        return  # padding token
    offs = tl.arange(0, BLOCK_E)
    ok = offs < NUM_KV_HEADS * HEAD_DIM
    head = offs // HEAD_DIM
    d = offs % HEAD_DIM
    k_src = tok.to(tl.int64) * stride_k_tok + head * stride_k_head + d
    v_src = tok.to(tl.int64) * stride_v_tok + head * stride_v_head + d
    dst = (slot // BLOCK_SIZE) * stride_c_block + (slot % BLOCK_SIZE) * stride_c_slot + head * stride_c_head + d
    # Plain copies (no arithmetic): bit exact, and safe for bf16 under the interpreter too.
    tl.store(k_cache_ptr + dst, tl.load(k_ptr + k_src, mask=ok), mask=ok)
    tl.store(v_cache_ptr + dst, tl.load(v_ptr + v_src, mask=ok), mask=ok)


def store_kv_triton(k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor) -> None:
    """Writes new K/V rows into their cache slots (in place), without a host sync.

    Args:
        k: New keys ``[N, num_kv_heads, head_dim]`` (any strides); cast to the cache dtype if it differs.
        v: New values ``[N, num_kv_heads, head_dim]``.
        k_cache: Key cache ``[num_blocks, block_size, num_kv_heads, head_dim]`` (last dim contiguous).
        v_cache: Value cache with the same shape and strides as ``k_cache``.
        slot_mapping: ``[N]`` integer slot of each row; ``-1`` skips the row.
    """
    _check_store_args(k, v, k_cache, v_cache, slot_mapping)
    if k_cache.stride() != v_cache.stride() or k_cache.stride(3) != 1:
        raise ValueError("k_cache and v_cache need equal strides and a contiguous last dim")
    n, num_kv_heads, head_dim = k.shape
    if n == 0:
        return
    # Any token/head strides are fine (e.g. [1, heads, N, d] transposed to [N, heads, d]); only the head dim
    # must be contiguous, and a dtype other than the cache's is converted first (the copy is bit exact).
    k, v = (t.to(k_cache.dtype) if t.stride(2) == 1 else t.to(k_cache.dtype).contiguous() for t in (k, v))
    _store_kv_kernel[(n,)](
        k,
        v,
        k_cache,
        v_cache,
        slot_mapping,
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        HEAD_DIM=head_dim,
        NUM_KV_HEADS=num_kv_heads,
        BLOCK_SIZE=k_cache.shape[1],
        BLOCK_E=triton.next_power_of_2(num_kv_heads * head_dim),
        num_warps=1 if num_kv_heads * head_dim <= 256 else 4,
    )
