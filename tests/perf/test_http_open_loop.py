"""The open loop over HTTP: the raw client's arrivals against a tiny app on hypercorn (send times,
connection reuse, worker processes) and ``benchmark.py --mode open-loop --server`` against ``python -m tts_server``."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from perf.http_client import HttpLoad
from perf.http_workers import run_raw_open
from perf.metrics import poisson_arrivals
from tests.perf.tiny_http_app import N_SAMPLES, RATE

ROOT = Path(__file__).resolve().parents[2]


def _open(url: str, offsets: list[float], **kw: object) -> tuple[list, float]:
    return asyncio.run(run_raw_open(url, HttpLoad(max_generate_length=5), offsets, "ol-", **kw))


def test_each_request_leaves_at_its_time_and_reuses_a_free_connection(app):
    url, seen = app
    # /slow streams for ~0.85 s: 0 and 1 overlap (two connections); 2 comes after both ended and takes one of them.
    offsets = [0.0, 0.1, 1.5]
    traces, wall = _open(f"{url}/slow", offsets, workers=1, preopen=1)
    assert [t.request_id for t in traces] == ["ol-o0", "ol-o1", "ol-o2"]
    assert all(t.ok for t in traces), [t.error for t in traces]
    start = traces[0].submitted
    assert [t.submitted - start for t in traces] == pytest.approx(offsets)  # TTFB counts from the scheduled time
    assert traces[2].arrivals[0] >= start + 1.5  # not sent early
    assert all(0 < t.ttfb < 0.5 for t in traces)  # nor late: the app answers at once
    assert [t.audio_s for t in traces] == [pytest.approx(N_SAMPLES / RATE)] * 3
    assert len(seen) == 3 and len({port for _, port, _ in seen}) == 2
    assert wall >= 1.5


def test_arrivals_spread_over_worker_processes_come_back_in_order(app):
    url, seen = app
    offsets = [0.0, 0.02, 0.04, 0.3, 0.32]
    traces, _ = _open(f"{url}/length", offsets, workers=2)
    assert [t.request_id for t in traces] == [f"ol-o{i}" for i in range(5)]
    assert all(t.ok for t in traces), [t.error for t in traces]
    sent = [t.submitted for t in traces]
    # Both processes keep one clock (the barrier, then perf_counter, system-wide): the schedule holds across them.
    assert [s - sent[0] for s in sent] == pytest.approx(offsets, abs=0.25)
    assert len(seen) == 5
    assert _open(f"{url}/length", [], workers=2) == ([], 0.0)


def test_benchmark_open_loop_against_the_real_server(server, tmp_path):
    out = tmp_path / "ol.json"
    args = ["--mode", "open-loop", "--server", server, "--rates", "3", "--duration", "1", "--steps", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "benchmark.py", *args, "--warmup", "1", "--json", str(out), "--no-plot"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Open loop over HTTP" in proc.stdout and "gap-free capacity" in proc.stdout
    data = json.loads(out.read_text())
    (row,) = data["open_loop"]["server"]
    # The in-process open loop's arrivals for the same seed; the server (2 connections) may refuse some.
    assert row["requests"] == len(poisson_arrivals(3, 1, 0)) and row["rate"] == 3
    assert row["ok"] + row["rejected_503"] == row["requests"] and row["ok"] >= 1, row["error_kinds"]
    assert row["ttfb_ms_p50"] > 0 and row["audio_s"] == pytest.approx(row["ok"] * 2 * 4 * 1764 / 44100)
    assert "total" in row["server_timing_ms"] and "capacity" in data


def test_open_loop_over_http_refuses_in_process_flags():
    for extra in (["--compare"], ["--preset", "tiny-v1"]):
        proc = subprocess.run(
            [sys.executable, "benchmark.py", "--mode", "open-loop", "--server", "http://127.0.0.1:1", *extra],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 2 and "runs against that server alone" in proc.stderr
