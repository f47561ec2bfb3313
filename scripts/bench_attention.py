"""Decode-attention benchmark of the paged-KV backends on one CUDA device.

Times ``paged_attention`` for batches of single-token decodes over random, shuffled block tables with the
VoxCPM1.5 (16 heads / 2 KV heads / d 64) and VoxCPM2 (16 / 2 / d 128) attention shapes, and prints one row
per (shape, batch, context) with the time of each backend, Triton's speed-up over the torch reference and
Triton's achieved K/V read bandwidth. Every backend's output is checked against the reference first.
``triton-nosplit`` is the Triton kernel with split-KV turned off (to see what the split buys).

    python scripts/bench_attention.py                      # torch vs triton (+ no split), block size 16
    python scripts/bench_attention.py --backends torch,triton,flash_attn --block-size 256
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from voxcpm_engine.kernels import flash_attn_supports, paged_attention

SHAPES = {"voxcpm1.5": (16, 2, 64), "voxcpm2": (16, 2, 128)}


def make_decode_batch(
    batch: int, context: int, heads: int, kv_heads: int, head_dim: int, block_size: int, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """``batch`` sequences of ``context`` KV positions each, one new query per sequence, blocks shuffled."""
    blocks_per_seq = -(-context // block_size)
    num_blocks = batch * blocks_per_seq
    k_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim, device="cuda", dtype=dtype)
    return dict(
        q=torch.randn(batch, heads, head_dim, device="cuda", dtype=dtype),
        k_cache=k_cache,
        v_cache=torch.randn_like(k_cache),
        cu_seqlens_q=torch.arange(batch + 1, device="cuda", dtype=torch.int32),
        seq_lens=torch.full((batch,), context, device="cuda", dtype=torch.int32),
        block_tables=torch.randperm(num_blocks, device="cuda", dtype=torch.int32).view(batch, blocks_per_seq),
    )


def bench_case(
    backends: list[str], batch: int, context: int, shape: tuple[int, int, int], block_size: int, dtype: torch.dtype
) -> str:
    """One table row: times of each backend (ms), Triton's speed-up and bandwidth, the largest error."""
    import triton.testing

    from voxcpm_engine.kernels.triton_attention import paged_attention_triton

    heads, kv_heads, head_dim = shape
    inputs = make_decode_batch(batch, context, heads, kv_heads, head_dim, block_size, dtype)
    ref = paged_attention(**inputs, backend="torch")
    times, err = {}, 0.0
    for backend in backends:
        if backend == "flash_attn" and not flash_attn_supports(inputs["q"], inputs["k_cache"]):
            continue  # e.g. block size not a multiple of 256
        if backend == "triton-nosplit":
            step = functools.partial(paged_attention_triton, **inputs, max_seqlen_q=1, num_splits=1)
        else:
            step = functools.partial(paged_attention, **inputs, max_seqlen_q=1, max_seqlen_k=context, backend=backend)
        err = max(err, (step().float() - ref.float()).abs().max().item())
        times[backend] = triton.testing.do_bench(step, warmup=25, rep=100)
    speedup = times["torch"] / times["triton"] if {"torch", "triton"} <= times.keys() else float("nan")
    kv_bytes = 2 * batch * context * kv_heads * head_dim * inputs["k_cache"].element_size()
    bandwidth = kv_bytes / times["triton"] / 1e6 if "triton" in times else float("nan")
    cols = "".join(f"{times[b]:>18.4f}" if b in times else f"{'n/a':>18}" for b in backends)
    return f"{batch:>5}{context:>6}{cols}{speedup:>10.1f}{bandwidth:>13.0f}{err:>10.2e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    backends_help = "comma-separated: torch, triton, triton-nosplit, flash_attn"
    parser.add_argument("--backends", default="torch,triton,triton-nosplit", help=backends_help)
    parser.add_argument("--batches", default="1,16,64,128")
    parser.add_argument("--contexts", default="256,512,1024,2048")
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated of {list(SHAPES)}")
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_attention needs a CUDA device")

    backends = args.backends.split(",")
    dtype = getattr(torch, args.dtype)
    cols = "".join(f"{b + ' ms':>18}" for b in backends)
    print(f"{torch.cuda.get_device_name()}, {args.dtype}, block size {args.block_size}, decode (1 query/sequence)")
    print(f"{'shape':<10}{'B':>5}{'ctx':>6}{cols}{'triton x':>10}{'triton GB/s':>13}{'max err':>10}")
    for name in args.shapes.split(","):
        for batch in map(int, args.batches.split(",")):
            for context in map(int, args.contexts.split(",")):
                row = bench_case(backends, batch, context, SHAPES[name], args.block_size, dtype)
                print(f"{name:<10}{row}", flush=True)
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
