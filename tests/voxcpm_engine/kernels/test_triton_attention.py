"""The Triton paged-attention kernel against the torch reference.

Without CUDA the kernel runs in Triton's interpreter on the CPU (``TRITON_INTERPRET=1``, set here before
Triton is imported; it must be set before the kernel module is imported because ``@triton.jit`` reads it
at decoration time). With CUDA the same tests run the compiled kernel, and the ``gpu`` tests add larger
bf16 shapes. Skipped when Triton is not installed.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from voxcpm_engine.kernels import paged_attention, paged_attention_torch, triton_attention
from voxcpm_engine.kernels.triton_attention import num_kv_splits, paged_attention_triton, tile_config

from .paged_batch import dense_truth, make_batch, max_error

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and triton_attention._INTERPRETED is False:
    # Someone imported the kernels before TRITON_INTERPRET was set: they are compiled and cannot run on CPU.
    pytest.skip("Triton kernels were imported without TRITON_INTERPRET=1", allow_module_level=True)
# Errors are absolute below 1 and relative above (see max_error). fp32: op-order noise (IEEE dots on GPU;
# measured 1.4e-6 in the interpreter). bf16: both sides round the output to bf16; the interpreter truncates
# fp32 -> bf16 instead of rounding (a full ulp, 2^-7: measured 7.8e-3), and on GPU the kernel rounds P to
# bf16 before P @ V, as flash-attn does.
TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 2e-2}
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# (num_heads, num_kv_heads, head_dim): VoxCPM's 8-way grouping at both head widths, a 3-way group
# (padded to 4 rows), 2-way, plain multi-head attention, and a head width that is not a power of two.
SHAPES = [(16, 2, 64), (16, 2, 128), (6, 2, 32), (4, 2, 32), (4, 1, 16), (2, 2, 16), (4, 2, 24)]


def _check(batch, dtype, *, max_seqlen_q=None, num_splits=None):
    out = paged_attention_triton(
        batch.q, batch.k_cache, batch.v_cache, **batch.kwargs(), max_seqlen_q=max_seqlen_q, num_splits=num_splits
    )
    ref = paged_attention_torch(batch.q, batch.k_cache, batch.v_cache, **batch.kwargs())
    assert out.shape == ref.shape and out.dtype == dtype
    assert torch.isfinite(out).all()
    assert max_error(out, ref) < TOLERANCE[dtype]
    if dtype == torch.float32:
        assert max_error(out, dense_truth(batch)) < TOLERANCE[dtype]
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("num_heads", "num_kv_heads", "head_dim"), SHAPES)
def test_mixed_batch_matches_reference(num_heads, num_kv_heads, head_dim, dtype):
    batch = make_batch(num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim, dtype=dtype, device=DEVICE)
    _check(batch, dtype, max_seqlen_q=batch.max_seqlen_q)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_decode_tile_matches_reference(head_dim, dtype):
    seq_lens = (1, 16, 17, 40, 90)
    batch = make_batch(seq_lens, (1,) * 5, num_heads=16, num_kv_heads=2, head_dim=head_dim, dtype=dtype, device=DEVICE)
    assert tile_config(8, head_dim, 1).block_q == 1
    decode = _check(batch, dtype, max_seqlen_q=1)
    # Without the hint the prefill tile runs; both must agree (to rounding of the bf16 P @ V on GPU).
    assert max_error(decode, _check(batch, dtype, max_seqlen_q=None)) < TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_splits", [2, 8])
def test_split_kv_matches_reference(num_splits, dtype):
    # Mixed batch: short sequences leave some shares empty, prefill rows see nothing in later shares.
    # (The combine runs one program per query row and head: kept small for the interpreter.)
    batch = make_batch(
        (20, 50, 1, 17), (20, 3, 1, 1), num_heads=4, num_kv_heads=2, head_dim=32, dtype=dtype, device=DEVICE
    )
    _check(batch, dtype, max_seqlen_q=batch.max_seqlen_q, num_splits=num_splits)
    decode = make_batch((90, 1, 33), (1, 1, 1), num_heads=16, num_kv_heads=2, head_dim=64, dtype=dtype, device=DEVICE)
    _check(decode, dtype, max_seqlen_q=1, num_splits=num_splits)


def test_split_kv_heuristic(monkeypatch):
    assert num_kv_splits(2, torch.device("cpu"), 2048) == 1  # never off CUDA
    monkeypatch.setattr(triton_attention, "_sm_count", lambda index: 132)
    cuda = torch.device("cuda", 0)
    assert num_kv_splits(2, cuda, None) == 16  # B=1 x 2 KV heads: as many shares as allowed
    assert num_kv_splits(2, cuda, 2048) == 8  # ... but none under 256 keys
    assert num_kv_splits(2, cuda, 300) == 1
    assert num_kv_splits(128, cuda, 2048) == 4  # B=64: 4 x 128 programs fill 132 SMs twice
    assert num_kv_splits(256, cuda, 2048) == 1  # B=128: enough programs already
    with pytest.raises(ValueError, match="power of two"):
        batch = make_batch((4,), (1,), num_heads=2, num_kv_heads=1, head_dim=16, device=DEVICE)
        paged_attention_triton(batch.q, batch.k_cache, batch.v_cache, **batch.kwargs(), num_splits=3)


@pytest.mark.parametrize("block_size", [1, 3, 16, 32])
def test_any_block_size(block_size):
    batch = make_batch(num_heads=4, num_kv_heads=2, head_dim=32, block_size=block_size, device=DEVICE, seed=1)
    _check(batch, torch.float32)


@pytest.mark.parametrize(
    ("seq_lens", "q_lens"),
    [((70,), (70,)), ((5, 33, 70), (5, 33, 70)), ((40, 90), (24, 2)), ((9, 9, 9), (8, 1, 9))],
    ids=["one-prefill", "prefills", "chunks", "block-edges"],
)
def test_batch_kinds(seq_lens, q_lens):
    # group 8 -> 8 tokens per prefill program: 70 queries span 9 programs, 8 and 9 hit the edges.
    batch = make_batch(seq_lens, q_lens, num_heads=16, num_kv_heads=2, head_dim=16, device=DEVICE, seed=2)
    _check(batch, torch.float32)


def test_custom_scale_and_int64_metadata():
    batch = make_batch(num_heads=4, num_kv_heads=1, head_dim=32, device=DEVICE, seed=3)
    kwargs = {name: t.long() for name, t in batch.kwargs().items()}
    out = paged_attention_triton(batch.q, batch.k_cache, batch.v_cache, **kwargs, scale=0.05)
    assert max_error(out, dense_truth(batch, scale=0.05)) < 2e-5


def test_strided_queries():
    # q sliced out of a fused projection: rows are not contiguous, the head dim is.
    batch = make_batch(num_heads=4, num_kv_heads=2, head_dim=16, device=DEVICE, seed=5)
    fused = torch.cat([batch.q, torch.randn_like(batch.q)], dim=1)
    out = paged_attention_triton(fused[:, :4], batch.k_cache, batch.v_cache, **batch.kwargs())
    assert max_error(out, paged_attention_torch(batch.q, batch.k_cache, batch.v_cache, **batch.kwargs())) < 2e-5


def test_dispatch_runs_triton_when_asked():
    batch = make_batch(num_heads=4, num_kv_heads=2, head_dim=16, device=DEVICE, seed=6)
    out = paged_attention(batch.q, batch.k_cache, batch.v_cache, **batch.kwargs(), backend="triton")
    assert max_error(out, dense_truth(batch)) < 2e-5


# ---- compiled kernel, larger shapes (CUDA only) --------------------------------------------------------------


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("head_dim", [64, 128])
def test_gpu_decode_batch_bf16(head_dim):
    gen = torch.Generator().manual_seed(7)
    seq_lens = tuple(torch.randint(1, 2049, (64,), generator=gen).tolist())
    batch = make_batch(
        seq_lens, (1,) * 64, num_heads=16, num_kv_heads=2, head_dim=head_dim, dtype=torch.bfloat16, device="cuda"
    )
    _check(batch, torch.bfloat16, max_seqlen_q=1)  # split-KV by the heuristic
    _check(batch, torch.bfloat16, max_seqlen_q=1, num_splits=1)
    _check(batch, torch.bfloat16)  # prefill tile


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("head_dim", [64, 128])
def test_gpu_mixed_batch_bf16(head_dim):
    seq_lens = (1000, 1500, 700, 2048, 33, 256, 1)
    q_lens = (1000, 256, 1, 1, 1, 1, 1)
    batch = make_batch(
        seq_lens, q_lens, num_heads=16, num_kv_heads=2, head_dim=head_dim, dtype=torch.bfloat16, device="cuda"
    )
    _check(batch, torch.bfloat16, max_seqlen_q=1000)


@pytest.mark.gpu
@gpu
def test_gpu_flash_attn_backend_if_installed():
    pytest.importorskip("flash_attn")
    seq_lens, q_lens = (700, 300, 1025), (700, 1, 25)
    batch = make_batch(
        seq_lens,
        q_lens,
        num_heads=16,
        num_kv_heads=2,
        head_dim=128,
        block_size=256,
        dtype=torch.bfloat16,
        device="cuda",
    )
    out = paged_attention(batch.q, batch.k_cache, batch.v_cache, **batch.kwargs(), backend="flash_attn")
    ref = paged_attention_torch(batch.q, batch.k_cache, batch.v_cache, **batch.kwargs())
    assert max_error(out, ref) < TOLERANCE[torch.bfloat16]
