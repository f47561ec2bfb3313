"""Unified paged attention in Triton: prefill chunks and decode tokens of a varlen batch in one launch.

Host side: argument checks, the tile shape and split-KV choice, scratch buffers and the launches of the
kernels in :mod:`voxcpm_engine.kernels.triton_attention_kernels`.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
import triton
from torch import Tensor

from .triton_attention_kernels import combine_splits_kernel, paged_attention_kernel

# Scores are computed in base 2 (exp2 is a single instruction); the softmax scale absorbs 1 / ln 2.
_LOG2E = 1.4426950408889634
# Split-KV limits: at most 16 shares, none shorter than 256 keys (8 tiles), below which the combine costs
# more than the parallelism gains.
MAX_SPLITS = 16
MIN_KEYS_PER_SPLIT = 256

# The interpreter (TRITON_INTERPRET=1) keeps bf16 as raw uint16 and multiplies it as integers in tl.dot;
# there the tiles are upcast to fp32 first. Compiled kernels feed bf16 straight to the tensor cores.
_INTERPRETED = not isinstance(paged_attention_kernel, triton.runtime.JITFunction)


class TileConfig(NamedTuple):
    """Launch shape of :func:`paged_attention_kernel` (all powers of two)."""

    block_q: int  # query tokens per program
    group_pad: int  # rows per query token: the GQA group, padded
    block_n: int  # keys per inner-loop tile
    num_warps: int

    @property
    def block_m(self) -> int:
        return self.block_q * self.group_pad


def tile_config(group: int, head_dim: int, max_seqlen_q: int | None) -> TileConfig:
    """Picks the tile shape for a batch (no autotuning; chosen from sm_90 register counts without spills).

    A decode-only batch (``max_seqlen_q == 1``) gets one token per program, its group padded to the 16 rows
    tl.dot needs: a second token per program would always be empty. Batches with prefill chunks get 64 rows
    (8 tokens x 8 heads for VoxCPM), so a chunk of 512 tokens is 64 programs per KV head.

    Args:
        group: Query heads per KV head.
        head_dim: Width of one head.
        max_seqlen_q: Longest query run in the batch; ``None`` if unknown (treated as prefill).
    """
    group_pad = triton.next_power_of_2(group)
    if max_seqlen_q == 1:
        return TileConfig(block_q=1, group_pad=max(16, group_pad), block_n=32, num_warps=4)
    block_m = max(64, group_pad)
    return TileConfig(
        block_q=block_m // group_pad, group_pad=group_pad, block_n=64 if head_dim <= 64 else 32, num_warps=8
    )


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def num_kv_splits(num_programs: int, device: torch.device, max_seqlen_k: int | None) -> int:
    """Split-KV factor for a decode batch of ``num_programs`` (sequences x KV heads) programs.

    Aims at two programs per SM, capped by :data:`MAX_SPLITS` and by :data:`MIN_KEYS_PER_SPLIT` keys per share
    of the longest sequence when it is known. Always 1 off CUDA (the interpreter gains nothing).
    """
    if device.type != "cuda":
        return 1
    target = 2 * _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    if num_programs * 2 > target:
        return 1
    splits = min(MAX_SPLITS, triton.next_power_of_2(-(-target // num_programs)))
    if max_seqlen_k is not None:
        splits = min(splits, 1 << max(0, (max_seqlen_k // MIN_KEYS_PER_SPLIT).bit_length() - 1))
    return splits


def paged_attention_triton(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    *,
    cu_seqlens_q: Tensor,
    seq_lens: Tensor,
    block_tables: Tensor,
    scale: float | None = None,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    num_splits: int | None = None,
) -> Tensor:
    """Causal paged attention over a varlen batch (see :func:`voxcpm_engine.kernels.paged_attention_torch`).

    Args:
        q: Packed queries ``[total_q, num_heads, head_dim]`` (last dim contiguous).
        k_cache: Key cache ``[num_blocks, block_size, num_kv_heads, head_dim]`` (last dim contiguous).
        v_cache: Value cache with the same shape and strides as ``k_cache``.
        cu_seqlens_q: ``[B + 1]`` int32 cumulative query counts.
        seq_lens: ``[B]`` int32 KV length of each sequence after this step.
        block_tables: ``[B, max_blocks_per_seq]`` int32 physical block ids (padding ``-1``).
        scale: Softmax scale; ``1 / sqrt(head_dim)`` when ``None``.
        max_seqlen_q: Longest query run, if known on the host; ``1`` selects the decode tile and split-KV.
        max_seqlen_k: Longest ``seq_lens`` entry, if known on the host; bounds the split-KV factor.
        num_splits: Split-KV factor (a power of two); ``None`` = :func:`num_kv_splits` for decode batches,
            1 otherwise. Any batch may be split; it is the same computation in a different order.

    Returns:
        ``[total_q, num_heads, head_dim]`` in the dtype of ``q``. Rows past ``cu_seqlens_q[-1]`` are undefined.
    """
    total_q, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    if num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} query heads are not a multiple of {num_kv_heads} KV heads")
    if k_cache.shape != v_cache.shape or k_cache.stride() != v_cache.stride():
        raise ValueError("k_cache and v_cache must have the same shape and strides")
    if q.stride(2) != 1 or k_cache.stride(3) != 1:
        raise ValueError("q and the caches need a contiguous last dim")
    if q.dtype != k_cache.dtype or k_cache.dtype != v_cache.dtype:
        raise ValueError(f"dtype mismatch: q {q.dtype}, k_cache {k_cache.dtype}, v_cache {v_cache.dtype}")
    # The kernel indexes with int32; converting here is a no-op for callers that already pass int32.
    cu_seqlens_q = cu_seqlens_q.to(torch.int32)
    seq_lens = seq_lens.to(torch.int32)
    block_tables = block_tables.to(torch.int32).contiguous()
    group = num_heads // num_kv_heads
    num_seqs = seq_lens.shape[0]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale

    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if total_q == 0 or num_seqs == 0:
        return out
    tile = tile_config(group, head_dim, max_seqlen_q)
    if num_splits is None:
        num_splits = num_kv_splits(num_seqs * num_kv_heads, q.device, max_seqlen_k) if max_seqlen_q == 1 else 1
    if num_splits < 1 or num_splits & (num_splits - 1):
        raise ValueError(f"num_splits must be a power of two, got {num_splits}")
    head_dim_pad = max(16, triton.next_power_of_2(head_dim))
    if num_splits == 1:
        part_out = part_lse = out  # unused by the kernel, any tensor will do
    else:
        part_out = torch.empty(total_q, num_heads, num_splits, head_dim_pad, device=q.device, dtype=torch.float32)
        part_lse = torch.empty(total_q, num_heads, num_splits, device=q.device, dtype=torch.float32)

    grid = (total_q // tile.block_q + num_seqs, num_kv_heads, num_splits)
    paged_attention_kernel[grid](
        q,
        k_cache,
        v_cache,
        out,
        part_out,
        part_lse,
        cu_seqlens_q,
        seq_lens,
        block_tables,
        num_seqs,
        num_heads,
        scale * _LOG2E,
        q.stride(0),
        q.stride(1),
        out.stride(0),
        out.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        block_tables.stride(0),
        GROUP=group,
        GROUP_PAD=tile.group_pad,
        HEAD_DIM=head_dim,
        HEAD_DIM_PAD=head_dim_pad,
        BLOCK_SIZE=k_cache.shape[1],
        BLOCK_Q=tile.block_q,
        BLOCK_M=tile.block_m,
        BLOCK_N=tile.block_n,
        NUM_SPLITS=num_splits,
        UPCAST=_INTERPRETED and q.dtype != torch.float32,
        # fp32 caches are a debugging/test path: keep them exact rather than TF32.
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=tile.num_warps,
        num_stages=2,
    )
    if num_splits > 1:
        combine_splits_kernel[(total_q, num_heads)](
            part_out,
            part_lse,
            out,
            out.stride(0),
            out.stride(1),
            HEAD_DIM=head_dim,
            HEAD_DIM_PAD=head_dim_pad,
            NUM_SPLITS=num_splits,
            num_warps=1,
        )
    return out
