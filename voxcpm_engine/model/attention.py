"""The attention seam of the transformer stacks, and a per-request contiguous KV cache.

Every layer projects q/k/v, applies RoPE and hands them to an :class:`AttentionFn`; what happens
next (plain SDPA, writing a cache, later a paged cache with continuous batching and custom kernels)
is the caller's choice and invisible to the layers.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from voxcpm_engine.kernels.fused_limits import SHORT_ATTENTION_MAX


class AttentionFn(Protocol):
    """Computes attention for one layer.

    Args:
        layer_idx: Index of the calling layer inside its stack.
        q: Queries ``[B, heads, T, head_dim]`` (RoPE applied).
        k: Keys of the same ``T`` tokens, ``[B, kv_heads, T, head_dim]`` (RoPE applied).
        v: Values ``[B, kv_heads, T, head_dim]``.

    Returns:
        ``[B, heads, T, head_dim]``.
    """

    def __call__(self, layer_idx: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor: ...


def dense_attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool) -> Tensor:
    """SDPA over exactly the given keys, grouped-query by repeat-interleave (spec §4.1)."""
    return F.scaled_dot_product_attention(
        q.contiguous(), k.contiguous(), v.contiguous(), is_causal=causal, enable_gqa=True
    )


class DenseAttention:
    """Cache-less :class:`AttentionFn` (local encoder, DiT, or a causal pass without decoding).

    Args:
        causal: Causal mask.
        strided: The fused CUDA path: short bidirectional sequences (DiT, local encoder) go to
            :func:`voxcpm_engine.kernels.fused.short_attention`, others straight to SDPA as strided views;
            otherwise q/k/v are made contiguous first (the CPU path, whose bits depend on layout).
    """

    def __init__(self, causal: bool, *, strided: bool = False) -> None:
        self.causal = causal
        self.strided = strided

    def __call__(self, layer_idx: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if not self.strided:
            return dense_attention(q, k, v, causal=self.causal)
        if not self.causal and q.size(2) <= SHORT_ATTENTION_MAX:
            from voxcpm_engine.kernels.fused import short_attention  # the fused path only (needs Triton)

            return short_attention(q, k, v)
        gqa = q.size(1) != k.size(1)  # without GQA, SDPA may pick its fused kernels for any strides
        return F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, enable_gqa=gqa)


class KVCache:
    """Contiguous K/V storage of one causal stack for one request (or a fixed batch of them).

    Slots are positions: token ``p`` lives at slot ``p``. Storage is ``[layers, B, kv_heads,
    capacity, head_dim]`` and starts zeroed, because decode attention runs over all slots with a
    mask and masked slots must not hold NaN garbage.

    Args:
        num_layers: Layers of the stack.
        num_kv_heads: K/V heads per layer.
        head_dim: Width of one head.
        capacity: Number of slots (the reference uses ``max_length``).
        batch_size: Sequences decoded in lock-step.
        dtype: Storage dtype (the model dtype).
        device: Storage device.
    """

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        capacity: int,
        *,
        batch_size: int = 1,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        shape = (num_layers, batch_size, num_kv_heads, capacity, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.capacity = capacity
        self.length = 0

    def append(self, n: int) -> tuple[Tensor, AttentionFn]:
        """Reserve the next ``n`` slots for one forward pass of the stack.

        Returns:
            ``(positions [n], attention)``: the positions of the new tokens and the attention
            function that stores their K/V and attends over the cache.

        Raises:
            RuntimeError: When the cache has fewer than ``n`` free slots.
        """
        start = self.length
        if start + n > self.capacity:
            raise RuntimeError(f"KV cache is full ({start} + {n} tokens > capacity {self.capacity})")
        self.length = start + n
        positions = torch.arange(start, start + n, device=self.k.device)
        if start == 0:
            # First chunk: causal SDPA over the fresh keys only, exactly like the reference prefill.
            return positions, _PrefillAttention(self, n)
        # Later chunks attend over ALL slots with a mask, like the reference decode step; the
        # CPU kernels block/accumulate by key length, so slicing to the filled part would change
        # low-order bits.
        mask = torch.arange(self.capacity, device=self.k.device) <= positions.view(n, 1)
        return positions, _CachedAttention(self, start, mask.view(1, 1, n, self.capacity))


class _PrefillAttention:
    def __init__(self, cache: KVCache, n: int) -> None:
        self.cache, self.n = cache, n

    def __call__(self, layer_idx: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        self.cache.k[layer_idx, :, :, : self.n] = k
        self.cache.v[layer_idx, :, :, : self.n] = v
        return dense_attention(q, k, v, causal=True)


class _CachedAttention:
    def __init__(self, cache: KVCache, start: int, mask: Tensor) -> None:
        self.cache, self.start, self.mask = cache, start, mask

    def __call__(self, layer_idx: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        end = self.start + q.size(2)
        k_all, v_all = self.cache.k[layer_idx], self.cache.v[layer_idx]
        k_all[:, :, self.start : end] = k
        v_all[:, :, self.start : end] = v
        return F.scaled_dot_product_attention(q.contiguous(), k_all, v_all, attn_mask=self.mask, enable_gqa=True)
