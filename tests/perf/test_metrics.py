"""Metrics math on hand-made timelines: percentiles, TTFB/RTF, gaps, underruns, capacity, arrivals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from perf.metrics import (
    SERVER_STAGES,
    StreamTrace,
    combine_repeats,
    gap_free_capacity,
    mean,
    percentile,
    poisson_arrivals,
    stage_order,
    summarize_closed,
    summarize_open,
    summarize_stages,
)


def _trace(
    arrivals: list[float],
    seconds: float = 0.16,
    submitted: float = 0.0,
    error: str | None = None,
    timing: dict[str, float] | None = None,
):
    t = StreamTrace("r", submitted, error=error, server_timing=timing or {})
    for at in arrivals:
        t.add_chunk(at, seconds)
    return t


def test_percentile_matches_numpy_and_handles_empty_and_nan():
    data = [5.0, 1.0, 3.0, 2.0, 4.0, 10.0]
    for q in (0, 50, 90, 95, 99, 100):
        assert percentile(data, q) == pytest.approx(float(np.percentile(data, q)))
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))
    assert percentile([1.0, float("nan"), 3.0], 50) == 2.0
    assert mean([1.0, 2.0, float("nan")]) == 1.5 and math.isnan(mean([]))


def test_ttfb_rtf_gap_of_one_stream():
    t = _trace([0.2, 0.3, 0.5, 0.6], seconds=0.16, submitted=0.1)
    assert t.ttfb == pytest.approx(0.1)
    assert t.audio_s == pytest.approx(0.64)
    assert t.rtf == pytest.approx((0.6 - 0.1) / 0.64)
    assert t.max_gap == pytest.approx(0.2)
    assert _trace([1.0]).max_gap == 0.0
    empty = StreamTrace("e", 0.0)
    assert math.isnan(empty.ttfb) and math.isnan(empty.rtf) and math.isnan(empty.max_gap) and not empty.ok


def test_underrun_on_hand_made_timelines():
    # Playback starts at the first arrival (1.0); chunk k is due by 1.0 + 0.16 * k.
    on_time = _trace([1.0, 1.1, 1.3, 1.48])  # due: -, 1.16, 1.32, 1.48 (exactly on time is fine)
    assert on_time.late_chunks() == 0 and not on_time.underrun and on_time.stall_s() == 0.0
    late = _trace([1.0, 1.1, 1.3, 1.5])  # the last chunk comes 20 ms after the audio ran out
    assert late.late_chunks() == 1 and late.underrun
    assert late.stall_s() == pytest.approx(0.02)
    # A long first gap makes every later chunk late in the no-rebuffer model; rebuffering stalls once.
    burst = _trace([1.0, 2.0, 2.01, 2.02])
    assert burst.late_chunks() == 3
    assert burst.stall_s() == pytest.approx(2.0 - 1.16)
    # Chunks that arrive faster than real time never underrun, however slow the first byte.
    fast = _trace([5.0, 5.01, 5.02, 5.03], submitted=0.0)
    assert not fast.underrun and fast.ttfb == 5.0


def test_summaries_count_503_apart_and_compute_throughput():
    traces = [
        _trace([0.1, 0.2], submitted=0.0),
        _trace([0.3, 0.4], submitted=0.0),
        _trace([], error="503"),
        _trace([], error="HTTP 500: boom"),
    ]
    s = summarize_closed(traces, wall_s=0.4)
    assert (s["requests"], s["ok"], s["rejected_503"], s["errors"]) == (4, 2, 1, 1)
    assert s["audio_s"] == pytest.approx(0.64)
    assert s["audio_s_per_s"] == pytest.approx(1.6)
    assert s["ttfb_ms_p50"] == pytest.approx(200.0)
    assert s["rtf_mean"] == pytest.approx(((0.2 / 0.32) + (0.4 / 0.32)) / 2)
    assert s["underrun_share"] == 0.0
    o = summarize_open([_trace([1.0, 1.1]), _trace([1.0, 1.5])], rate=4.0, duration_s=10.0)
    assert o["underrun_share"] == 0.5 and o["max_gap_ms_p50"] == pytest.approx(300.0)
    assert o["offered_audio_s_per_s"] == pytest.approx(4 * 0.32)


def test_gap_free_capacity():
    issue = [(4, 0.0), (8, 0.0), (16, 0.065), (24, 0.99)]  # the peer's open-loop table
    assert gap_free_capacity(issue) == 8
    assert gap_free_capacity([(24, 0.0), (8, 0.005), (16, 0.01)]) == 24  # order-free; 1% is still ok
    assert gap_free_capacity([(4, 0.0), (8, 0.02), (16, 0.0)]) == 4  # a failing rate caps it
    assert gap_free_capacity([(4, 0.5)]) is None
    assert gap_free_capacity([]) is None
    # issue 19's bar: TTFB p99 under 300 ms as well; the streams alone allow 110, the p99 only 95
    bar = [(60, 0.0, 60.4), (80, 0.0, 112.5), (95, 0.0, 248.1), (110, 0.0, 1342.4)]
    assert gap_free_capacity(bar) == 110 and gap_free_capacity(bar, max_ttfb_p99_ms=300) == 95
    assert gap_free_capacity([(4, 0.0, 300.0)], max_ttfb_p99_ms=300) is None  # "under" is strict
    assert gap_free_capacity([(4, 0.0)], max_ttfb_p99_ms=300) is None  # an unknown p99 does not pass
    assert gap_free_capacity([(4, 0.0, float("nan"))], max_ttfb_p99_ms=300) is None


def test_poisson_arrivals():
    a = poisson_arrivals(20.0, 50.0, seed=3)
    assert a == sorted(a) and all(0 <= t < 50.0 for t in a)
    assert abs(len(a) - 1000) < 150  # mean 1000, sd ~32
    gaps = np.diff(a)
    assert gaps.mean() == pytest.approx(1 / 20, rel=0.1)
    assert poisson_arrivals(20.0, 50.0, seed=3) == a
    assert poisson_arrivals(0.0, 10.0, seed=1) == []


def test_stage_order_known_first_then_unknown_as_they_appear():
    assert stage_order([["total", "gpu", "queue"], ["zz", "admission", "gpu"]]) == [
        "admission",
        "queue",
        "total",
        "gpu",
        "zz",
    ]
    assert stage_order([list(reversed(SERVER_STAGES))]) == list(SERVER_STAGES)
    assert stage_order([]) == []


def test_summarize_stages_per_level():
    traces = [
        _trace([1.0], timing={"total": 10.0, "queue": 1.0, "prefill": 5.0}),
        _trace([1.0], timing={"queue": 3.0, "total": 30.0, "prefill": 7.0, "gpu-sync": 0.5}),
        _trace([1.0], timing={"queue": 2.0, "total": 20.0}),  # an older server: no engine stages
        _trace([1.0]),  # no header: counts for nothing
        _trace([], error="503", timing={"admission": 0.1, "total": 0.1}),  # failed: left out
    ]
    s = summarize_stages(traces)
    assert list(s) == ["queue", "prefill", "total", "gpu-sync"]
    assert s["queue"] == {"p50": 2.0, "p90": pytest.approx(2.8), "n": 3}
    assert s["total"]["p50"] == 20.0 and s["total"]["p90"] == pytest.approx(28.0)
    assert s["prefill"] == {"p50": 6.0, "p90": pytest.approx(6.8), "n": 2}
    assert s["gpu-sync"] == {"p50": 0.5, "p90": 0.5, "n": 1}
    assert summarize_stages([_trace([1.0]), _trace([], error="503", timing={"total": 1.0})]) == {}


def test_combine_repeats_takes_medians_adds_counts_and_keeps_the_spread():
    runs = [
        {"engine": "ours", "concurrency": 4, "requests": 4, "ok": 4, "errors": 0, "rejected_503": 0,
         "ttfb_ms_p50": 90.0, "audio_s_per_s": 10.0, "patches": 200, "memory": {"gib": 1.0}},
        {"engine": "ours", "concurrency": 4, "requests": 4, "ok": 3, "errors": 1, "rejected_503": 0,
         "ttfb_ms_p50": 12.0, "audio_s_per_s": 30.0, "patches": 200, "memory": {"gib": 2.0}},
        {"engine": "ours", "concurrency": 4, "requests": 4, "ok": 4, "errors": 0, "rejected_503": 2,
         "ttfb_ms_p50": 10.0, "audio_s_per_s": 31.0, "patches": 200, "memory": {"gib": 3.0}},
    ]  # fmt: skip
    row = combine_repeats(runs)
    # A slow first run (a warm-up artefact) does not make the figure; an error in any run is not hidden.
    assert row["ttfb_ms_p50"] == 12.0 and row["audio_s_per_s"] == 30.0 and row["patches"] == 200
    assert (row["requests"], row["ok"], row["errors"], row["rejected_503"]) == (12, 11, 1, 2)
    assert row["spread"]["ttfb_ms_p50"] == [10.0, 90.0] and row["spread"]["audio_s_per_s"] == [10.0, 31.0]
    assert math.isnan(row["spread"]["rtf_mean"][0])  # not measured: no spread, not zero
    assert row["repeats"] == 3 and [r["ttfb_ms_p50"] for r in row["runs"]] == [90.0, 12.0, 10.0]
    assert row["engine"] == "ours" and row["concurrency"] == 4 and row["memory"] == {"gib": 1.0}
    assert combine_repeats(runs[:1])["repeats"] == 1 and combine_repeats(runs[:1])["ttfb_ms_p50"] == 90.0
    with pytest.raises(ValueError):
        combine_repeats([])
