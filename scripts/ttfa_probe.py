"""Where one request's time to first audio goes inside the engine (in process, warm).

For each repeat: add one request to an idle engine and step until its first chunk, timing
``add_request`` and the first step; then a second pass with the first step split by a device
sync around the runner's LMs, its sampler and the VAE (the syncs add a little), and one first
step under ``torch.profiler`` for the kernel count and the GPU's busy time. Prints one JSON
document (medians over the repeats).

    python -m voxcpm_engine.tools.synthetic --preset voxcpm1.5 /tmp/ckpt/v15 --seed 0
    PYTHONPATH=. python scripts/ttfa_probe.py /tmp/ckpt/v15 --repeats 7
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from perf.drivers import request_text
from voxcpm_engine.config.engine_config import EngineConfig
from voxcpm_engine.engine import Engine
from voxcpm_engine.startup import warm_up
from voxcpm_engine.types import GenerationParams


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _first_chunk(engine: Engine, request_id: str, text: str, steps: int) -> tuple[float, float, int]:
    """Add one request and step until its first audio; returns (add ms, steps ms, engine steps)."""
    _sync()
    start = time.perf_counter()
    engine.add_request(request_id, text, params=GenerationParams(max_steps=steps, min_steps=steps, seed=0))
    added = time.perf_counter()
    calls = 0
    while True:
        calls += 1
        if any(o.request_id == request_id and o.audio is not None for o in engine.step()):
            break
    done = time.perf_counter()
    engine.abort(request_id)
    while engine.has_unfinished():
        engine.step()
    return (added - start) * 1e3, (done - added) * 1e3, calls


def _timed(store: dict[str, list[float]], name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _sync()
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        _sync()
        store.setdefault(name, []).append((time.perf_counter() - start) * 1e3)
        return out

    return wrapper


def main() -> None:
    """Run the probe and print its JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--max-num-seqs", type=int, default=128)
    ap.add_argument(
        "--warm-up",
        action="store_true",
        help="run the engine process's start-up warm-up first; the cold request is then profiled (top CPU ops)",
    )
    args = ap.parse_args()
    result: dict[str, Any] = {}
    start = time.perf_counter()
    engine = Engine.from_dir(args.model, EngineConfig(max_num_seqs=args.max_num_seqs, max_model_len=512))
    result["load_s"] = time.perf_counter() - start
    if args.warm_up:
        result["warm_up_s"] = warm_up(engine)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as cold:
            result["cold_first_ms"] = _first_chunk(engine, "cold", request_text(0, "c"), args.steps)
        result["cold_table"] = cold.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
        result["second_ms"] = _first_chunk(engine, "second", request_text(1, "c"), args.steps)
    else:
        result["cold_first_ms"] = _first_chunk(engine, "cold", request_text(0, "c"), args.steps)
    for i in range(3):
        _first_chunk(engine, f"warm{i}", request_text(i, "w"), args.steps)
    plain = [_first_chunk(engine, f"p{i}", request_text(i, "p"), args.steps) for i in range(args.repeats)]
    result["add_ms"] = statistics.median(p[0] for p in plain)
    result["first_step_ms"] = statistics.median(p[1] for p in plain)
    result["step_calls"] = [p[2] for p in plain]
    split: dict[str, list[float]] = {}
    runner, vae = engine.runner, engine._vae_streams
    orig = runner._lm, runner._sample, vae.decode, runner._inputs
    runner._lm = _timed(split, "lm", runner._lm)
    runner._sample = _timed(split, "sampler", runner._sample)
    vae.decode = _timed(split, "vae", vae.decode)
    runner._inputs = _timed(split, "lm_inputs", runner._inputs)
    for i in range(args.repeats):
        _first_chunk(engine, f"s{i}", request_text(i, "s"), args.steps)
    runner._lm, runner._sample, vae.decode, runner._inputs = orig
    result["split_ms"] = {k: statistics.median(v) for k, v in split.items()}
    acts = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        _first_chunk(engine, "prof", request_text(0, "prof"), args.steps)
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    result["profiled_kernels"] = len(kernels)
    result["profiled_gpu_busy_ms"] = sum(e.device_time for e in kernels) / 1e3
    launches = [e for e in prof.events() if e.name in ("cudaLaunchKernel", "cuLaunchKernel", "cudaGraphLaunch")]
    result["launch_calls"] = {n: sum(1 for e in launches if e.name == n) for n in {e.name for e in launches}}
    table = prof.key_averages().table(sort_by="cuda_time_total" if len(acts) > 1 else "cpu_time_total", row_limit=25)
    result["table"] = table
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
