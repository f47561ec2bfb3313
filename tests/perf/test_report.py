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
