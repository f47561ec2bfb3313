"""Printed tables: closed-batch sweeps, side-by-side comparisons, open-loop runs, the seed's HTTP block with the
server's stages, profiles; and the strict JSON file of a run."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from perf.metrics import gap_free_capacity, stage_order

WIDTH = 60


def _f(value: Any, spec: str = ".1f", missing: str = "-") -> str:
    """Format a number, or ``missing`` for None/NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, spec)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table (reads as text and pastes into docs/PERFORMANCE.md)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def closed_table(rows: Sequence[dict[str, Any]]) -> str:
    """One line per (engine, concurrency): TTFB, RTF, throughput, FLOP/s, memory."""
    header = ["engine", "conc", "reqs", "TTFB p50/p90/p99 ms", "RTF mean/p95", "audio s/s", "TFLOP/s", "MFU", "mem GiB"]
    out = []
    for r in rows:
        out.append(
            [
                r["engine"],
                str(r["concurrency"]),
                f"{r['ok']}/{r['requests']}",
                f"{_f(r['ttfb_ms_p50'])} / {_f(r['ttfb_ms_p90'])} / {_f(r['ttfb_ms_p99'])}",
                f"{_f(r['rtf_mean'], '.3f')} / {_f(r['rtf_p95'], '.3f')}",
                _f(r["audio_s_per_s"]),
                _f(r["achieved_tflops"], ".3g"),
                _f(r["mfu"], ".1%"),
                _f(r["memory"]["gib"], ".2f"),
            ]
        )
    return _table(header, out)


def _ratio(a: Any, b: Any) -> str:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return "-"
    return f"{a / b:.2f}"


def compare_table(ours: Sequence[dict[str, Any]], peer: Sequence[dict[str, Any]]) -> str:
    """Closed-batch levels side by side with ratios ours / peer (below 1 is better for TTFB and RTF)."""
    by_level = {r["concurrency"]: r for r in peer}
    header = [
        "conc",
        "TTFB p50 ms ours / peer (ratio)",
        "RTF mean ours / peer (ratio)",
        "audio s/s ours / peer (ratio)",
    ]
    rows = []
    for r in ours:
        p = by_level.get(r["concurrency"])
        if p is None:
            continue
        cells = [str(r["concurrency"])]
        for key, spec in (("ttfb_ms_p50", ".1f"), ("rtf_mean", ".3f"), ("audio_s_per_s", ".1f")):
            cells.append(f"{_f(r[key], spec)} / {_f(p[key], spec)} ({_ratio(r[key], p[key])})")
        rows.append(cells)
    return _table(header, rows)


def _spread(row: dict[str, Any], key: str, spec: str = ".1f") -> str:
    """``median (min-max)`` of a combined row's figure; the bare value for a single run."""
    low, high = row.get("spread", {}).get(key, (None, None))
    if row.get("repeats", 1) <= 1 or low is None:
        return _f(row[key], spec)
    return f"{_f(row[key], spec)} ({_f(low, spec)}-{_f(high, spec)})"


def repeats_table(rows: Sequence[dict[str, Any]]) -> str:
    """One line per (engine, concurrency) of rows combined over repeats: median (min-max) of the headline figures."""
    header = ["engine", "conc", "runs", "TTFB p50 ms", "TTFB p90 ms", "audio s/s", "max gap p99 ms"]
    out = [
        [
            r["engine"],
            str(r["concurrency"]),
            str(r.get("repeats", 1)),
            _spread(r, "ttfb_ms_p50"),
            _spread(r, "ttfb_ms_p90"),
            _spread(r, "audio_s_per_s"),
            _spread(r, "max_gap_ms_p99"),
        ]
        for r in rows
    ]
    if any("server_loop_busy_pct" in r for r in rows):  # over HTTP: how busy the server's event loop was
        header.append("server loop busy %")
        for line, r in zip(out, rows, strict=True):
            line.append(_f(r.get("server_loop_busy_pct"), ".0f"))
    return _table(header, out)


def open_table(rows: Sequence[dict[str, Any]]) -> str:
    """One line per (engine, rate): TTFB p50/p99, largest gap per stream p50/p99, share that underran."""
    header = ["engine", "arrivals/s", "reqs", "TTFB p50 / p99 ms", "max gap p50 / p99 ms", "underrun", "mem GiB"]
    out = [
        [
            r["engine"],
            _f(r["rate"], "g"),
            f"{r['ok']}/{r['requests']}",
            f"{_f(r['ttfb_ms_p50'])} / {_f(r['ttfb_ms_p99'])}",
            f"{_f(r['max_gap_ms_p50'])} / {_f(r['max_gap_ms_p99'])}",
            _f(r["underrun_share"], ".1%"),
            _f(r["memory"]["gib"], ".2f"),
        ]
        for r in rows
    ]
    return _table(header, out)


CAPACITY_TTFB_P99_MS = 300.0  # issue 19's gap-free capacity: no underruns and TTFA p99 under 300 ms


def open_loop_section(
    by_engine: dict[str, list[dict[str, Any]]], audio_per_request_s: float
) -> tuple[str, dict[str, float | None]]:
    """The open-loop table of every engine's rates, then each engine's gap-free capacity line; and the capacities.

    A capacity is the highest rate (with every rate below it) at which at most 1% of streams underran
    and the TTFB p99 stayed under :data:`CAPACITY_TTFB_P99_MS`; the line also gives the rate the
    streams alone would allow when the TTFB limit is what stopped it.
    """
    rows = [r for engine_rows in by_engine.values() for r in engine_rows]
    caps, lines = {}, []
    for name, rs in by_engine.items():
        results = [(r["rate"], r["underrun_share"], r["ttfb_ms_p99"]) for r in rs]
        caps[name] = gap_free_capacity(results, max_ttfb_p99_ms=CAPACITY_TTFB_P99_MS)
        streams_only = gap_free_capacity(results)
        lines.append(capacity_line(rs[0]["engine"] if rs else name, caps[name], audio_per_request_s, streams_only))
    return "\n".join([open_table(rows), *lines]), caps


def capacity_line(
    engine: str, capacity: float | None, audio_per_request_s: float, streams_only: float | None = None
) -> str:
    """The gap-free capacity of one engine, in arrivals and audio seconds per second (and, when
    different, the rate its streams alone would allow, without the TTFB limit)."""
    limits = f"<= 1% of streams underrun, TTFB p99 < {CAPACITY_TTFB_P99_MS:g} ms"
    if capacity is None:
        line = f"{engine}: gap-free capacity ({limits}) below the lowest tested rate"
    else:
        line = (
            f"{engine}: gap-free capacity ({limits}) >= {capacity:g} arrivals/s "
            f"({capacity * audio_per_request_s:.0f} audio s per s)"
        )
    if streams_only is not None and streams_only != capacity:
        line += f"; without the TTFB limit >= {streams_only:g} arrivals/s"
    return line


def _rule(title: str, fill: str = "-") -> str:
    return title.center(WIDTH, fill) if title else fill * WIDTH


def seed_block(summary: dict[str, Any], concurrency: int, wall_s: float) -> str:
    """The HTTP result in the layout of the seed's ``benchmark.py`` (two-level-server-readme.md)."""
    lines = [
        "=" * WIDTH,
        "TTS BENCHMARK RESULTS".center(WIDTH),
        "=" * WIDTH,
        "",
        _rule("CONFIGURATION"),
        f"  Total Requests:      {summary['requests']}",
        f"  Concurrency:         {concurrency}",
        f"  Wall Clock Time:     {wall_s:.2f}s",
    ]
    if summary.get("rejected_503") or summary.get("errors"):
        lines.append(f"  Rejected (503):      {summary['rejected_503']}")
        lines.append(f"  Other errors:        {summary['errors']}")
    lines += [
        "",
        _rule("TIME TO FIRST BYTE (TTFB)"),
        f"  P50:    {_f(summary['ttfb_ms_p50']):>8} ms",
        f"  P90:    {_f(summary['ttfb_ms_p90']):>8} ms",
        f"  P95:    {_f(summary['ttfb_ms_p95']):>8} ms",
        "",
        _rule("REAL-TIME FACTOR (RTF) - lower is better"),
        f"  P50:    {_f(summary['rtf_p50'], '.3f'):>8}x",
        f"  P90:    {_f(summary['rtf_p90'], '.3f'):>8}x",
        f"  P95:    {_f(summary['rtf_p95'], '.3f'):>8}x",
        "",
        _rule("THROUGHPUT"),
        f"  Total Audio Generated:  {summary['audio_s']:8.1f} s",
        f"  Aggregate XRT:          {_f(summary['audio_s_per_s'], '8.2f')}x real-time",
        "",
    ]
    p95 = summary["rtf_p95"]
    if isinstance(p95, float) and not math.isnan(p95) and p95 < 1.0:
        lines.append("✅ REAL-TIME CAPABLE: P95 RTF < 1.0")
    else:
        lines.append(f"❌ NOT REAL-TIME CAPABLE: P95 RTF = {_f(p95, '.3f')}")
    lines.append("=" * WIDTH)
    return "\n".join(lines)


def stage_table(stages: dict[str, dict[str, Any]]) -> str:
    """One level's server stages (see :func:`perf.metrics.summarize_stages`): a column per stage, rows p50 / p90 / n.

    Stages go across so that a level adds three lines under its block; ``n`` shows a stage that
    only some responses reported. Empty when there are no stages (the server sent no ``Server-Timing``).
    """
    if not stages:
        return ""
    rows = [[key, *(_f(s[key], ".2f") for s in stages.values())] for key in ("p50", "p90")]
    rows.append(["n", *(str(s["n"]) for s in stages.values())])
    return _table(["ms", *stages], rows)


def stage_levels_table(levels: Sequence[dict[str, Any]]) -> str:
    """Median milliseconds per server stage, one line per concurrency level (how the breakdown grows with load).

    Args:
        levels: ``{"concurrency": int, "server_timing_ms": {stage: {"p50": ...}}}`` per level; a stage
            missing from a level reads ``-``.

    Returns:
        The table, stages in the server's order (unknown names after it); empty when no level has stages.
    """
    names = stage_order(level["server_timing_ms"] for level in levels)
    if not names:
        return ""
    rows = [
        [
            str(level["concurrency"]),
            *(_f(level["server_timing_ms"].get(name, {}).get("p50"), ".2f") for name in names),
        ]
        for level in levels
    ]
    return _table(["conc", *names], rows)


def profile_table(profile: dict[str, Any]) -> str:
    """Per-step host and device milliseconds by named range (see :mod:`perf.profiling`)."""
    header = ["range", "host ms/step", "host share", "GPU busy ms/step", "GPU busy share", "GPU span ms/step"]
    host_total = profile["host_ms_per_step"]
    dev_total = profile["device_ms_per_step"]
    rows = []
    for name, r in profile["ranges"].items():
        rows.append(
            [
                name,
                _f(r["host_ms"], ".3f"),
                _f(r["host_ms"] / host_total if host_total else None, ".1%"),
                _f(r["device_ms"], ".3f"),
                _f(r["device_ms"] / dev_total if dev_total else None, ".1%"),
                _f(r.get("device_span_ms"), ".3f"),
            ]
        )
    rows.append(
        ["step (total)", _f(host_total, ".3f"), "100.0%", _f(dev_total, ".3f"), "100.0%" if dev_total else "-", "-"]
    )
    return _table(header, rows)


def ipc_lines(ipc: dict[str, Any]) -> str:
    """The engine process's IPC figures per step message (µs: mean / p50 / p99)."""
    out = []
    for key in ("latency_us", "queue_us", "send_us", "receive_us", "handoff_us"):
        s = ipc.get(key, {})
        if s.get("count"):
            out.append(f"  {key:<12} {s['mean']:9.1f} / {s['p50']:9.1f} / {s['p99']:9.1f}   ({s['count']} messages)")
    audio = ipc.get("audio_bytes", {})
    if audio.get("count"):
        out.append(f"  audio bytes per message (mean): {audio['mean']:.0f}")
    return "\n".join(out)


def _pq(row: dict[str, Any], key: str) -> str:
    value = row.get(key) or {}
    return f"{_f(value.get('p50'))} / {_f(value.get('p99'))}"


def session_line(row: dict[str, Any]) -> str:
    """One run of a session level, as it ends."""
    return (
        f"sessions {row['concurrency']} (run {row['run']}): {row['ok']}/{row['sessions']} ok, first audio"
        f" {_pq(row, 'first_audio_ms')} ms, join gap {_pq(row, 'join_gap_ms')} ms, clear"
        f" {_pq(row, 'clear_to_cleared_ms')} ms" + (f"; errors {row['errors']}" if row["errors"] else "")
    )


def session_table(rows: Sequence[dict[str, Any]]) -> str:
    """Every run of every session level (see :mod:`perf.sessions` for what each column measures)."""
    header = [
        "sessions",
        "run",
        "ok",
        "first audio",
        "boundary->audio",
        "server ttfa",
        "of it behind",
        "of it queued",
        "join gap",
        "joins >20ms",
        "clear->cleared",
        "audio after clear",
        "click max",
        "seam silence ms",
    ]
    body = [
        [
            str(r["concurrency"]),
            str(r["run"]),
            f"{r['ok']}/{r['sessions']}",
            _pq(r, "first_audio_ms"),
            _pq(r, "boundary_to_audio_ms"),
            _pq(r, "server_segment_ttfa_ms"),
            _pq(r, "server_segment_behind_ms"),
            _pq(r, "server_segment_queued_ms"),
            _pq(r, "join_gap_ms"),
            _f(r["joins_with_gap"], ".3f"),
            _pq(r, "clear_to_cleared_ms"),
            _pq(r, "audio_after_clear_ms"),
            _f(r["join_click_max"], ".2f"),
            _f(r["join_silence_ms_max"]),
        ]
        for r in rows
    ]
    return _table(header, body)


def cold_start_table(starts: Sequence[dict[str, Any]]) -> str:
    """Per start and level: time to /ready, the first run's TTFB against the warm median, the longest gap."""
    header = [
        "start",
        "to /ready s",
        "conc",
        "first TTFB p50 / max ms",
        "warm TTFB p50 ms",
        "first / warm",
        "longest gap ms",
        "ok",
    ]
    rows = []
    for start in starts:
        for i, level in enumerate(start["levels"]):
            first, warm = level["first"], level["warm"]
            rows.append(
                [
                    start["label"] if i == 0 else "",
                    _f(start["ready_s"]) if i == 0 else "",
                    str(level["concurrency"]),
                    f"{_f(first['ttfb_ms_p50'])} / {_f(first['ttfb_ms_max'])}",
                    _spread(warm, "ttfb_ms_p50"),
                    _f(level["first_over_warm"], ".2f"),
                    _f(first["max_gap_ms_max"]),
                    "yes" if level["ok"] else "NO",
                ]
            )
    return _table(header, rows)


def jsonable(x: Any) -> Any:
    """NaN/inf → null, tuples/paths → lists/strings (strict JSON)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    return x


def write_json(path: Path, result: dict[str, Any]) -> None:
    """Write a run's results as strict JSON (``null`` for a figure that could not be measured)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(result), indent=1, allow_nan=False) + "\n")
