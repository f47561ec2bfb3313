"""Decode step time with and without CUDA graphs, on full-size random-weight checkpoints.

Usage (GPU machine, repo root): python3 scripts/bench_decode_graphs.py [--presets voxcpm1.5 voxcpm2]
    [--batches 1 16 64 128] [--variants fused graphs eager] [--steps 40] [--json OUT.json]

For each preset, variant and batch size, B requests of ``--steps`` patches start together; the
figure is the median wall time of the steps in which every row decodes (the engine's own step:
LMs, sampler, VAE decode, outputs to the host). Variants: ``fused`` (CUDA graphs + the fused
Triton kernels, VAE in true fp32), ``tf32`` (``fused`` + TF32 VAE convs: the default),
``graphs`` (graphs, op-by-op torch), ``eager`` (neither).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from voxcpm_engine.config.engine_config import EngineConfig
from voxcpm_engine.engine import Engine
from voxcpm_engine.io.checkpoint import load_checkpoint
from voxcpm_engine.tools.synthetic import write_checkpoint
from voxcpm_engine.types import GenerationParams


def decode_step_ms(engine: Engine, batch: int, steps: int) -> tuple[float, float]:
    """Median decode-step ms and audio seconds per wall second for ``batch`` requests of ``steps`` patches."""
    for i in range(batch):
        engine.add_request(
            f"r{i}",
            f"Request number {i} of the benchmark.",
            params=GenerationParams(min_steps=steps, max_steps=steps, seed=i),
        )
    times, start = [], time.perf_counter()
    while engine.has_unfinished():
        t0 = time.perf_counter()
        outs = engine.step()
        dt = time.perf_counter() - t0
        if len(outs) == batch and all(o.audio is not None for o in outs) and len(engine.scheduler.running) == batch:
            times.append(dt)
    wall = time.perf_counter() - start
    audio_s = batch * steps * engine.model_config.samples_per_patch / engine.sample_rate
    return statistics.median(times) * 1e3, audio_s / wall


VARIANTS = {
    "tf32": {},  # the default on CUDA: graphs + fused Triton kernels + the VAE's convolutions in TF32
    "fused": {"vae_tf32": False},  # graphs + fused kernels, VAE in true fp32
    "graphs": {"fused_kernels": False, "vae_tf32": False},  # graphs, op-by-op torch inside
    "eager": {"enforce_eager": True, "fused_kernels": False, "vae_tf32": False},  # neither
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["voxcpm1.5", "voxcpm2"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 16, 64, 128])
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["fused", "graphs", "eager"])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    results = []
    print("GPU:", torch.cuda.get_device_name(0), "torch", torch.__version__)
    for preset in args.presets:
        ckpt_dir = Path("/tmp/ckpt") / preset
        if not (ckpt_dir / "config.json").exists():
            write_checkpoint(preset, ckpt_dir, seed=0)
        max_b = max(args.batches)
        common = dict(max_num_seqs=max_b, max_num_batched_tokens=max(4096, max_b), max_model_len=512)
        blocks = max_b * 8  # 128 positions per request: prompt + steps
        for variant in args.variants:
            # One checkpoint per variant: the fused path regroups the model's weights in place.
            ckpt = load_checkpoint(ckpt_dir, device="cuda")
            t0 = time.perf_counter()
            engine = Engine(ckpt, EngineConfig(**common, num_kv_blocks=blocks, **VARIANTS[variant]))
            graphs = engine.runner.graphs
            built = f"{len(graphs.graphs)} graphs, capture {graphs.capture_s:.1f} s" if graphs else "eager"
            print(f"{preset} [{variant}]: engine built in {time.perf_counter() - t0:.1f} s ({built})", flush=True)
            decode_step_ms(engine, 4, 4)  # warm-up (allocator, autotune)
            for b in args.batches:
                ms, rate = decode_step_ms(engine, b, args.steps)
                results.append(dict(preset=preset, variant=variant, batch=b, step_ms=ms, audio_s_per_s=rate))
                print(f"  B={b:4d}  {variant:7s} step {ms:7.2f} ms   audio s/s {rate:7.1f}", flush=True)
            del engine, ckpt, graphs
            torch.cuda.empty_cache()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
