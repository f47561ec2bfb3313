"""Benchmark the VoxCPM engine in process, a running server over HTTP, or nano-vllm-voxcpm beside ours.

Modes (``--mode``; default ``http`` with ``--server``, else ``engine``):

  engine     in-process Engine: a closed-batch concurrency sweep of fixed-length requests started
             together (warm-up first); per level TTFB p50/p90/p99, RTF mean/p95, audio seconds per
             wall second, achieved model FLOP/s against the device's bf16 peak, peak memory.
             --compare also runs nano-vllm-voxcpm on the same checkpoint and device, one after the
             other, and prints both side by side with ratios ours/peer.
  peer       the same protocol on nano-vllm-voxcpm alone.
  open-loop  Poisson arrivals at --rates per second for --duration seconds each (--compare: the peer
             too): TTFB p50/p99, the largest inter-chunk gap per stream p50/p99, the share of streams
             that underrun, and the gap-free capacity (highest rate with <= 1% underruns). With
             --server URL: the same arrivals over HTTP against that server (the raw client's worker
             processes; --warmup short requests first), with each rate's server stages in the JSON.
  cold-start starts `python -m tts_server` itself on an empty kernel cache (--kernel-cache-dir, else
             a new temporary one): seconds to /ready, then each level's very first requests (no
             warm-up) against the same level warm (--repeats runs), the longest gap of any stream;
             then again on the cache the first start filled. Default levels 1 4 16 64 128.
  session    voice-agent WebSocket sessions (/v1/tts/stream) against --server: N agents started
             together stream a reply word by word and barge in on its last sentence; per level the
             time from the first text fragment to first audio, from a sentence's end to its audio,
             the playback gap at each join between segments, clear to silence, and the join's
             shape (jump and silence at the seam). --steps sets the patches per segment.
  http       streaming POST /generate against --server (the seed benchmark's flags work), printed in
             the seed's format, plus 503s counted apart; where the server sends a Server-Timing
             header, each level's p50/p90 ms per server stage (admission ... total) follows, and
             a p50 table of every level ends the run.

--profile runs one level under torch.profiler and prints where a step's time goes by the engine's
named ranges (host and device ms per step), then the same level through the engine process
(AsyncEngine) with its IPC cost per step (--ipc alone: only the latter). --json OUT writes every
number, the configuration, device, torch version, date and command line. --plot FIG.png (.svg; default:
--json's path as .png) draws the run (perf/plots.py); `python -m perf.plots A.json B.json --out DIR`
redraws saved runs. On a terminal, progress bars on stderr count the runs of each sweep.

Random-weight checkpoints (--preset) never stop on their own: every request runs exactly --steps
patches (ours: min_steps = max_steps; the peer: max_generate_length, it has no minimum).

Examples:
  python benchmark.py --preset voxcpm1.5 --concurrency 1 16 64 128 --steps 50 --compare --json out.json
  python benchmark.py --preset voxcpm2 --mode open-loop --rates 4 8 16 24 --duration 30 --compare
  python benchmark.py --preset tiny-v1 --device cpu --concurrency 1 2 --steps 3 --profile
  python benchmark.py --mode session --server http://localhost:8000 --concurrency 1 16 64 --steps 25
  python benchmark.py --server http://localhost:8000 --num-requests 64 --concurrency 32 --warmup 4
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Any

import torch

from perf import drivers, plots, report
from perf.engine_modes import engine_limits, print_engines, run_engines
from perf.flops import audio_seconds_per_patch, format_breakdown, step_flops
from perf.server_modes import run_cold_start, run_http, run_http_open_loop, run_sessions
from perf.system import device_name, peak_tflops, run_metadata
from voxcpm_engine.config.engine_config import VAE_UNITS


def over_http(args: argparse.Namespace) -> bool:
    """Whether the mode measures a running server (``--server``) rather than engines in this process."""
    return args.mode in ("http", "session") or (args.mode == "open-loop" and args.server is not None)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser(
        prog="benchmark.py",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--mode",
        choices=["engine", "peer", "open-loop", "http", "session", "cold-start"],
        help="what to run (see above)",
    )
    src = ap.add_argument_group("model")
    src.add_argument("--model", type=Path, help="checkpoint directory (official layout)")
    src.add_argument("--preset", help="random-weight checkpoint of this preset (voxcpm1.5, voxcpm2, tiny-v1, ...)")
    src.add_argument("--cache-dir", type=Path, default=Path("/tmp/voxcpm-bench"), help="where --preset writes")
    src.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    load = ap.add_argument_group("load")
    load.add_argument("--concurrency", type=int, nargs="+", help="levels (default 1 16 64 128; http: 16)")
    load.add_argument(
        "--requests-per-level",
        "--num-requests",
        dest="requests",
        type=int,
        help="requests per level (default: the level, all started together; more: each finished one is replaced)",
    )
    load.add_argument(
        "--steps",
        "--max-generate-length",
        dest="steps",
        type=int,
        default=50,
        help="patches per request (50 = 8 s of audio; http: max_generate_length)",
    )
    load.add_argument("--temperature", type=float, default=1.0, help="initial-noise scale (default 1.0)")
    load.add_argument("--cfg-value", type=float, default=2.0, help="guidance scale (default 2.0)")
    load.add_argument("--timesteps", type=int, default=10, help="flow sampler steps per patch (default 10)")
    load.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="warm-up runs per level before measuring (http: warm-up requests; default 1)",
    )
    load.add_argument("--warmup-steps", type=int, default=4, help="patches per warm-up request (default 4)")
    load.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="measured runs per level after its warm-up; tables give the median and the spread (default 3)",
    )
    load.add_argument("--seed", type=int, default=0, help="seed of request 0 and of the Poisson arrivals")
    ol = ap.add_argument_group("open loop")
    ol.add_argument("--rates", type=float, nargs="+", default=[4, 8, 16, 24], help="arrivals per second")
    ol.add_argument("--duration", type=float, default=30.0, help="seconds of arrivals per rate (default 30)")
    eng = ap.add_argument_group("engine limits (ours and the peer's)")
    eng.add_argument("--max-num-seqs", type=int, help="running batch cap (default: largest level; open loop 128)")
    eng.add_argument("--max-model-len", type=int, help="positions per request (default max(512, steps + 256))")
    eng.add_argument("--max-num-batched-tokens", type=int, default=4096, help="token budget of a step")
    eng.add_argument("--gpu-memory-utilization", type=float, default=0.85, help="share of the GPU for the engines")
    eng.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs (both engines)")
    eng.add_argument("--attention-backend", help="force our attention kernels (torch, triton, flash)")
    eng.add_argument(
        "--no-fused-kernels", dest="fused_kernels", action="store_false", help="ours: op-by-op torch, no Triton fusion"
    )
    eng.add_argument(
        "--vae-fp32", dest="vae_tf32", action="store_false", help="ours: the AudioVAE's convolutions in true fp32"
    )
    eng.add_argument("--vae-dtype", choices=("float32", "bfloat16"), default="float32", help="ours: VAE decode dtype")
    eng.add_argument("--vae-units", choices=VAE_UNITS, default="auto", help="ours: VAE residual units' kernels")
    eng.add_argument(
        "--no-vae-overlap", dest="vae_overlap", action="store_false", help="ours: VAE decode behind the LMs, one stream"
    )
    eng.add_argument(
        "--no-async-scheduling",
        dest="async_scheduling",
        action="store_false",
        help="ours: one step at a time (no launch of the next step before the audio is copied out)",
    )
    eng.add_argument(
        "--no-packed-lm-graphs",
        dest="packed_lm_graphs",
        action="store_false",
        help="ours: the LMs of prefill and mixed steps op by op (no packed-LM CUDA graphs)",
    )
    eng.add_argument("--loras", type=int, default=0, help="ours: N random LoRA voices, requests cycle through them")
    eng.add_argument("--lora-rank", type=int, default=32, help="rank of the --loras adapters (default 32)")
    ap.add_argument("--compare", action="store_true", help="also run nano-vllm-voxcpm (engine / open-loop modes)")
    ap.add_argument(
        "--peer-recompile-limit",
        type=int,
        default=64,
        help="torch._dynamo recompile limit while the peer runs (default 64; 0: torch's own, 8). With 8 the "
        "peer's compiled VoxCPM2 VAE 'snake' falls back to eager on an H200/torch 2.11 and runs ~1.8x slower",
    )
    ap.add_argument("--peak-tflops", type=float, help="device bf16 peak for MFU (default: from the device name)")
    ap.add_argument("--profile", action="store_true", help="profile one level (and run --ipc)")
    ap.add_argument("--ipc", action="store_true", help="run one level through AsyncEngine and report IPC per step")
    ap.add_argument(
        "--audio-ring-slots", type=int, default=4, help="--ipc: shared-memory audio slots (0: audio in the pipe)"
    )
    ap.add_argument("--profile-concurrency", type=int, help="level to profile (default: the largest)")
    http = ap.add_argument_group("http")
    http.add_argument("--server", help="base URL of a running server, e.g. http://localhost:8000")
    http.add_argument("--min-generate-length", type=int, help="also send min_generate_length (fixes real lengths)")
    http.add_argument("--timeout", type=float, default=600.0, help="seconds per HTTP request (default 600)")
    http.add_argument(
        "--http-workers",
        type=int,
        help="load-generator processes per level (default min(level, CPUs / 2, 8)); each opens its share of "
        "the level's keep-alive connections, then all send together, so the client is not what TTFB measures",
    )
    cold = ap.add_argument_group("cold start")
    cold.add_argument("--kernel-cache-dir", type=Path, help="an empty directory for the servers' kernel cache")
    cold.add_argument("--server-args", help='more tts_server flags, one string (e.g. "--max-num-batched-tokens 4096")')
    ap.add_argument("--json", type=Path, help="write all results as JSON here")
    ap.add_argument("--plot", type=Path, help="write the figure here (.png/.svg; default: --json's path as .png)")
    ap.add_argument("--no-plot", action="store_true", help="no figure, not even beside --json")
    args = ap.parse_args(argv)
    if args.plot and not args.no_plot and importlib.util.find_spec("matplotlib") is None:
        ap.error("--plot needs matplotlib (pip install -e '.[bench]')")  # before the run, not after it
    if args.plot and args.plot.suffix.lower() not in (".png", ".svg", ".pdf"):
        ap.error(f"--plot {args.plot}: the name must end in .png, .svg or .pdf")
    args.plot = None if args.no_plot else (args.plot or (args.json and args.json.with_suffix(".png")))
    args.mode = args.mode or ("http" if args.server else "engine")
    if args.mode in ("http", "session") and not args.server:
        ap.error(f"--mode {args.mode} needs --server URL")
    if not over_http(args) and not (args.model or args.preset):
        ap.error(f"--mode {args.mode} needs --model DIR or --preset NAME (or, for open-loop, --server URL)")
    if args.mode == "open-loop" and args.server and (args.compare or args.model or args.preset):
        ap.error("--mode open-loop --server runs against that server alone: no --compare, --model or --preset")
    if args.model and args.preset:
        ap.error("give --model or --preset, not both")
    if args.steps < 1 or args.warmup < 0 or args.warmup_steps < 0 or args.repeats < 1:
        ap.error("--steps and --repeats must be >= 1 and --warmup/--warmup-steps >= 0")
    default_levels = {"http": [16], "session": [1, 16, 64], "cold-start": [1, 4, 16, 64, 128]}.get(
        args.mode, [1, 16, 64, 128]
    )
    args.concurrency = args.concurrency or default_levels
    if min(args.concurrency) < 1:
        ap.error("--concurrency levels must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    if not over_http(args):
        args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(args.device or "cpu")
    out: dict[str, Any] = {"meta": run_metadata(device, ["benchmark.py", *(sys.argv[1:] if argv is None else argv)])}
    out["args"] = vars(args)
    if over_http(args):
        out["meta"]["device_name"] = f"server {args.server}"
        {"http": run_http, "open-loop": run_http_open_loop, "session": run_sessions}[args.mode](args, out)
    elif args.mode == "cold-start":
        run_cold_start(args, out)
    else:
        from voxcpm_engine.io.checkpoint import read_config

        model_dir = args.model or drivers.preset_checkpoint(args.preset, args.cache_dir)
        cfg = read_config(model_dir)
        flops = step_flops(cfg, inference_timesteps=args.timesteps, context_len=args.steps // 2)
        out["model"] = {
            "dir": str(model_dir),
            "preset": args.preset,
            "architecture": cfg.architecture,
            "sample_rate": cfg.sample_rate,
            "audio_s_per_patch": audio_seconds_per_patch(cfg),
            "flops_per_patch": flops,
            "limits": engine_limits(args),
        }
        peak = peak_tflops(device_name(device), args.peak_tflops)
        print(
            f"device: {out['meta']['device_name']} (bf16 peak {peak or 'unknown'} TFLOP/s), torch {torch.__version__}"
        )
        print(f"model FLOPs per patch ({cfg.architecture}, context {args.steps // 2}):")
        print(format_breakdown(cfg, flops))
        run_engines(args, model_dir, out)
        print_engines(args, out)
    if args.json:
        report.write_json(args.json, out)
        print(f"\nwrote {args.json}")
    if args.plot:
        plots.draw_run(args.plot, report.jsonable(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
