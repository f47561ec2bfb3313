"""One entry point per paged-KV operation, choosing flash-attn, Triton or the torch reference.

Backends, best first: ``"flash_attn"`` (flash-attn 2's ``flash_attn_varlen_func`` with ``block_table``; CUDA,
fp16/bf16, page size a multiple of 256), ``"triton"`` (the unified kernel in :mod:`.triton_attention`; CUDA, or
any device under ``TRITON_INTERPRET=1``), ``"torch"`` (:mod:`.reference`; any device). The Triton and flash-attn
modules are imported lazily so that importing this package never needs either.
"""

from __future__ import annotations

import functools
import importlib

import torch
import torch.nn.functional as F
from torch import Tensor

from .reference import paged_attention_torch, store_kv_torch

BACKENDS = ("flash_attn", "triton", "torch")

# flash-attn 2 rejects paged caches whose page size is not a multiple of 256 ("Paged KV cache block size
# must be divisible by 256").
FLASH_ATTN_PAGE_MULTIPLE = 256


@functools.cache
def _importable(module: str) -> bool:
    # A full import, not importlib.util.find_spec: a wheel built against another torch/CUDA is present but
    # fails to load, and that must count as absent.
    try:
        importlib.import_module(module)
    except Exception:  # any failure to load means "not usable here"
        return False
    return True


def select_backend(device: torch.device | str) -> str:
    """The best attention backend usable on ``device`` (ignoring shape constraints; see :func:`paged_attention`).

    Returns:
        ``"flash_attn"`` on CUDA with flash-attn importable, else ``"triton"`` on CUDA with Triton importable,
        else ``"torch"``.
    """
    if torch.device(device).type == "cuda":
        if _importable("flash_attn"):
            return "flash_attn"
        if _importable("triton"):
            return "triton"
    return "torch"


def flash_attn_supports(q: Tensor, k_cache: Tensor) -> bool:
    """Whether flash-attn 2's paged varlen kernel accepts these tensors."""
    head_dim = q.shape[-1]
    return (
        q.is_cuda
        and q.dtype in (torch.float16, torch.bfloat16)
        and k_cache.dtype == q.dtype
        and k_cache.shape[1] % FLASH_ATTN_PAGE_MULTIPLE == 0
        and head_dim % 8 == 0
        and head_dim <= 256
        and q.stride(-1) == 1
        and k_cache.stride(-1) == 1
    )


def paged_attention(
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
    backend: str | None = None,
) -> Tensor:
    """Causal paged attention over a varlen batch of prefill chunks and decode tokens.

    Semantics are those of :func:`voxcpm_engine.kernels.reference.paged_attention_torch`.

    Args:
        q: Packed queries ``[total_q, num_heads, head_dim]``.
        k_cache: Key cache ``[num_blocks, block_size, num_kv_heads, head_dim]``.
        v_cache: Value cache, same layout.
        cu_seqlens_q: ``[B + 1]`` cumulative query counts (int32 preferred).
        seq_lens: ``[B]`` KV length of each sequence after this step (int32 preferred).
        block_tables: ``[B, max_blocks_per_seq]`` int32 physical block ids (padding ``-1``).
        scale: Softmax scale; ``1 / sqrt(head_dim)`` when ``None``.
        max_seqlen_q: Longest query run, if known on the host. flash-attn needs it (computed with a device
            sync when ``None``); Triton uses it to pick the decode tile and split-KV (``1``).
        max_seqlen_k: Longest ``seq_lens`` entry, if known on the host. flash-attn needs it (synced when
            ``None``); Triton uses it to bound the split-KV factor.
        backend: ``None`` picks :func:`select_backend` and falls back from flash-attn to Triton when
            flash-attn's constraints do not hold; an explicit name is used as is (raising if unsupported).

    Returns:
        ``[total_q, num_heads, head_dim]`` in the dtype of ``q``.

    Raises:
        ValueError: Unknown backend, or ``"flash_attn"`` requested for tensors it does not support.
    """
    explicit = backend is not None
    backend = select_backend(q.device) if backend is None else backend
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; expected one of {BACKENDS}")
    if backend == "flash_attn" and not flash_attn_supports(q, k_cache):
        if explicit:
            raise ValueError(
                f"flash_attn does not support dtype {q.dtype}, head_dim {q.shape[-1]}, page size "
                f"{k_cache.shape[1]} (needs fp16/bf16 on CUDA, page size % {FLASH_ATTN_PAGE_MULTIPLE} == 0)"
            )
        backend = "triton" if _importable("triton") else "torch"

    args = dict(cu_seqlens_q=cu_seqlens_q, seq_lens=seq_lens, block_tables=block_tables, scale=scale)
    if backend == "torch":
        return paged_attention_torch(q, k_cache, v_cache, **args)
    if backend == "triton":
        from .triton_attention import paged_attention_triton

        return paged_attention_triton(q, k_cache, v_cache, **args, max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k)
    return _paged_attention_flash(q, k_cache, v_cache, **args, max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k)


def _paged_attention_flash(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    *,
    cu_seqlens_q: Tensor,
    seq_lens: Tensor,
    block_tables: Tensor,
    scale: float | None,
    max_seqlen_q: int | None,
    max_seqlen_k: int | None,
) -> Tensor:
    from flash_attn import flash_attn_varlen_func

    # Our layouts are flash-attn's own (varlen q [total_q, H, D], paged cache [blocks, page, Hk, D]); only the
    # key side is described differently: cumulative lengths instead of lengths.
    cu_seqlens_q = cu_seqlens_q.to(torch.int32)
    cu_seqlens_k = F.pad(torch.cumsum(seq_lens, 0, dtype=torch.int32), (1, 0))
    if max_seqlen_q is None:
        max_seqlen_q = int((cu_seqlens_q[1:] - cu_seqlens_q[:-1]).max())
    if max_seqlen_k is None:
        max_seqlen_k = int(seq_lens.max())
    # causal=True with seqlen_q < seqlen_k aligns the mask bottom-right (flash-attn >= 2.1): query i of a
    # sequence sees keys <= seqlen_k - seqlen_q + i, which is our "queries at the end" convention. The -1
    # padding is clamped because flash-attn only promises not to read entries past a sequence's length.
    return flash_attn_varlen_func(
        q,
        k_cache,
        v_cache,
        cu_seqlens_q=cu_seqlens_q,
        cu_seqlens_k=cu_seqlens_k,
        max_seqlen_q=max_seqlen_q,
        max_seqlen_k=max_seqlen_k,
        softmax_scale=scale,
        causal=True,
        block_table=block_tables.to(torch.int32).clamp_min(0),
    )


def store_kv(
    k: Tensor,
    v: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    slot_mapping: Tensor,
    *,
    backend: str | None = None,
) -> None:
    """Writes new K/V rows ``[N, num_kv_heads, head_dim]`` into their cache slots (``-1`` = skip), in place.

    Args:
        k: New keys ``[N, num_kv_heads, head_dim]``.
        v: New values ``[N, num_kv_heads, head_dim]``.
        k_cache: Key cache ``[num_blocks, block_size, num_kv_heads, head_dim]``.
        v_cache: Value cache, same layout.
        slot_mapping: ``[N]`` integer slot per row.
        backend: ``"triton"`` or ``"torch"``; ``None`` picks Triton on CUDA when importable, else torch.
    """
    if backend is None:
        backend = "triton" if k_cache.is_cuda and _importable("triton") else "torch"
    if backend == "torch":
        store_kv_torch(k, v, k_cache, v_cache, slot_mapping)
    elif backend == "triton":
        from .triton_store import store_kv_triton

        store_kv_triton(k, v, k_cache, v_cache, slot_mapping)
    else:
        raise ValueError(f"unknown store_kv backend {backend!r}; expected 'triton' or 'torch'")
