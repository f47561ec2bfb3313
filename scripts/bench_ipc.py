"""IPC cost of the engine-core process: per step message and per chunk, for N concurrent streams.

For each N, starts a fresh engine process (so its figures cover that N only), streams N requests
of ``--steps`` patches each through ``AsyncEngine`` (``--repeat`` times) and prints the engine's
own IPC figures (``AsyncEngine.stats()["ipc"]``): ``latency`` = engine about to send a step's
outputs → every chunk of it in its request queue on the server's event loop; within it, ``send``
= engine loop time spent pickling and writing (the only part that delays the next step),
``receive`` = reader thread reading and unpickling, ``handoff`` = read → dispatched on the event
loop. "Per chunk" divides the per-message mean by the mean chunks per message (all chunks of a
step travel in one message). With ``--compare`` the same runs also go through an in-process
``Engine`` (in a fresh process too) for the end-to-end wall-clock overhead; on a noisy box repeat
it before believing a difference.

    python scripts/bench_ipc.py                            # tiny-v2 (written to a temp dir), N = 1, 4, 16
    python scripts/bench_ipc.py --model DIR --streams 1,8 --steps 100 --device cuda --compare
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from voxcpm_engine.config.engine_config import EngineConfig
from voxcpm_engine.proc.client import AsyncEngine
from voxcpm_engine.types import GenerationParams

TEXT = "A sentence of ordinary length, streamed through the engine process."


def _params(steps: int, seed: int) -> GenerationParams:
    return GenerationParams(min_steps=steps, max_steps=steps, seed=seed)


async def run_process(args: argparse.Namespace, model: str, config: EngineConfig, n: int) -> tuple[float, dict]:
    """Median wall time of ``--repeat`` runs of ``n`` concurrent streams through an engine process, and its stats."""
    async with AsyncEngine(model, config, args.device, num_threads=args.threads) as engine:
        # Warm-up (first-call allocations): same batch shape, two steps, so it barely moves the figures.
        await consume_all(engine, n, 2)
        before = await engine.stats()
        walls = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            await consume_all(engine, n, args.steps)
            walls.append(time.perf_counter() - t0)
        after = await engine.stats()
    after["_warmup_messages"] = before["ipc"]["latency_us"].get("count", 0)
    return statistics.median(walls), after


async def consume_all(engine: AsyncEngine, n: int, steps: int) -> None:
    async def one(i: int) -> None:
        async for _ in engine.generate(f"r{time.monotonic_ns()}-{i}", TEXT, params=_params(steps, i)):
            pass

    await asyncio.gather(*(one(i) for i in range(n)))


def run_in_process(args: argparse.Namespace, model: str, config: EngineConfig, n: int) -> float:
    """Median wall time of the same runs on an in-process engine (called in a fresh process: see ``main``)."""
    import torch

    from voxcpm_engine.engine import Engine

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    engine = Engine.from_dir(model, config, args.device)
    engine.generate({f"w{i}": (TEXT, None, _params(2, i)) for i in range(n)})
    walls = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        engine.generate({f"r{i}": (TEXT, None, _params(args.steps, i)) for i in range(n)})
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls)


def _fmt(summary: dict, per: float = 1.0) -> str:
    if not summary.get("count"):
        return "n/a"
    return "/".join(f"{summary[k] / per:.0f}" for k in ("mean", "p50", "p99"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint directory (default: a tiny-v2 synthetic one in a temp dir)")
    parser.add_argument("--streams", default="1,4,16", help="comma-separated numbers of concurrent streams")
    parser.add_argument("--steps", type=int, default=60, help="patches per request")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the engine (0: torch's default)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per N (wall times are their median)")
    parser.add_argument("--compare", action="store_true", help="also time the workload on an in-process Engine")
    args = parser.parse_args()
    args.threads = args.threads or None
    counts = [int(x) for x in args.streams.split(",")]
    config = EngineConfig(max_num_seqs=max(counts), max_num_batched_tokens=max(256, max(counts)), max_model_len=512)

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from voxcpm_engine.tools.synthetic import write_checkpoint

            model = str(write_checkpoint("tiny-v2", Path(tmp) / "tiny-v2", seed=0))
        print(
            f"model {model}, device {args.device}, torch threads {args.threads or 'default'}, "
            f"{args.repeat} x {args.steps} steps per N; step p50 in ms, wall s = median run"
        )
        print("latency/send/receive/handoff: mean/p50/p99 in µs; per chunk = per-message mean / chunks per message")
        header = (
            f"{'N':>3} {'msgs':>5} {'chunks/msg':>10} {'KB/msg':>7} {'step p50':>8} {'latency':>14} "
            f"{'send':>12} {'receive':>12} {'handoff':>12} {'lat/chunk':>9} {'send/chunk':>10} {'wall s':>7}"
        )
        print(header + (f" {'in-proc s':>9} {'overhead':>8}" if args.compare else ""))
        for n in counts:
            wall, stats = asyncio.run(run_process(args, model, config, n))
            ipc = stats["ipc"]
            chunks = ipc["outputs_per_message"]["mean"]

            row = (
                f"{n:>3} {ipc['latency_us']['count'] - stats['_warmup_messages']:>5} {chunks:>10.1f} "
                f"{ipc['audio_bytes']['mean'] / 1024:>7.1f} {stats['step_ms']['p50']:>8.1f} "
                f"{_fmt(ipc['latency_us']):>14} {_fmt(ipc['send_us']):>12} {_fmt(ipc['receive_us']):>12} "
                f"{_fmt(ipc['handoff_us']):>12} {ipc['latency_us']['mean'] / chunks:>9.1f} "
                f"{ipc['send_us']['mean'] / chunks:>10.1f} "
                f"{wall:>7.2f}"
            )
            if args.compare:
                # A fresh spawned process, like the engine's: a warm heap alone makes steps ~20% faster
                # on a VM with costly page faults, which would be charged to the IPC otherwise.
                with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                    local = pool.submit(run_in_process, args, model, config, n).result()
                row += f" {local:>9.2f} {100 * (wall / local - 1):>7.1f}%"
            print(row, flush=True)


if __name__ == "__main__":
    main()
