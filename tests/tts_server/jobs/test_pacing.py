"""Tests of tts_server.jobs.pacing: when a streamed response's write is due."""

import pytest

from tts_server.jobs.pacing import PacingConfig, WritePacer

RATE = 1000  # samples per second: a sample is a millisecond


def pacer(write: float = 0.5, lead: float = 1.0, most: int = 10_000) -> WritePacer:
    return WritePacer(PacingConfig(write_seconds=write, lead_seconds=lead), RATE, most)


def test_the_first_write_is_due_at_once_and_nothing_is_due_with_nothing_waiting():
    p = pacer()
    assert not p.due(0, 0.0)
    assert p.due(1, 0.0)


def test_ahead_of_playback_a_write_waits_for_a_full_block():
    p = pacer(write=0.5, lead=1.0)
    p.wrote(3000, now=10.0)  # 3 s sent at t=10: the lead is 3 s
    assert not p.due(499, 10.1)
    assert p.due(500, 10.1)


def test_waiting_audio_is_due_when_the_lead_falls_to_the_setting():
    p = pacer(write=0.5, lead=1.0)
    p.wrote(3000, now=10.0)
    assert p.deadline() == pytest.approx(12.0)  # 3 s sent, played out at 13; 1 s before that
    assert not p.due(100, 11.99)
    assert p.due(100, 12.0)
    p.wrote(100, now=12.0)
    assert p.deadline() == pytest.approx(12.1)


def test_without_a_lead_every_chunk_is_due():
    p = pacer(write=0.5, lead=1.0)
    p.wrote(100, now=0.0)  # 0.1 s sent: below the 1 s lead from the start
    assert p.due(1, 0.0)


def test_a_write_of_zero_seconds_writes_every_chunk():
    p = pacer(write=0.0, lead=0.0)
    p.wrote(100_000, now=0.0)
    assert p.due(1, 0.0)


def test_a_block_larger_than_the_buffer_is_due_at_the_buffer_bound():
    p = pacer(write=60.0, lead=0.0, most=2000)
    p.wrote(100_000, now=0.0)
    assert not p.due(1999, 1.0)
    assert p.due(2000, 1.0)


@pytest.mark.parametrize("field", ["write_seconds", "lead_seconds"])
@pytest.mark.parametrize("value", [-0.1, float("inf"), float("nan")])
def test_settings_out_of_range_are_refused_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        PacingConfig(**{field: value})


def test_audio_written_after_the_listener_ran_dry_plays_from_its_arrival():
    p = pacer(write=0.5, lead=1.0)
    p.wrote(2000, now=0.0)  # plays out at 2
    p.wrote(2000, now=5.0)  # silence from 2 to 5: this plays from 5 to 7
    assert p.deadline() == pytest.approx(6.0)
    assert not p.due(100, 5.9) and p.due(100, 6.0)
