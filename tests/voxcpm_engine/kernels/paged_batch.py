"""Random paged-KV batches and a dense ground truth, shared by the kernel tests.

A batch is built from contiguous per-sequence K/V/Q ("what the model computed"), then scattered into a cache
whose physical blocks are shuffled and whose unused slots hold NaN, so that any kernel reading a slot it
should not read poisons its output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from voxcpm_engine.kernels.reference import store_kv_torch

# One whole prefill, one chunked-prefill continuation (13 new tokens after 37 cached), decodes of
# assorted lengths (a first-token decode, one exactly at a block boundary of 16, others not).
MIXED_SEQ_LENS = (37, 50, 1, 17, 64, 9)
MIXED_Q_LENS = (37, 13, 1, 1, 1, 1)


@dataclass
class PagedBatch:
    q: Tensor  # [total_q, heads, d]
    k_cache: Tensor  # [blocks, block_size, kv_heads, d]
    v_cache: Tensor
    cu_seqlens_q: Tensor  # [B + 1] int32
    seq_lens: Tensor  # [B] int32
    block_tables: Tensor  # [B, max_blocks] int32, -1 padded
    q_full: list[Tensor]  # per sequence [seq_len, heads, d]: queries of every position (the dense truth)
    k_seq: list[Tensor]  # per sequence [seq_len, kv_heads, d]
    v_seq: list[Tensor]

    @property
    def max_seqlen_q(self) -> int:
        return int((self.cu_seqlens_q[1:] - self.cu_seqlens_q[:-1]).max())

    def kwargs(self) -> dict[str, Tensor]:
        return dict(cu_seqlens_q=self.cu_seqlens_q, seq_lens=self.seq_lens, block_tables=self.block_tables)


def make_batch(
    seq_lens: tuple[int, ...] = MIXED_SEQ_LENS,
    q_lens: tuple[int, ...] = MIXED_Q_LENS,
    *,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int = 16,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    seed: int = 0,
    spare_blocks: int = 3,
) -> PagedBatch:
    """A batch whose sequence ``b`` has ``seq_lens[b]`` KV positions, the last ``q_lens[b]`` of them queried."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen).to(dtype=dtype, device=device)

    blocks_per_seq = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(blocks_per_seq) + spare_blocks
    physical = torch.randperm(num_blocks, generator=gen).tolist()
    block_tables = torch.full((len(seq_lens), max(blocks_per_seq) + 2), -1, dtype=torch.int32)
    k_cache = torch.full((num_blocks, block_size, num_kv_heads, head_dim), float("nan"), dtype=dtype, device=device)
    v_cache = torch.full_like(k_cache, float("nan"))

    q_full, k_seq, v_seq, q_rows = [], [], [], []
    for b, (seq_len, q_len) in enumerate(zip(seq_lens, q_lens, strict=True)):
        n = blocks_per_seq[b]
        block_tables[b, :n] = torch.tensor(physical[:n], dtype=torch.int32)
        physical = physical[n:]
        q_full.append(randn(seq_len, num_heads, head_dim))
        k_seq.append(randn(seq_len, num_kv_heads, head_dim))
        v_seq.append(randn(seq_len, num_kv_heads, head_dim))
        q_rows.append(q_full[-1][seq_len - q_len :])
        positions = torch.arange(seq_len)
        slots = block_tables[b, positions // block_size].long() * block_size + positions % block_size
        store_kv_torch(k_seq[-1], v_seq[-1], k_cache, v_cache, slots.to(device))
    cu = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32, device=device)
    return PagedBatch(
        q=torch.cat(q_rows),
        k_cache=k_cache,
        v_cache=v_cache,
        cu_seqlens_q=cu,
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        block_tables=block_tables.to(device),
        q_full=q_full,
        k_seq=k_seq,
        v_seq=v_seq,
    )


def dense_truth(batch: PagedBatch, scale: float | None = None) -> Tensor:
    """Ground truth in float64: plain causal SDPA over each whole contiguous sequence, last rows kept.

    Independent of the paged path: no block tables, no offset mask (``is_causal`` over the full square).
    """
    outs = []
    for b, (q, k, v) in enumerate(zip(batch.q_full, batch.k_seq, batch.v_seq, strict=True)):
        q_len = int(batch.cu_seqlens_q[b + 1] - batch.cu_seqlens_q[b])
        o = F.scaled_dot_product_attention(
            *(t.double().cpu().transpose(0, 1) for t in (q, k, v)), is_causal=True, scale=scale, enable_gqa=True
        )
        outs.append(o.transpose(0, 1)[-q_len:])
    return torch.cat(outs)


def max_error(out: Tensor, truth: Tensor) -> float:
    """Largest difference, absolute where ``|truth| <= 1`` and relative above (float64, on the CPU).

    Relative above 1 because a bf16 ulp grows with the value: a decode over one position returns a value row
    as is, and randn values reach 4 and beyond.
    """
    truth = truth.double().cpu()
    return ((out.double().cpu() - truth).abs() / truth.abs().clamp_min(1.0)).max().item()
