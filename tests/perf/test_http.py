"""HTTP mode: the load generator against a mock transport (503s, errors) and against ``python -m tts_server``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from perf.http_client import HttpLoad, http_level
from perf.metrics import summarize_closed

ROOT = Path(__file__).resolve().parents[2]
RATE = 16000


def _mock(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.read())
    assert body["response_format"] == "pcm" and body["max_generate_length"] == 5
    if body["target_text"].startswith(("Request 1.", "Request 3.")):
        return httpx.Response(503, json={"error": "busy"})
    if body["target_text"].startswith("Request 2."):
        return httpx.Response(400, json={"error": "bad"})
    pcm = np.zeros(RATE // 2, dtype="<i2").tobytes()  # 0.5 s
    return httpx.Response(200, headers={"X-Sample-Rate": str(RATE), "X-Request-Id": "x"}, content=pcm)


def test_http_level_counts_503_apart_with_a_mock_server():
    load = HttpLoad(max_generate_length=5, min_generate_length=5)
    assert load.body("t") == {
        "target_text": "t",
        "max_generate_length": 5,
        "temperature": 1.0,
        "cfg_value": 2.0,
        "response_format": "pcm",
        "min_generate_length": 5,
    }
    assert "min_generate_length" not in HttpLoad().body("t")
    traces, wall = http_level(
        "http://mock", num_requests=5, concurrency=2, load=load, warmup=1, transport=httpx.MockTransport(_mock)
    )
    s = summarize_closed(traces, wall)
    assert (s["requests"], s["ok"], s["rejected_503"], s["errors"]) == (5, 2, 2, 1)
    assert s["audio_s"] == pytest.approx(1.0)
    assert "HTTP 400" in traces[2].error and traces[1].error == "503"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_v1, tmp_path_factory):
    """``python -m tts_server`` on the tiny checkpoint (CPU), if this checkout has the server."""
    if not (ROOT / "tts_server" / "__main__.py").is_file():
        pytest.skip("tts_server/__main__.py is not in this checkout")
    port = _free_port()
    work = tmp_path_factory.mktemp("server")
    args = ["--model", str(tiny_v1), "--device", "cpu", "--port", str(port), "--host", "127.0.0.1"]
    args += [
        "--engine-threads",
        "1",
        "--voices-dir",
        str(work / "voices"),
        "--max-num-seqs",
        "2",
        "--max-concurrent-connections",
        "2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tts_server", *args],
        cwd=work,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"tts_server exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("tts_server did not become healthy in 90 s")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_http_mode_against_the_real_server(server):
    steps = 3
    load = HttpLoad(max_generate_length=steps, min_generate_length=steps)
    traces, wall = http_level(server, num_requests=4, concurrency=2, load=load, warmup=1)
    s = summarize_closed(traces, wall)
    assert s["ok"] == 4, [t.error for t in traces]
    per_patch = 4 * 1764 / 44100  # tiny-v1: VoxCPM1.5 layout, 7056 samples at 44.1 kHz
    for t in traces:
        assert t.audio_s == pytest.approx(steps * per_patch)
        assert t.ttfb > 0 and t.rtf > 0
    assert s["audio_s_per_s"] > 0 and s["rejected_503"] == 0


def test_connection_cap_shows_up_as_503s(server):
    load = HttpLoad(max_generate_length=3, min_generate_length=3)
    traces, wall = http_level(server, num_requests=12, concurrency=12, load=load)
    s = summarize_closed(traces, wall)
    assert s["rejected_503"] > 0 and s["ok"] + s["rejected_503"] == 12 and s["errors"] == 0
