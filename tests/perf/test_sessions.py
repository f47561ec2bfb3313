"""Session mode: the join measure on known signals, the playback simulation, and agents against ``python -m
tts_server`` (tiny VoxCPM1.5 layout, CPU)."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

import benchmark
from perf.sessions import REPLY, SessionLoad, SessionTrace, join_metrics, run_session_level, summarize_sessions

RATE = 16000


def sine(seconds: float, start: float = 0.0, hz: float = 220.0) -> np.ndarray:
    t = start + np.arange(round(seconds * RATE)) / RATE
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_a_seamless_join_is_no_sharper_than_the_signal():
    m = join_metrics(sine(0.2), sine(0.2, start=0.2), RATE)
    assert m["click"] <= 1.01 and m["silence_ms"] == 0.0


def test_a_jump_at_the_join_is_a_click():
    m = join_metrics(sine(0.2), -sine(0.2, start=0.2 + 1 / 880), RATE)  # a phase flip at the seam
    assert m["click"] > 5


def test_silence_spanning_the_join_is_measured():
    before = np.concatenate([sine(0.2), np.zeros(RATE // 10, np.float32)])  # 100 ms of silence at its end
    after = np.concatenate([np.zeros(RATE // 20, np.float32), sine(0.2)])  # 50 ms at its start
    assert join_metrics(before, after, RATE)["silence_ms"] == pytest.approx(150.0, abs=0.1)  # + the sine's 0


def test_int16_audio_is_scaled():
    pcm = (sine(0.2) * 32767).astype(np.int16)
    assert join_metrics(pcm, pcm, RATE)["silence_ms"] == 0.0


def test_join_gaps_follow_playback():
    trace = SessionTrace(sample_rate=RATE)
    # segment 0: 1 s of audio at t=0; segment 1 arrives at 0.5 s (in time), segment 2 at 3.0 s (0.5 s late)
    trace.arrivals = [(0.0, RATE, False), (0.5, RATE, True), (3.0, RATE, True)]
    assert trace.join_gaps() == [0.0, pytest.approx(1.0)]


def test_agents_against_the_real_server(server, tmp_path):
    url = server.replace("http://", "ws://") + "/v1/tts/stream"
    traces, wall = asyncio.run(run_session_level(url, 2, SessionLoad(steps=3, word_delay_s=0.005), "t-"))
    assert [t.error for t in traces] == [None, None]
    for t in traces:
        spoken = [s.text for s in t.segments]
        assert spoken[: len(REPLY)] == list(REPLY) and len(spoken) == len(REPLY) + 1  # then the interrupted one
        assert all(s.samples == 3 * 7056 for s in t.segments[: len(REPLY)])  # tiny-v1: 7056 samples a patch
        assert t.first_audio_s > 0 and t.cleared_at >= t.clear_sent_at
        assert len(t.boundary_to_audio()) == len(REPLY) and len(t.join_gaps()) == len(
            REPLY
        )  # into the interrupted one too
    summary = summarize_sessions(traces, wall)
    assert summary["ok"] == 2 and summary["clear_to_cleared_ms"]["p50"] >= 0
    assert summary["join_silence_ms_max"] >= 0 and summary["audio_s"] > 0

    out = tmp_path / "s.json"
    argv = [
        "--mode",
        "session",
        "--server",
        server,
        "--concurrency",
        "1",
        "--steps",
        "2",
        "--warmup",
        "0",
        "--repeats",
        "1",
    ]
    assert benchmark.main([*argv, "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["session"]
    assert row["concurrency"] == 1 and row["ok"] == 1 and row["first_audio_ms"]["p50"] > 0
