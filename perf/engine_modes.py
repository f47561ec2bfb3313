"""The benchmark's in-process modes: ``--mode engine``, ``--mode peer`` and ``--mode open-loop`` (ours and
nano-vllm-voxcpm in turn on one device and checkpoint; the HTTP modes are :mod:`perf.server_modes`).

:func:`run_engines` takes ``benchmark.py``'s parsed arguments and adds its figures to the result dict it
writes as JSON (``ours`` / ``peer`` / ``open_loop`` / ``profile`` / ``ipc``); :func:`print_engines` prints their tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from perf import drivers, report
from perf.drivers import Sampling
from perf.local_engine import LocalEngine, engine_config
from perf.system import peak_tflops

__all__ = ["engine_limits", "print_engines", "run_engines"]


def engine_limits(args: argparse.Namespace) -> dict[str, Any]:
    """The engine limits both engines run with (and the JSON records), from the command line."""
    open_loop = args.mode == "open-loop"
    return {
        "max_num_seqs": args.max_num_seqs or max([*args.concurrency, 128 if open_loop else 1]),
        "max_model_len": args.max_model_len or max(512, args.steps + 256),
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "gpu_memory_utilization": args.gpu_memory_utilization,
        "enforce_eager": args.enforce_eager,
        "timesteps": args.timesteps,
    }


def _ours(args: argparse.Namespace, model_dir: Path) -> LocalEngine:
    lora = {"max_loras": args.loras, "max_lora_rank": max(32, args.lora_rank)} if args.loras else {}
    config = engine_config(
        **engine_limits(args),
        fused_kernels=args.fused_kernels,
        vae_tf32=args.vae_tf32,
        vae_dtype=args.vae_dtype,
        vae_overlap=args.vae_overlap,
        vae_units=args.vae_units,
        async_scheduling=args.async_scheduling,
        packed_lm_graphs=args.packed_lm_graphs,
        **lora,
    )
    engine = LocalEngine.load(model_dir, args.device, config, attention_backend=args.attention_backend)
    if args.loras:
        engine.use_loras(
            model_dir, args.loras, args.lora_rank, Path(model_dir).parent / f"{Path(model_dir).name}-loras"
        )
    return engine


def _peer(args: argparse.Namespace, model_dir: Path) -> Any:
    from perf.peer import PeerEngine

    limit = args.peer_recompile_limit or None  # 0: torch's own limit
    return PeerEngine(model_dir, device=args.device, dynamo_recompile_limit=limit, **engine_limits(args))


def run_engines(args: argparse.Namespace, model_dir: Path, out: dict[str, Any]) -> None:
    """Engine / peer / open-loop modes: each engine in turn on the same device and checkpoint."""
    from perf.peer import PEER_NAME, peer_unavailable

    sampling = Sampling(args.steps, args.temperature, args.cfg_value, args.timesteps)
    names = {"engine": ["ours"], "peer": ["peer"], "open-loop": ["ours"]}[args.mode]
    if args.compare and args.mode in ("engine", "open-loop"):
        names.append("peer")
    if "peer" in names and (why := peer_unavailable()) is not None:
        sys.exit(f"benchmark.py: cannot run {PEER_NAME}: {why}")
    peak = peak_tflops(out["meta"]["device_name"], args.peak_tflops)
    for name in names:
        print(f"\n== {name}: loading {model_dir} on {args.device}", flush=True)
        adapter = _ours(args, model_dir) if name == "ours" else _peer(args, model_dir)
        try:
            if args.mode == "open-loop":
                rows = drivers.open_loop_sweep(
                    adapter,
                    rates=args.rates,
                    duration_s=args.duration,
                    sampling=sampling,
                    warmup_steps=args.warmup_steps if args.warmup else 0,
                    seed=args.seed,
                )
                out.setdefault("open_loop", {})[name] = rows
            else:
                rows = drivers.closed_sweep(
                    adapter,
                    levels=args.concurrency,
                    requests_per_level=args.requests,
                    sampling=sampling,
                    warmup=args.warmup,
                    warmup_steps=args.warmup_steps,
                    peak_tflops=peak,
                    repeats=args.repeats,
                )
                out[name] = rows
            if name == "ours" and args.profile:
                from perf.profiling import profile_level

                level = args.profile_concurrency or max(args.concurrency)
                print(f"\n== profiling one level of {level} requests", flush=True)
                out["profile"] = profile_level(
                    adapter, concurrency=level, sampling=sampling, warmup_steps=args.warmup_steps
                )
        finally:
            adapter.close()
    if (args.ipc or args.profile) and "ours" in names:
        from perf.profiling import ipc_level

        level = args.profile_concurrency or max(args.concurrency)
        print(f"\n== {level} requests through AsyncEngine (engine process)", flush=True)
        config = dataclasses.replace(engine_config(**engine_limits(args)), audio_ring_slots=args.audio_ring_slots)
        out["ipc"] = ipc_level(
            model_dir, config, args.device, concurrency=level, sampling=sampling, warmup_steps=args.warmup_steps
        )
        out["ipc"]["concurrency"] = level


def print_engines(args: argparse.Namespace, out: dict[str, Any]) -> None:
    """Tables for the engine / peer / open-loop results in ``out``."""
    if "ours" in out or "peer" in out:
        print("\n## Closed batch: requests of", args.steps, "patches started together\n")
        print(report.closed_table(out.get("ours", []) + out.get("peer", [])))
        if args.repeats > 1:
            print(f"\n## Median (min-max) over {args.repeats} runs per level\n")
            print(report.repeats_table(out.get("ours", []) + out.get("peer", [])))
    if "ours" in out and "peer" in out:
        print("\n## Side by side (ratio = ours / peer)\n")
        print(report.compare_table(out["ours"], out["peer"]))
    if "open_loop" in out:
        print(f"\n## Open loop: Poisson arrivals of {args.steps}-patch requests, {args.duration:g} s per rate\n")
        per_request = args.steps * out["model"]["audio_s_per_patch"]
        text, out["capacity"] = report.open_loop_section(out["open_loop"], per_request)
        print(text)
    if "profile" in out:
        p = out["profile"]
        print(
            f"\n## Where a step goes: {p['concurrency']} requests, {p['steps']} steps "
            f"({p['graph_steps']} graph replays), wall {p['wall_ms_per_step']:.2f} ms/step, "
            f"GPU busy {p['gpu_busy_share']:.0%} of host step time\n"
        )
        print(report.profile_table(p))
    if "ipc" in out:
        ipc = out["ipc"]
        s = ipc["summary"]
        print(
            f"\n## Engine process (AsyncEngine), {ipc['concurrency']} requests, {ipc['steps']} steps: "
            f"TTFB p50 {s['ttfb_ms_p50']:.1f} ms, RTF mean {s['rtf_mean']:.3f}, "
            f"{s['audio_s_per_s']:.1f} audio s/s; per step: loop {ipc['queue_ms_per_step']:.3f} ms to queue, "
            f"sender {ipc['send_ms_per_step']:.3f} ms to send"
        )
        print("IPC per step message, µs mean / p50 / p99:")
        print(report.ipc_lines(ipc["ipc"]))
