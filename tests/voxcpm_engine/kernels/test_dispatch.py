"""Tests of voxcpm_engine.kernels.dispatch: choosing the attention / store_kv backend (CPU; no Triton needed)."""

from __future__ import annotations

import pytest
import torch

from voxcpm_engine.kernels import BACKENDS, paged_attention, paged_attention_torch, select_backend, store_kv
from voxcpm_engine.kernels.dispatch import flash_attn_supports

from .paged_batch import make_batch


def test_select_backend_on_cpu_is_torch():
    assert select_backend("cpu") == "torch" and select_backend(torch.device("cpu")) == "torch"
    assert set(BACKENDS) == {"flash_attn", "triton", "torch"}


def test_dispatch_defaults_to_the_reference_on_cpu():
    batch = make_batch(num_heads=4, num_kv_heads=2, head_dim=16, seed=4)
    args = (batch.q, batch.k_cache, batch.v_cache)
    expected = paged_attention_torch(*args, **batch.kwargs())
    assert torch.equal(paged_attention(*args, **batch.kwargs()), expected)
    assert torch.equal(paged_attention(*args, **batch.kwargs(), backend="torch"), expected)


def test_dispatch_rejects_unknown_or_unsupported_backends():
    batch = make_batch((4,), (4,), num_heads=2, num_kv_heads=1, head_dim=16)
    with pytest.raises(ValueError, match="unknown"):
        paged_attention(batch.q, batch.k_cache, batch.v_cache, **batch.kwargs(), backend="xformers")
    with pytest.raises(ValueError, match="flash_attn does not support"):  # CPU, fp32, page size 16
        paged_attention(batch.q, batch.k_cache, batch.v_cache, **batch.kwargs(), backend="flash_attn")
    with pytest.raises(ValueError, match="unknown"):
        store_kv(batch.k_seq[0], batch.v_seq[0], batch.k_cache, batch.v_cache, torch.arange(4), backend="flash_attn")


def test_store_kv_dispatch_uses_the_reference_on_cpu():
    k_cache = torch.zeros(2, 4, 1, 8)
    v_cache = torch.zeros_like(k_cache)
    k, v = torch.randn(2, 3, 1, 8)
    store_kv(k, v, k_cache, v_cache, torch.tensor([7, 1, -1]))
    assert torch.equal(k_cache.view(-1, 1, 8)[[7, 1]], k[:2]) and torch.equal(v_cache.view(-1, 1, 8)[[7, 1]], v[:2])


def test_flash_attn_is_never_chosen_for_cpu_tensors():
    q = torch.zeros(3, 4, 64, dtype=torch.bfloat16)
    cache = torch.zeros(2, 256, 2, 64, dtype=torch.bfloat16)  # the shape flash-attn wants, but on the CPU
    assert not flash_attn_supports(q, cache)
