"""Paged K/V storage of one causal stack and the AttentionFn that reads and writes it for a batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from voxcpm_engine.config.engine_config import EngineConfig
from voxcpm_engine.config.model_config import LMConfig
from voxcpm_engine.io.checkpoint import LoadedCheckpoint
from voxcpm_engine.kernels import paged_attention, store_kv


class PagedKVCache:
    """``[layers, num_blocks, block_size, kv_heads, head_dim]`` keys and values of one stack.

    Zero-initialised: padded tails of blocks are masked out by every kernel, but zeros keep NaN
    garbage out of any masked-multiply path.
    """

    def __init__(
        self, cfg: LMConfig, num_blocks: int, block_size: int, *, dtype: torch.dtype, device: torch.device
    ) -> None:
        shape = (cfg.num_hidden_layers, num_blocks, block_size, cfg.num_key_value_heads, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    @property
    def nbytes(self) -> int:
        """Bytes held by the cache."""
        return self.k.nbytes + self.v.nbytes


def bytes_per_block(cfgs: list[LMConfig], block_size: int, dtype: torch.dtype) -> int:
    """Bytes one KV block costs across the given stacks (K and V, every layer)."""
    item = torch.empty((), dtype=dtype).element_size()
    return sum(2 * c.num_hidden_layers * block_size * c.num_key_value_heads * c.head_dim * item for c in cfgs)


def gpu_kv_blocks(
    cfgs: list[LMConfig],
    block_size: int,
    dtype: torch.dtype,
    device: torch.device,
    utilization: float,
    workspace_bytes: int,
    cap: int,
) -> int:
    """How many KV blocks fit in ``utilization`` of the GPU after what is already in use.

    Args:
        cfgs: The cached stacks.
        block_size: Positions per block.
        dtype: Cache dtype.
        device: The CUDA device (the model must already be loaded there).
        utilization: Share of the device's total memory the process may end up using.
        workspace_bytes: Kept free for activations of the largest step.
        cap: Most blocks worth having (more only grows the prefix cache).

    Raises:
        ValueError: Not even one block fits: lower the limits or raise ``gpu_memory_utilization``.
    """
    free, total = torch.cuda.mem_get_info(device)
    budget = int(total * utilization) - (total - free) - workspace_bytes
    per_block = bytes_per_block(cfgs, block_size, dtype)
    blocks = min(cap, budget // per_block)
    if blocks < 1:
        raise ValueError(
            f"gpu_memory_utilization {utilization}: no room for the KV cache ({budget / 2**30:.2f} GiB left after "
            f"the model and a {workspace_bytes / 2**30:.2f} GiB workspace; one block needs {per_block} bytes)"
        )
    return int(blocks)


def default_kv_blocks(checkpoint: LoadedCheckpoint, config: EngineConfig) -> int:
    """KV blocks when ``EngineConfig.num_kv_blocks`` is not given.

    CPU: enough for every running request at full length; GPU: what ``gpu_memory_utilization``
    leaves after the loaded model and a workspace for the widest step.
    """
    if checkpoint.device.type != "cuda":
        return config.default_cpu_blocks()
    cfg = checkpoint.config
    dtype = checkpoint.model.dtype
    # Workspace: activations of the widest step (token budget through the LMs, the DiT's CFG batch).
    hidden = max(cfg.lm.intermediate_size, cfg.dit.ffn_dim) * 4
    workspace = 2 * config.max_num_batched_tokens * hidden * torch.empty((), dtype=dtype).element_size()
    workspace += 1 << 30  # VAE decode of a full batch, allocator slack
    return gpu_kv_blocks(
        [cfg.base_lm_config(), cfg.residual_lm_config()],
        config.block_size,
        dtype,
        checkpoint.device,
        config.gpu_memory_utilization,
        workspace,
        cap=2 * config.default_cpu_blocks(),
    )


@dataclass
class BatchLayout:
    """Where one step's packed tokens live: per sequence a run of new positions.

    Attributes:
        positions: ``[N]`` absolute position of every packed token (RoPE).
        slot_mapping: ``[N]`` cache slot (block * block_size + offset) of every packed token.
        cu_seqlens_q: ``[B + 1]`` offsets of each sequence's tokens in the packed batch.
        seq_lens: ``[B]`` each sequence's K/V length after this step.
        block_tables: ``[B, max_blocks]`` (padded with -1).
        max_seqlen_q: Most new tokens of one sequence (known on the host: no device sync).
        max_seqlen_k: Longest K/V length after this step.
    """

    positions: Tensor
    slot_mapping: Tensor
    cu_seqlens_q: Tensor
    seq_lens: Tensor
    block_tables: Tensor
    max_seqlen_q: int
    max_seqlen_k: int

    @classmethod
    def build(cls, spans: list[tuple[int, int, list[int]]], block_size: int, device: torch.device) -> BatchLayout:
        """From ``(start, count, block_table)`` per sequence: ``count`` new positions from ``start``."""
        positions, slots, cu, lens = [], [], [0], []
        width = max(len(table) for _, _, table in spans)
        tables = []
        for start, count, table in spans:
            pos = list(range(start, start + count))
            positions.extend(pos)
            slots.extend(table[p // block_size] * block_size + p % block_size for p in pos)
            cu.append(cu[-1] + count)
            lens.append(start + count)
            tables.append(table + [-1] * (width - len(table)))

        def as_tensor(x: list, dtype: torch.dtype) -> Tensor:
            return torch.tensor(x, dtype=dtype).to(device, non_blocking=True)

        return cls(
            positions=as_tensor(positions, torch.long),
            slot_mapping=as_tensor(slots, torch.long),
            cu_seqlens_q=as_tensor(cu, torch.int32),
            seq_lens=as_tensor(lens, torch.int32),
            block_tables=as_tensor(tables, torch.int32),
            max_seqlen_q=max(count for _, count, _ in spans),
            max_seqlen_k=max(lens),
        )


class PagedAttention:
    """AttentionFn for a packed batch: store the new K/V in their slots, attend over each sequence's cache."""

    def __init__(self, cache: PagedKVCache, layout: BatchLayout, backend: str | None = None) -> None:
        self.cache, self.layout, self.backend = cache, layout, backend
        # store_kv has torch and Triton variants; a forced torch attention forces the torch store too.
        self.store_backend = "torch" if backend == "torch" else None

    def __call__(self, layer_idx: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        # The stacks hand over [B, heads, T, d] with the packed tokens in B-major order ([N, H, 1, d]
        # from the runner); the kernels take packed [N, heads, d].
        shape = q.shape
        q, k, v = (t.transpose(1, 2).reshape(-1, t.shape[1], t.shape[3]) for t in (q, k, v))
        k_cache, v_cache = self.cache.k[layer_idx], self.cache.v[layer_idx]
        store_kv(k, v, k_cache, v_cache, self.layout.slot_mapping, backend=self.store_backend)
        out = paged_attention(
            q,
            k_cache,
            v_cache,
            cu_seqlens_q=self.layout.cu_seqlens_q,
            seq_lens=self.layout.seq_lens,
            block_tables=self.layout.block_tables,
            max_seqlen_q=self.layout.max_seqlen_q,
            max_seqlen_k=self.layout.max_seqlen_k,
            backend=self.backend,
        )
        return out.view(shape[0], shape[2], shape[1], shape[3]).transpose(1, 2)
