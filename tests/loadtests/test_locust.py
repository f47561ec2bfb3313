"""A short real locust run (``loadtests/run.sh``) against ``python -m tts_server`` on the tiny model.

The server runs as a subprocess on loopback with one registered voice, so the run mixes voices,
formats and cancellations; the run's thresholds must all pass and its CSV and HTML must exist.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile

from tests.server_process import running

# Only look for locust: importing it here would gevent-monkey-patch the test process.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("locust") is None, reason="locust is not installed")

ROOT = Path(__file__).resolve().parents[2]
RUN_SH = ROOT / "loadtests" / "run.sh"
SLOTS = 4


@pytest.fixture(scope="module")
def server(tiny_v1: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real server process on the tiny model (connection cap 2 x slots) with one voice; yields its URL."""
    extra = (
        "--max-num-seqs", str(SLOTS), "--max-num-batched-tokens", "256", "--max-model-len", "1024",
        "--voices-dir", "", "--default-max-generate-length", "5", "--shutdown-grace", "2", "--log-level", "warning",
    )  # fmt: skip
    with running(tiny_v1, tmp_path_factory.mktemp("server") / "server.log", *extra) as proc:
        url = proc.url
        wav = io.BytesIO()
        soundfile.write(wav, (np.random.default_rng(0).standard_normal(16000) * 0.1), 16000, format="WAV")
        voice = {"name": "alice", "prompt_audio": base64.b64encode(wav.getvalue()).decode(), "prompt_text": "Hello."}
        assert httpx.post(f"{url}/voices", json=voice, timeout=60).status_code == 201
        yield url


def test_short_locust_run_meets_its_thresholds(server: str, tmp_path: Path) -> None:
    out = tmp_path / "locust"
    env = {
        **os.environ,
        "LOCUST": f"{sys.executable} -m locust",
        "PYTHON": sys.executable,
        "TTFB_P95_MS": "15000",  # a shared 2-core box: the test checks the plumbing, not the speed
        "MIN_STREAMS": "3",
        "LOAD_CANCEL_FRACTION": "0.3",
        "LOAD_MAX_GENERATE_LENGTH": "4",
        "LOAD_CANCEL_LENGTH": "100",
    }
    command = ["bash", str(RUN_SH), "--host", server, "--out", str(out), "--users", "3", "--run-time", "6s"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    report = (out / "thresholds.txt").read_text() if (out / "thresholds.txt").exists() else ""
    assert result.returncode == 0, f"{report}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert report and "FAIL" not in report
    for name in ("run_stats.csv", "run_failures.csv", "run_stats_history.csv", "report.html", "run.json"):
        assert (out / name).stat().st_size > 0, name
    assert "ttfb" in (out / "run_stats.csv").read_text()
    entries = {(e["method"], e["name"]): e for e in json.loads((out / "run.json").read_text())}
    assert entries[("STREAM", "ttfb")]["num_requests"] >= 3
    assert ("STREAM", "complete") in entries
    # The server is idle again: every admitted stream ended (completed or cancelled).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status = httpx.get(f"{server}/status").json()
        if status["connections"]["active"] == 0 and status["inference"]["active"] == 0:
            break
        time.sleep(0.1)
    assert status["connections"]["active"] == 0 and status["inference"]["active"] == 0


def test_session_users_report_first_audio_and_barge_in(server: str, tmp_path: Path) -> None:
    out = tmp_path / "sessions"
    env = {
        **os.environ,
        "LOCUST": f"{sys.executable} -m locust",
        "PYTHON": sys.executable,
        "SESSION_TTFA_P95_MS": "15000",  # a shared 2-core box: the plumbing, not the speed
        "BARGE_IN_P95_MS": "5000",
        "LOAD_BARGE_IN_FRACTION": "1",
        "LOAD_WORD_DELAY_S": "0.005",
        "LOAD_MAX_GENERATE_LENGTH": "3",
    }
    command = ["bash", str(RUN_SH), "--host", server, "--out", str(out), "--users", "2", "--run-time", "6s"]
    command += ["--user", "SessionUser"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    report = (out / "thresholds.txt").read_text() if (out / "thresholds.txt").exists() else ""
    assert result.returncode == 0, f"{report}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert "p95 barge-in" in report and "p95 TTFB" not in report  # the session checks, not the stream ones
    entries = {(e["method"], e["name"]): e for e in json.loads((out / "run.json").read_text())}
    for name in ("ttfa", "segment", "barge-in", "complete"):
        assert entries[("SESSION", name)]["num_requests"] >= 1, name
    assert entries[("SESSION", "complete")]["num_failures"] == 0
