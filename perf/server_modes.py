"""The benchmark's modes against a real server over HTTP: ``--mode http``, ``--mode open-loop --server``,
``--mode session`` and ``--mode cold-start``.

Each takes ``benchmark.py``'s parsed arguments and the result dict it writes as JSON, prints its
tables as it goes, and adds its figures under ``http`` / ``open_loop`` / ``session`` / ``cold_start``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from perf import drivers, report
from perf.metrics import combine_repeats, summarize_closed, summarize_open, summarize_stages
from perf.server_load import StatusPoller
from voxcpm_engine.tools.progress import echo, progress_bar

__all__ = ["run_cold_start", "run_http", "run_http_open_loop", "run_sessions"]


def run_http(args: argparse.Namespace, out: dict[str, Any]) -> None:
    """HTTP mode: one seed-format block per run of each level, then its server stages (``Server-Timing``)."""
    from perf.http_client import HttpLoad, http_level

    load = HttpLoad(args.steps, args.min_generate_length, args.temperature, args.cfg_value, args.timeout)
    out["http"] = []
    with progress_bar(len(args.concurrency) * args.repeats, desc="http sweep", unit="run") as bar:
        for level in args.concurrency:
            n = args.requests or level  # one wave started together, as in process and in the cold-start mode
            runs = []
            for r in range(args.repeats):
                bar.set_postfix_str(f"concurrency {level}, run {r + 1}/{args.repeats}")
                with StatusPoller(args.server) as poller:
                    traces, wall = http_level(
                        args.server,
                        num_requests=n,
                        concurrency=level,
                        load=load,
                        warmup=args.warmup if r == 0 else 0,  # the level's warm-up once, before its first run
                        tag=f"c{level}-" if r == 0 else f"c{level}r{r}-",
                        workers=args.http_workers,
                    )
                bar.update(1)
                summary = summarize_closed(traces, wall)
                shares = poller.shares(traces, requests=summary["ok"], audio_s=summary["audio_s"])
                # echo, not print: the blocks go above the progress bar instead of through it.
                if args.repeats > 1:
                    echo(f"\n(run {r + 1} of {args.repeats})")
                echo(report.seed_block(summary, level, wall))
                if shares:
                    echo(
                        f"\nServer process over the level: event loop busy {shares['server_loop_busy_pct']:.0f}%, "
                        f"process CPU {shares['server_process_cpu_pct']:.0f}% of one core; the loop's CPU "
                        f"{shares.get('server_loop_ms_per_request', math.nan):.2f} ms per request, "
                        f"{shares.get('server_loop_ms_per_audio_s', math.nan):.2f} ms per second of audio"
                    )
                errors = sorted({t.error for t in traces if t.error and t.error != "503"})
                for e in errors[:5]:
                    echo(f"  error: {e}")
                stages = summarize_stages(traces)
                timed = sum(1 for t in traces if t.ok and t.server_timing)
                if stages:
                    echo(f"\nServer-Timing, ms ({timed} of {summary['ok']} answered requests carried it):")
                    echo(report.stage_table(stages))
                runs.append(
                    {
                        "engine": "server",
                        "concurrency": level,
                        **summary,
                        **shares,
                        "error_kinds": errors,
                        "server_timing_ms": stages,
                        "server_timing_responses": timed,
                    }
                )
            out["http"].append(combine_repeats(runs))
    if args.repeats > 1:
        print(f"\n## Median (min-max) over {args.repeats} runs per level\n")
        print(report.repeats_table(out["http"]))
    if len(out["http"]) > 1 and (table := report.stage_levels_table(out["http"])):
        print("\n## Server stages, p50 ms per concurrency level (first run of each)\n")
        print(table)


def run_http_open_loop(args: argparse.Namespace, out: dict[str, Any]) -> None:
    """Open loop over HTTP: after ``--warmup`` short requests, Poisson arrivals at each of ``--rates`` for
    ``--duration`` s (the in-process open loop's arrival times, :func:`perf.http_client.open_level`);
    per rate TTFB, the largest gap per stream and the underrun share, then the gap-free capacity."""
    from perf.http_client import HttpLoad, http_level, open_level

    load = HttpLoad(args.steps, args.min_generate_length, args.temperature, args.cfg_value, args.timeout)
    if args.warmup:
        warm = HttpLoad(args.warmup_steps, args.warmup_steps, args.temperature, args.cfg_value, args.timeout)
        http_level(args.server, num_requests=args.warmup, concurrency=args.warmup, load=warm, tag="wol-")
    rows = []
    with progress_bar(len(args.rates), desc="http open loop", unit="rate") as bar:
        for rate in args.rates:
            bar.set_postfix_str(f"{rate:g} arrivals/s for {args.duration:g} s")
            with StatusPoller(args.server) as poller:
                traces, wall = open_level(
                    args.server, rate=rate, duration_s=args.duration, load=load, seed=args.seed, tag=f"ol{rate:g}-",
                    workers=args.http_workers,
                )  # fmt: skip
            bar.update(1)
            row: dict[str, Any] = {"engine": "server", **summarize_open(traces, rate, args.duration), "wall_s": wall}
            row.update(poller.shares(traces))
            row["rejected_503"] = sum(1 for t in traces if t.error == "503")
            row["error_kinds"] = sorted({t.error for t in traces if t.error and t.error != "503"})[:5]
            row["server_timing_ms"] = summarize_stages(traces)
            row["memory"] = {"kind": "none", "gib": float("nan")}  # the server's own, not this client's
            echo(
                f"[server] {rate:g}/s: TTFB p50 {row['ttfb_ms_p50']:.1f} / p99 {row['ttfb_ms_p99']:.1f} ms, "
                f"max gap p99 {row['max_gap_ms_p99']:.1f} ms, underrun {row['underrun_share']:.1%}, "
                f"{row['ok']}/{row['requests']} ok ({row['rejected_503']} refused with 503), "
                f"server loop busy {row.get('server_loop_busy_pct', math.nan):.0f}%"
            )
            for e in row["error_kinds"]:
                echo(f"  error: {e}")
            rows.append(row)
    out["open_loop"] = {"server": rows}
    print(f"\n## Open loop over HTTP: Poisson arrivals of {args.steps}-patch requests, {args.duration:g} s per rate\n")
    per_request = sum(r["audio_s"] for r in rows) / max(1, sum(r["ok"] for r in rows))
    text, out["capacity"] = report.open_loop_section(out["open_loop"], per_request)
    print(text)


def run_sessions(args: argparse.Namespace, out: dict[str, Any]) -> None:
    """Session mode: ``--repeats`` runs of each level of voice-agent sessions (:mod:`perf.sessions`)."""
    import asyncio

    from perf.sessions import SessionLoad, run_session_level, summarize_sessions

    url = args.server.rstrip("/").replace("http://", "ws://", 1).replace("https://", "wss://", 1) + "/v1/tts/stream"
    load = SessionLoad(args.steps, temperature=args.temperature, cfg_value=args.cfg_value, timesteps=args.timesteps)
    if args.warmup:
        asyncio.run(run_session_level(url, args.warmup, load, "warm-"))
    out["session"] = []
    with progress_bar(len(args.concurrency) * args.repeats, desc="session sweep", unit="run") as bar:
        for level in args.concurrency:
            for r in range(args.repeats):
                bar.set_postfix_str(f"{level} sessions, run {r + 1}/{args.repeats}")
                traces, wall = asyncio.run(run_session_level(url, level, load, f"s{level}r{r}-"))
                bar.update(1)
                row = {"concurrency": level, "run": r + 1, **summarize_sessions(traces, wall)}
                out["session"].append(row)
                echo(report.session_line(row))
    print(f"\n## Voice-agent sessions ({args.steps}-patch segments), ms p50 / p99\n")
    print(report.session_table(out["session"]))


def run_cold_start(args: argparse.Namespace, out: dict[str, Any]) -> None:
    """Cold-start mode: two server starts (empty, then filled kernel cache), each measured per level."""
    from perf.cold_start import ColdStartPlan, cold_start, parse_server_args
    from perf.http_client import HttpLoad

    model_dir = args.model or drivers.preset_checkpoint(args.preset, args.cache_dir)
    plan = ColdStartPlan(
        model_dir=Path(model_dir),
        levels=tuple(args.concurrency),
        load=HttpLoad(args.steps, args.min_generate_length, args.temperature, args.cfg_value, args.timeout),
        repeats=args.repeats,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        kernel_cache_dir=args.kernel_cache_dir,
        server_args=parse_server_args(args.server_args),
        log_dir=args.json.parent if args.json else Path(args.cache_dir),
    )
    plan.log_dir.mkdir(parents=True, exist_ok=True)
    out["cold_start"] = cold_start(plan)
    print(f"\n## Cold start: first requests per level against warm ({args.steps}-patch requests)\n")
    print(report.cold_start_table(out["cold_start"]))
    for start in out["cold_start"]:
        for kind in ("first", "warm"):
            rows = [level[kind] for level in start["levels"]]
            if table := report.stage_levels_table(rows):
                print(f"\n### {start['label']}: server stages of the {kind} runs, p50 ms per level\n")
                print(table)
