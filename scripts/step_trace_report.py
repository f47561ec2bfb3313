"""What the engine loop did during each burst of requests, from a ``scripts/step_trace`` trace.

    python scripts/step_trace_report.py TRACE_DIR [--min-burst 64] [--window-ms 400]

A burst is a run of ``add`` events with no gap over 200 ms before it. For each burst of at least
``--min-burst`` requests it prints: how many adds, over how long, their total time, and then one
line per step launched in the first ``--window-ms`` after the burst's first add: the offset (ms),
rows, prompt rows, LM positions, requests waiting when it was scheduled, and the offset at which
the ``Engine.step`` call that launched it returned (with asynchronous scheduling a step is often
launched by the call before the one that returns its patches).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

_GAP_S = 0.2
_WAVE_GAP_S = 0.05  # a wave's requests leave together; the level's warm-up request goes alone before it


def _load(directory: Path) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for path in directory.glob("*.jsonl"):
        with path.open() as f:
            file_records = [json.loads(line) for line in f]
        records.extend(file_records)
    return sorted(records, key=lambda r: r.get("t", r.get("sent", r.get("received", 0.0))))


def _bursts(records: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    bursts: list[list[dict[str, Any]]] = []
    last = None
    for r in records:
        if r["ev"] != "add":
            continue
        if last is None or r["t"] - last > _GAP_S:
            bursts.append([])
        bursts[-1].append(r)
        last = r["t"]
    return bursts


_POINTS = (
    "received",
    "admitted",
    "parsed",
    "text_ready",
    "slot",
    "added",
    "queued",
    "scheduled",
    "first_patch",
    "first_audio",
    "first_chunk",
    "first_byte",
    "client_first",
)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _request_points(records: list[dict[str, Any]]) -> list[list[dict[str, float]]]:
    """Per wave of client sends (no gap over 200 ms), each request's points as absolute stamps."""
    servers = {r["key"]: r for r in records if r["ev"] == "server" and r["key"]}
    clients = sorted((r for r in records if r["ev"] == "client" and r["first"]), key=lambda r: r["sent"])
    waves: list[list[dict[str, float]]] = []
    last = None
    for c in clients:
        s = servers.get(c["key"])
        if s is None:
            continue
        if last is None or c["sent"] - last > _WAVE_GAP_S:
            waves.append([])
        last = c["sent"]
        engine = s["engine"] or [0.0] * 5
        points = {"sent": c["sent"], "client_first": c["first"]}
        points.update({k: s[k] for k in ("received", "admitted", "parsed", "text_ready", "slot")})
        points.update(zip(("added", "queued", "scheduled", "first_patch", "first_audio"), engine, strict=True))
        points.update({"first_chunk": s["first_chunk"], "first_byte": s["first_byte"]})
        waves[-1].append(points)
    return waves


def _print_waves(records: list[dict[str, Any]], min_burst: int) -> None:
    for wave in _request_points(records):
        if len(wave) < min_burst:
            continue
        t0 = min(p["sent"] for p in wave)
        print(f"\n## wave of {len(wave)} requests: ms after the wave's first send (p10 / p50 / p90)")
        for name in ("sent", *_POINTS):
            offsets = [(p[name] - t0) * 1e3 for p in wave if p[name]]
            if offsets:
                qs = " / ".join(f"{_pct(offsets, q):7.1f}" for q in (0.1, 0.5, 0.9))
                print(f"  {name:12s} {qs}")


def main() -> None:
    """Print each large burst's adds and the steps that followed them."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace_dir", type=Path)
    ap.add_argument("--min-burst", type=int, default=64)
    ap.add_argument("--window-ms", type=float, default=400.0)
    args = ap.parse_args()
    records = _load(args.trace_dir)
    _print_waves(records, args.min_burst)
    for burst in _bursts(records):
        if len(burst) < args.min_burst:
            continue
        t0 = burst[0]["t"]
        span = (burst[-1]["t"] - t0) * 1e3
        busy = sum(r["dt"] for r in burst) * 1e3
        print(f"\n## burst of {len(burst)} adds over {span:.1f} ms ({busy:.1f} ms adding)")
        print("  ms   rows prompt positions waiting | step call returns at ms")
        end = t0 + args.window_ms / 1e3
        for r in records:
            if "t" not in r or not t0 <= r["t"] <= end:
                continue
            off = (r["t"] - t0) * 1e3
            if r["ev"] == "launch":
                print(f"{off:6.1f} {r['rows']:5d} {r['prompt_rows']:6d} {r['positions']:9d} {r['waiting']:7d}")
            elif r["ev"] == "step":
                print(f"{'':38s}| {off + r['dt'] * 1e3:6.1f} ({r['outputs']} outputs)")


if __name__ == "__main__":
    main()
