"""Decode step time with and without CUDA graphs, on full-size random-weight checkpoints.

Usage (GPU machine, repo root): python3 scripts/bench_decode_graphs.py [--presets voxcpm1.5 voxcpm2]
    [--batches 1 16 64 128] [--steps 40] [--json OUT.json]

For each preset and batch size, B requests of ``--steps`` patches start together in an engine with
CUDA graphs and in one with ``enforce_eager``; the figure is the median wall time of the steps in
which every row decodes (the engine's own step: LMs, sampler, VAE decode, outputs to the host).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from engine.engine import Engine
from engine.engine_config import EngineConfig
from engine.loader import load_checkpoint
from engine.pipeline import GenerationParams
from engine.synthetic import write_checkpoint


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["voxcpm1.5", "voxcpm2"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 16, 64, 128])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    results = []
    print("GPU:", torch.cuda.get_device_name(0), "torch", torch.__version__)
    for preset in args.presets:
        ckpt_dir = Path("/tmp/ckpt") / preset
        if not (ckpt_dir / "config.json").exists():
            write_checkpoint(preset, ckpt_dir, seed=0)
        ckpt = load_checkpoint(ckpt_dir, device="cuda")
        max_b = max(args.batches)
        common = dict(max_num_seqs=max_b, max_num_batched_tokens=max(4096, max_b), max_model_len=512)
        blocks = max_b * 8  # 128 positions per request: prompt + steps
        t0 = time.perf_counter()
        graphed = Engine(ckpt, EngineConfig(**common, num_kv_blocks=blocks))
        capture_s = time.perf_counter() - t0
        eager = Engine(ckpt, EngineConfig(**common, num_kv_blocks=blocks, enforce_eager=True))
        print(
            f"{preset}: engine with graphs built in {capture_s:.1f} s "
            f"({len(graphed.runner.graphs.graphs)} graphs, capture {graphed.runner.graphs.capture_s:.1f} s)"
        )
        for b in args.batches:
            decode_step_ms(eager, min(b, 4), 4)  # warm-up (allocator, autotune)
            decode_step_ms(graphed, min(b, 4), 4)
            e_ms, e_rate = decode_step_ms(eager, b, args.steps)
            g_ms, g_rate = decode_step_ms(graphed, b, args.steps)
            row = dict(
                preset=preset,
                batch=b,
                eager_ms=e_ms,
                graph_ms=g_ms,
                speedup=e_ms / g_ms,
                eager_audio_s_per_s=e_rate,
                graph_audio_s_per_s=g_rate,
            )
            results.append(row)
            print(
                f"  B={b:4d}  eager {e_ms:7.2f} ms  graphs {g_ms:7.2f} ms  x{e_ms / g_ms:4.2f}   "
                f"audio s/s eager {e_rate:7.1f}  graphs {g_rate:7.1f}",
                flush=True,
            )
        del graphed, eager, ckpt
        torch.cuda.empty_cache()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
