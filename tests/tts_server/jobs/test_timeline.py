"""``tts_server.jobs.timeline``: stage times from stamps, with missing stamps merged, and the header."""

from __future__ import annotations

import pytest

from tts_server.jobs.timeline import STAGES, Timeline


def _full(start: float = 100.0) -> Timeline:
    return Timeline(
        received=start,
        admitted=start + 0.001,
        parsed=start + 0.002,
        text_ready=start + 0.004,
        slot=start + 0.005,
        engine=(start + 0.006, start + 0.008, start + 0.010, start + 0.020, start + 0.025),
        first_chunk=start + 0.026,
        first_byte=start + 0.027,
    )


def test_every_stage_in_order_with_its_duration():
    stages = _full().stages()
    assert [name for name, _ in stages] == list(STAGES)
    durations = dict(stages)
    assert durations["prefill"] == pytest.approx(0.010) and durations["vae"] == pytest.approx(0.005)
    assert sum(durations.values()) == pytest.approx(_full().total()) == pytest.approx(0.027)


def test_a_missing_stamp_merges_its_time_into_the_next_known_stage():
    marks = _full()
    marks.engine = None  # an engine that sent no stamps: its time shows up in "return"
    durations = dict(marks.stages())
    assert "prefill" not in durations and durations["return"] == pytest.approx(0.021)
    assert sum(durations.values()) == pytest.approx(marks.total())


def test_the_server_timing_header_lists_known_stages_in_milliseconds_then_the_total():
    marks = _full()
    marks.first_byte = 0.0  # a stream's header goes out before its first byte
    header = marks.server_timing()
    assert header.startswith("admission;dur=1.00, parse;dur=1.00, text;dur=2.00,")
    assert "send" not in header and header.endswith("return;dur=1.00, total;dur=26.00")


def test_nothing_known_is_an_empty_breakdown():
    assert Timeline().stages() == [] and Timeline().total() == 0.0
    assert Timeline().server_timing() == "total;dur=0.00"
