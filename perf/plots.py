"""Figures of benchmark results, drawn from what ``benchmark.py`` writes with ``--json`` (or the same dict in process).

One figure per kind of result found:

* ``concurrency`` (the engine / peer modes: ``ours``, ``peer``): time to first audio against
  concurrency (p50, bars: its min-max over the repeats, band: p50 to p99) beside audio seconds per
  second (bars: min-max over the repeats), one series per engine;
* ``http`` (``--server``): the same two panels for the server over HTTP;
* ``open-loop`` (``open_loop``): the share of streams that underrun against the arrival rate, with
  the gap-free capacity marked, beside time to first audio p50 (solid) and p99 (dashed);
* ``sessions`` (``session``): first audio and a sentence's end to its audio (p50 solid, p99 dashed)
  beside the playback gap at the joins, against the number of sessions (medians over the runs).

Several results (e.g. one JSON per engine or per GPU) go onto the same figures; a series is named
by its engine, and by its file too where two files have the same engine. Only this module needs
matplotlib, and it imports it only when it draws (the ``bench`` extra). Redraw from saved runs::

    python -m perf.plots ours.json peer.json --out figures/ [--format png svg] [--name voxcpm15-h100]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "KINDS",
    "Series",
    "draw_run",
    "figures",
    "load_result",
    "main",
    "series_by_kind",
    "write_figures",
    "write_run_figure",
]

KINDS = ("concurrency", "http", "open-loop", "sessions")
_NAN = float("nan")


@dataclass
class Series:
    """One engine's rows of one kind of result.

    Attributes:
        label: Legend name (the engine; ``engine (file)`` where two results share an engine).
        rows: The result's rows in x order (concurrency levels, or arrival rates).
        capacity: Open loop: the gap-free capacity (``capacity`` in the JSON: no underruns and TTFB p99 under
            300 ms, ``perf.report.open_loop_section``), if any.
        meta: The result's ``meta`` with its ``model`` and ``args`` (for the title).
        source: Where the result came from (a file's stem).
    """

    label: str
    rows: list[Mapping[str, Any]]
    capacity: float | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""


def load_result(path: str | Path) -> dict[str, Any]:
    """A ``benchmark.py --json`` file (``null`` stands for a figure that could not be measured)."""
    return json.loads(Path(path).read_text())


def _num(value: Any) -> float:
    """A plottable float: ``None`` (JSON's NaN) and anything not a number become NaN (a gap in the line)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else _NAN


def _session_levels(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Session rows are one per run: per level, the median over its runs of each ``{p50, p99}`` figure."""
    by_level: dict[int, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_level.setdefault(int(row["concurrency"]), []).append(row)
    out = []
    for level, runs in sorted(by_level.items()):
        merged: dict[str, Any] = {"concurrency": level, "runs": len(runs)}
        for key in ("first_audio_ms", "boundary_to_audio_ms", "join_gap_ms"):
            merged[key] = {q: _median([_num((r.get(key) or {}).get(q)) for r in runs]) for q in ("p50", "p99")}
        out.append(merged)
    return out


def _median(values: list[float]) -> float:
    finite = sorted(v for v in values if math.isfinite(v))
    if not finite:
        return _NAN
    mid = len(finite) // 2
    return finite[mid] if len(finite) % 2 else (finite[mid - 1] + finite[mid]) / 2


def series_by_kind(results: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, list[Series]]:
    """The series of every kind in ``results`` (``(source name, result dict)`` pairs), in :data:`KINDS` order."""
    found: dict[str, list[Series]] = {kind: [] for kind in KINDS}
    for source, data in results:
        meta = {**data.get("meta", {}), "model": data.get("model", {}), "args": data.get("args", {})}
        parts: list[tuple[str, str, Sequence[Mapping[str, Any]], float | None]] = []  # kind, label, rows, capacity
        for key in ("ours", "peer"):
            if data.get(key):
                parts.append(("concurrency", data[key][0].get("engine", key), data[key], None))
        if data.get("http"):
            parts.append(("http", "server", data["http"], None))
        for name, rows in (data.get("open_loop") or {}).items():
            if rows:
                parts.append(("open-loop", rows[0].get("engine", name), rows, (data.get("capacity") or {}).get(name)))
        if data.get("session"):
            parts.append(("sessions", "sessions", _session_levels(data["session"]), None))
        for kind, label, rows, capacity in parts:
            ordered = sorted(rows, key=lambda r: _num(r.get("rate", r.get("concurrency"))))
            found[kind].append(Series(label, ordered, capacity, meta, source))
    for kind_series in found.values():  # the same engine from two files: say which file
        labels = [s.label for s in kind_series]
        for s in kind_series:
            if labels.count(s.label) > 1:
                s.label = f"{s.label} ({s.source})"
    return {kind: series for kind, series in found.items() if series}


def _title(kind: str, series: Sequence[Series]) -> str:
    """What was measured, where: the model, the request length, the device(s) and the date."""
    meta = series[0].meta
    model, args = meta.get("model") or {}, meta.get("args") or {}
    what = {
        "concurrency": "requests started together",
        "http": "streaming POST /generate",
        "open-loop": "Poisson arrivals",
        "sessions": "voice-agent sessions",
    }[kind]
    steps = args.get("steps")
    parts = [model.get("preset") or model.get("architecture") or "", what]
    if steps:
        parts.append(f"{steps} patches each" if kind != "sessions" else f"{steps}-patch segments")
    devices = sorted({str(s.meta.get("device_name", "")) for s in series} - {""})
    dates = sorted({str(s.meta.get("date", ""))[:10] for s in series} - {""})
    where = ", ".join(devices + dates[-1:])
    return " · ".join(p for p in parts if p) + (f"\n{where}" if where else "")


def _levels_axis(ax: Axes, xs: Sequence[float], label: str) -> None:
    """A log2 x axis ticked at exactly the measured levels (1, 16, 64, 128 read as such, not as powers)."""
    from matplotlib.ticker import FixedLocator, NullLocator

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(sorted(set(xs))))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{x:g}" for x in sorted(set(xs))])
    ax.set_xlabel(label)
    ax.grid(True, which="major", alpha=0.3)


def _ms_axis(ax: Axes, values: Sequence[float], label: str) -> None:
    """Milliseconds on a log axis where they span a decade or more (TTFA at 1 against 128 requests), else linear."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    finite = [v for v in values if math.isfinite(v) and v > 0]
    if finite and max(finite) >= 10 * min(finite):
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))  # 10, 100, not 10^1, 10^2
        ax.yaxis.set_minor_formatter(NullFormatter())
        label += " (log)"
    else:
        ax.set_ylim(bottom=0)
    ax.set_ylabel(label)


def _spread_bars(rows: Sequence[Mapping[str, Any]], key: str) -> list[list[float]]:
    """Error bars from a row's min-max over its repeats (``spread``), as distances below and above its median."""
    below, above = [], []
    for r in rows:
        mid = _num(r.get(key))
        low, high = (list((r.get("spread") or {}).get(key) or []) + [None, None])[:2]
        below.append(max(0.0, mid - _num(low)) if math.isfinite(_num(low)) else 0.0)
        above.append(max(0.0, _num(high) - mid) if math.isfinite(_num(high)) else 0.0)
    return [below, above]


def _closed_figure(kind: str, series: Sequence[Series]) -> Figure:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.4), dpi=120, layout="constrained")
    ttfa, tput = fig.subplots(1, 2)
    xs: list[float] = []
    for i, s in enumerate(series):
        color = f"C{i}"
        x = [_num(r["concurrency"]) for r in s.rows]
        xs += x
        p50 = [_num(r.get("ttfb_ms_p50")) for r in s.rows]
        p99 = [_num(r.get("ttfb_ms_p99")) for r in s.rows]
        # The line carries the label (the legend, the tests); the bars beside it are the spread over the repeats.
        ttfa.plot(x, p50, color=color, marker="o", label=s.label)
        ttfa.errorbar(x, p50, yerr=_spread_bars(s.rows, "ttfb_ms_p50"), fmt="none", ecolor=color, capsize=3)
        ttfa.fill_between(x, p50, p99, color=color, alpha=0.15, linewidth=0, label=f"{s.label} p50–p99")
        ttfa.plot(x, p99, color=color, linestyle=":", linewidth=1, label=f"{s.label} p99")
        rate = [_num(r.get("audio_s_per_s")) for r in s.rows]
        tput.plot(x, rate, color=color, marker="o", label=s.label)
        tput.errorbar(x, rate, yerr=_spread_bars(s.rows, "audio_s_per_s"), fmt="none", ecolor=color, capsize=3)
    runs = max((int(_num(r.get("repeats", 1))) for s in series for r in s.rows), default=1)
    bars = f" (bars: min-max of {runs} runs)" if runs > 1 else ""
    ms = [_num(r.get(k)) for s in series for r in s.rows for k in ("ttfb_ms_p50", "ttfb_ms_p99")]
    _ms_axis(ttfa, ms, "time to first audio, ms")
    ttfa.set_title("Time to first audio: p50" + bars + ", band to p99", fontsize=10)
    tput.set_ylabel("audio seconds per second")
    tput.set_ylim(bottom=0)
    tput.set_title("Throughput" + bars, fontsize=10)
    for ax in (ttfa, tput):
        _levels_axis(ax, xs, "concurrent requests")
        ax.legend(fontsize=8)
    fig.suptitle(_title(kind, series), fontsize=11)
    return fig


def _open_loop_figure(series: Sequence[Series]) -> Figure:
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator

    fig = Figure(figsize=(11, 4.4), dpi=120, layout="constrained")
    under, ttfa = fig.subplots(1, 2)
    xs: list[float] = []
    for i, s in enumerate(series):
        color = f"C{i}"
        x = [_num(r["rate"]) for r in s.rows]
        xs += x
        share = [100 * _num(r.get("underrun_share")) for r in s.rows]
        under.plot(x, share, color=color, marker="o", label=s.label, clip_on=False)  # 0% sits on the axis
        if s.capacity is not None:
            under.axvline(s.capacity, color=color, linestyle=":", label=f"{s.label}: gap-free ≥ {s.capacity:g}/s")
        ttfa.plot(x, [_num(r.get("ttfb_ms_p50")) for r in s.rows], color=color, marker="o", label=f"{s.label} p50")
        ttfa.plot(x, [_num(r.get("ttfb_ms_p99")) for r in s.rows], color=color, linestyle="--", label=f"{s.label} p99")
    under.axhline(1.0, color="grey", linewidth=0.8, linestyle="--", label="1% (gap-free limit)")
    under.set_ylabel("streams that underrun, %")
    under.set_ylim(bottom=0)
    under.set_title("Streams with an audible gap", fontsize=10)
    ms = [_num(r.get(k)) for s in series for r in s.rows for k in ("ttfb_ms_p50", "ttfb_ms_p99")]
    _ms_axis(ttfa, ms, "time to first audio, ms")
    ttfa.set_title("Time to first audio from arrival", fontsize=10)
    for ax in (under, ttfa):
        ax.xaxis.set_major_locator(FixedLocator(sorted(set(xs))))  # ticks at the rates measured
        ax.set_xlabel("arrivals per second")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(_title("open-loop", series), fontsize=11)
    return fig


def _sessions_figure(series: Sequence[Series]) -> Figure:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.4), dpi=120, layout="constrained")
    first, gaps = fig.subplots(1, 2)
    xs: list[float] = []
    for i, s in enumerate(series):
        x = [_num(r["concurrency"]) for r in s.rows]
        xs += x
        for j, (ax, key, what) in enumerate(
            (
                (first, "first_audio_ms", "first audio"),
                (first, "boundary_to_audio_ms", "sentence end → audio"),
                (gaps, "join_gap_ms", "gap at a join"),
            )
        ):
            color = f"C{2 * i + j}" if ax is first else f"C{i}"
            name = f"{s.label}: {what}" if len(series) > 1 else what
            ax.plot(x, [_num(r[key]["p50"]) for r in s.rows], color=color, marker="o", label=f"{name} p50")
            ax.plot(x, [_num(r[key]["p99"]) for r in s.rows], color=color, linestyle="--", label=f"{name} p99")
    first.set_ylabel("ms")
    first.set_title("To audio (median of the runs)", fontsize=10)
    gaps.set_ylabel("playback gap, ms")
    gaps.set_title("Silence heard where segments join", fontsize=10)
    for ax in (first, gaps):
        _levels_axis(ax, xs, "concurrent sessions")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    fig.suptitle(_title("sessions", series), fontsize=11)
    return fig


def figures(results: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, Figure]:
    """One matplotlib Figure per kind of result in ``results`` (see the module docstring), keyed by kind."""
    out: dict[str, Figure] = {}
    for kind, series in series_by_kind(results).items():
        if kind in ("concurrency", "http"):
            out[kind] = _closed_figure(kind, series)
        elif kind == "open-loop":
            out[kind] = _open_loop_figure(series)
        else:
            out[kind] = _sessions_figure(series)
    return out


def write_figures(
    results: Sequence[tuple[str, Mapping[str, Any]]], out_dir: str | Path, name: str, formats: Sequence[str] = ("png",)
) -> list[Path]:
    """Write ``<out_dir>/<name>-<kind>.<format>`` for every figure of ``results``; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for kind, fig in figures(results).items():
        for fmt in formats:
            path = out / f"{name}-{kind}.{fmt}"
            fig.savefig(path, format=fmt)
            written.append(path)
    return written


def write_run_figure(result: Mapping[str, Any], path: str | Path) -> list[Path]:
    """``benchmark.py``'s figure of one run at ``path`` (its suffix, ``.png`` or ``.svg``, is the format).

    A run has one kind of result (its mode); should it have more, the others go beside it as
    ``<stem>-<kind><suffix>``. Nothing is written for a run without a kind that has a figure.
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for i, (kind, fig) in enumerate(figures([(path.stem, result)]).items()):
        target = path if i == 0 else path.with_name(f"{path.stem}-{kind}{path.suffix}")
        fig.savefig(target, format=fmt)
        written.append(target)
    return written


def draw_run(path: str | Path, result: Mapping[str, Any]) -> None:
    """``benchmark.py``'s figure of its run, said on stdout; a missing matplotlib only skips it (the
    default figure beside ``--json``: an asked-for ``--plot`` is refused before the run)."""
    if importlib.util.find_spec("matplotlib") is None:
        print("no figure: matplotlib is not installed (pip install -e '.[bench]')", file=sys.stderr)
        return
    for written in write_run_figure(result, path):
        print(f"wrote {written}")


def main(argv: list[str] | None = None) -> int:
    """``python -m perf.plots RESULT.json... --out DIR``: redraw the figures of saved runs."""
    ap = argparse.ArgumentParser(prog="python -m perf.plots", description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, nargs="+", help="benchmark.py --json files; all go onto the same figures")
    ap.add_argument("--out", type=Path, required=True, help="directory for the figures")
    ap.add_argument("--name", help="file name prefix (default: the first file's stem): <name>-<kind>.<format>")
    ap.add_argument("--format", nargs="+", choices=["png", "svg", "pdf"], default=["png"], help="default png")
    args = ap.parse_args(argv)
    try:
        results = [(p.stem, load_result(p)) for p in args.results]
    except (OSError, json.JSONDecodeError) as exc:
        print(f"perf.plots: {exc}", file=sys.stderr)
        return 1
    written = write_figures(results, args.out, args.name or args.results[0].stem, args.format)
    if not written:
        print("perf.plots: no concurrency, http, open-loop or session results in these files", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
