"""Printed tables of the server's stages: one level's p50/p90/n, and p50 per level."""

from __future__ import annotations

from perf import report


def _lines(table: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()]


def test_stage_table_has_a_column_per_stage_in_the_given_order():
    stages = {
        "queue": {"p50": 0.02, "p90": 1.25, "n": 8},
        "prefill": {"p50": 12.0, "p90": 15.456, "n": 8},
        "total": {"p50": 23.3, "p90": 30.0, "n": 6},
    }
    lines = _lines(report.stage_table(stages))
    assert lines[0] == ["ms", "queue", "prefill", "total"]
    assert lines[2] == ["p50", "0.02", "12.00", "23.30"]
    assert lines[3] == ["p90", "1.25", "15.46", "30.00"]
    assert lines[4] == ["n", "8", "8", "6"]
    assert len(lines) == 5
    assert report.stage_table({}) == ""


def test_stage_levels_table_orders_stages_and_marks_missing_ones():
    levels = [
        {"concurrency": 1, "server_timing_ms": {"queue": {"p50": 0.5}, "total": {"p50": 20.0}, "gpu": {"p50": 1.0}}},
        # An older server at the next level: no breakdown; a third level adds a known stage.
        {"concurrency": 16, "server_timing_ms": {}},
        {"concurrency": 64, "server_timing_ms": {"admission": {"p50": 0.1}, "total": {"p50": 99.0}}},
    ]
    lines = _lines(report.stage_levels_table(levels))
    # Known stages in the server's order (admission before queue, though it came later), unknown ones after.
    assert lines[0] == ["conc", "admission", "queue", "total", "gpu"]
    assert lines[2] == ["1", "-", "0.50", "20.00", "1.00"]
    assert lines[3] == ["16", "-", "-", "-", "-"]
    assert lines[4] == ["64", "0.10", "-", "99.00", "-"]
    assert report.stage_levels_table([{"concurrency": 1, "server_timing_ms": {}}]) == ""


def test_repeats_table_gives_median_and_range():
    row = {"engine": "ours", "concurrency": 16, "repeats": 3, "ttfb_ms_p50": 30.0, "ttfb_ms_p90": 41.0,
           "audio_s_per_s": 300.0, "max_gap_ms_p99": 25.0,
           "spread": {"ttfb_ms_p50": [28.0, 35.5], "ttfb_ms_p90": [40.0, 44.0], "audio_s_per_s": [290.0, 310.0],
                      "max_gap_ms_p99": [20.0, 30.0]}}  # fmt: skip
    lines = _lines(report.repeats_table([row, {**row, "repeats": 1, "engine": "peer"}]))
    assert lines[0] == ["engine", "conc", "runs", "TTFB p50 ms", "TTFB p90 ms", "audio s/s", "max gap p99 ms"]
    assert lines[2] == ["ours", "16", "3", "30.0 (28.0-35.5)", "41.0 (40.0-44.0)", "300.0 (290.0-310.0)",
                        "25.0 (20.0-30.0)"]  # fmt: skip
    assert lines[3][3] == "30.0"  # one run: no range


def test_cold_start_table_flags_a_level_that_misses():
    warm = {"ttfb_ms_p50": 10.0, "repeats": 3, "spread": {"ttfb_ms_p50": [9.0, 11.0]}}
    first_ok = {"ttfb_ms_p50": 12.0, "ttfb_ms_max": 14.0, "max_gap_ms_max": 30.0}
    first_slow = {"ttfb_ms_p50": 480.0, "ttfb_ms_max": 650.0, "max_gap_ms_max": 585.0}
    starts = [
        {"label": "empty-cache", "ready_s": 41.25, "levels": [
            {"concurrency": 1, "first": first_ok, "warm": warm, "first_over_warm": 1.2, "ok": True},
            {"concurrency": 4, "first": first_slow, "warm": warm, "first_over_warm": 48.0, "ok": False},
        ]},
    ]  # fmt: skip
    lines = _lines(report.cold_start_table(starts))
    assert lines[2] == ["empty-cache", "41.2", "1", "12.0 / 14.0", "10.0 (9.0-11.0)", "1.20", "30.0", "yes"]
    assert lines[3] == ["", "", "4", "480.0 / 650.0", "10.0 (9.0-11.0)", "48.00", "585.0", "NO"]


def _open_row(rate, p99, underrun=0.0):
    return {"engine": "server", "rate": rate, "ok": 10, "requests": 10, "ttfb_ms_p50": p99 / 2, "ttfb_ms_p99": p99,
            "max_gap_ms_p50": 20.0, "max_gap_ms_p99": 40.0, "underrun_share": underrun,
            "memory": {"kind": "none", "gib": float("nan")}}  # fmt: skip


def test_open_loop_capacity_holds_the_ttfb_p99_limit_and_says_what_the_streams_alone_allow():
    rows = [_open_row(60, 60.4), _open_row(95, 248.1), _open_row(110, 1342.4)]
    text, caps = report.open_loop_section({"server": rows}, 8.0)
    assert caps == {"server": 95}
    assert text.splitlines()[-1] == (
        "server: gap-free capacity (<= 1% of streams underrun, TTFB p99 < 300 ms) >= 95 arrivals/s "
        "(760 audio s per s); without the TTFB limit >= 110 arrivals/s"
    )
    text, caps = report.open_loop_section({"server": [_open_row(60, 400.0)]}, 8.0)
    assert caps == {"server": None}
    assert text.endswith("below the lowest tested rate; without the TTFB limit >= 60 arrivals/s")
    text, caps = report.open_loop_section({"server": [_open_row(60, 50.0), _open_row(80, 60.0, underrun=0.2)]}, 8.0)
    assert caps == {"server": 60} and text.endswith("(480 audio s per s)")  # the streams stopped it: one number
