"""Tests of voxcpm_engine.kernels.reference: the torch paged attention and store_kv (CPU; no Triton needed)."""

from __future__ import annotations

import pytest
import torch

from voxcpm_engine.kernels.reference import paged_attention_torch, store_kv_torch

from .paged_batch import dense_truth, make_batch, max_error

GQA = [(16, 2), (4, 2), (4, 1)]
HEAD_DIMS = [16, 32, 64, 128]
# Errors are absolute below 1 and relative above (see max_error). fp32: op-order noise only (measured
# 1.2e-6). bf16: the truth uses the same bf16-rounded inputs, so the gap is the output rounding, half a
# bf16 ulp = 2^-8 relative (measured 3.9e-3).
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize(("num_heads", "num_kv_heads"), GQA)
def test_reference_matches_dense_sdpa(num_heads, num_kv_heads, head_dim, dtype):
    batch = make_batch(num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim, dtype=dtype)
    out = paged_attention_torch(batch.q, batch.k_cache, batch.v_cache, **batch.kwargs())
    assert out.shape == batch.q.shape and out.dtype == dtype
    assert max_error(out, dense_truth(batch)) < TOLERANCE[dtype]


@pytest.mark.parametrize("block_size", [1, 3, 16, 64])
def test_reference_any_block_size(block_size):
    batch = make_batch(num_heads=4, num_kv_heads=2, head_dim=32, block_size=block_size, seed=1)
    out = paged_attention_torch(batch.q, batch.k_cache, batch.v_cache, **batch.kwargs())
    assert max_error(out, dense_truth(batch)) < 1e-5


@pytest.mark.parametrize(
    ("seq_lens", "q_lens"),
    [((40,), (40,)), ((5, 33, 70), (5, 33, 70)), ((40, 7, 90), (1, 1, 1)), ((40, 90), (24, 2))],
    ids=["one-prefill", "prefills", "decodes", "chunks"],
)
def test_reference_batch_kinds(seq_lens, q_lens):
    batch = make_batch(seq_lens, q_lens, num_heads=4, num_kv_heads=2, head_dim=16, seed=2)
    out = paged_attention_torch(batch.q, batch.k_cache, batch.v_cache, **batch.kwargs())
    assert max_error(out, dense_truth(batch)) < 1e-5


def test_reference_custom_scale():
    batch = make_batch(num_heads=4, num_kv_heads=1, head_dim=32, seed=3)
    out = paged_attention_torch(batch.q, batch.k_cache, batch.v_cache, **batch.kwargs(), scale=0.05)
    assert max_error(out, dense_truth(batch, scale=0.05)) < 1e-5


def test_reference_rejects_more_queries_than_keys():
    batch = make_batch((8,), (8,), num_heads=2, num_kv_heads=1, head_dim=16)
    with pytest.raises(ValueError, match="queries"):
        paged_attention_torch(
            batch.q,
            batch.k_cache,
            batch.v_cache,
            cu_seqlens_q=batch.cu_seqlens_q,
            seq_lens=batch.seq_lens - 1,
            block_tables=batch.block_tables,
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_store_kv_round_trip(dtype):
    num_blocks, block_size, kv_heads, head_dim = 6, 4, 2, 8
    k_cache = torch.zeros(num_blocks, block_size, kv_heads, head_dim, dtype=dtype)
    v_cache = torch.zeros_like(k_cache)
    k, v = torch.randn(2, 5, kv_heads, head_dim).to(dtype)
    slots = torch.tensor([9, -1, 0, 23, 14])  # row 1 is padding
    store_kv_torch(k, v, k_cache, v_cache, slots)

    k_flat, v_flat = k_cache.view(-1, kv_heads, head_dim), v_cache.view(-1, kv_heads, head_dim)
    for row, slot in enumerate(slots.tolist()):
        if slot >= 0:
            assert torch.equal(k_flat[slot], k[row]) and torch.equal(v_flat[slot], v[row])
    untouched = torch.ones(num_blocks * block_size, dtype=torch.bool)
    untouched[slots[slots >= 0]] = False
    assert not k_flat[untouched].any() and not v_flat[untouched].any()


def test_store_kv_rejects_mismatched_shapes():
    cache = torch.zeros(2, 4, 2, 8)
    with pytest.raises(ValueError, match="cache"):
        store_kv_torch(torch.zeros(3, 1, 8), torch.zeros(3, 1, 8), cache, cache.clone(), torch.zeros(3))


def test_store_kv_refuses_a_cache_it_cannot_address_by_slot():
    # A transposed view cannot be flattened without a copy; writing into the copy would lose the data.
    cache = torch.zeros(4, 2, 2, 8).transpose(0, 1)
    with pytest.raises(RuntimeError):
        store_kv_torch(torch.zeros(1, 2, 8), torch.zeros(1, 2, 8), cache, cache.clone(), torch.zeros(1))
