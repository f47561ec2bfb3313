"""The Triton store_kv kernel against the torch reference (bit exact).

Runs in Triton's interpreter without CUDA (``TRITON_INTERPRET=1`` is set here before the kernel module is
imported), compiled with CUDA. Skipped when Triton is not installed.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

import triton

from voxcpm_engine.kernels import store_kv, store_kv_torch, triton_store
from voxcpm_engine.kernels.triton_store import store_kv_triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and isinstance(triton_store._store_kv_kernel, triton.runtime.JITFunction):
    # Someone imported the kernel before TRITON_INTERPRET was set: it is compiled and cannot run on CPU.
    pytest.skip("Triton kernels were imported without TRITON_INTERPRET=1", allow_module_level=True)


def _caches(num_blocks, block_size, kv_heads, head_dim, dtype):
    k_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim).to(dtype=dtype, device=DEVICE)
    return k_cache, torch.randn_like(k_cache)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("kv_heads", "head_dim", "block_size"), [(2, 64, 16), (2, 128, 16), (1, 16, 3), (3, 32, 5)])
def test_matches_reference_bit_for_bit(kv_heads, head_dim, block_size, dtype):
    gen = torch.Generator().manual_seed(0)
    k_cache, v_cache = _caches(7, block_size, kv_heads, head_dim, dtype)
    num_slots = 7 * block_size
    slots = torch.randperm(num_slots, generator=gen)[:9]
    slots[[2, 5]] = -1  # padding rows
    k, v = torch.randn(2, 9, kv_heads, head_dim, generator=gen).to(dtype=dtype, device=DEVICE)

    expected_k, expected_v = k_cache.clone(), v_cache.clone()
    store_kv_torch(k, v, expected_k, expected_v, slots.to(DEVICE))
    store_kv_triton(k, v, k_cache, v_cache, slots.to(DEVICE))
    assert torch.equal(k_cache, expected_k) and torch.equal(v_cache, expected_v)


def test_strided_inputs_and_dtype_cast():
    # K and V sliced out of a fused qkv projection (strided rows), written into a bf16 cache from fp32.
    k_cache, v_cache = _caches(4, 8, 2, 16, torch.bfloat16)
    qkv = torch.randn(5, 8, 16, device=DEVICE)
    k, v = qkv[:, 4:6], qkv[:, 6:8]
    slots = torch.tensor([3, 31, -1, 0, 17], device=DEVICE)
    expected_k, expected_v = k_cache.clone(), v_cache.clone()
    store_kv_torch(k, v, expected_k, expected_v, slots)
    store_kv(k, v, k_cache, v_cache, slots, backend="triton")
    assert torch.equal(k_cache, expected_k) and torch.equal(v_cache, expected_v)


def test_transposed_inputs():
    # What the model's attention seam hands over: [1, kv_heads, N, d] per layer, transposed to [N, kv_heads, d].
    k_cache, v_cache = _caches(4, 8, 2, 16, torch.float32)
    k, v = (torch.randn(1, 2, 6, 16, device=DEVICE)[0].transpose(0, 1) for _ in range(2))
    slots = torch.tensor([5, 6, 7, 8, -1, 30], device=DEVICE)
    expected_k, expected_v = k_cache.clone(), v_cache.clone()
    store_kv_torch(k, v, expected_k, expected_v, slots)
    store_kv_triton(k, v, k_cache, v_cache, slots)
    assert torch.equal(k_cache, expected_k) and torch.equal(v_cache, expected_v)


def test_empty_batch_is_a_no_op():
    k_cache, v_cache = _caches(2, 4, 1, 16, torch.float32)
    before = k_cache.clone()
    empty = torch.empty(0, 1, 16, device=DEVICE)
    store_kv_triton(empty, empty, k_cache, v_cache, torch.empty(0, dtype=torch.long, device=DEVICE))
    assert torch.equal(k_cache, before)
