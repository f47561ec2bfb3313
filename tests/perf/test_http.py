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

from perf.http_client import HttpLoad, http_level, parse_server_timing
from perf.metrics import SERVER_STAGES, summarize_closed, summarize_stages

ROOT = Path(__file__).resolve().parents[2]
RATE = 16000


def _mock(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.read())
    assert body["response_format"] == "pcm" and body["max_generate_length"] == 5
    if body["target_text"].startswith(("Request 1.", "Request 3.")):
        return httpx.Response(
            503, headers={"Server-Timing": "admission;dur=0.1, total;dur=0.1"}, json={"error": "busy"}
        )
    if body["target_text"].startswith("Request 2."):
        return httpx.Response(400, json={"error": "bad"})
    pcm = np.zeros(RATE // 2, dtype="<i2").tobytes()  # 0.5 s
    headers = [("X-Sample-Rate", str(RATE)), ("X-Request-Id", "x")]
    if body["target_text"].startswith("Request 0."):
        # Two header lines: one list, as if two layers of the server each added their metrics.
        headers += [("Server-Timing", "admission;dur=0.05, queue;dur=1.5"), ("Server-Timing", "total;dur=20")]
    return httpx.Response(200, headers=headers, content=pcm)


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
    # Request 0 carried the header on two lines, request 4 none; a 503's timings are not kept.
    assert traces[0].server_timing == {"admission": 0.05, "queue": 1.5, "total": 20.0}
    assert traces[4].server_timing == {} and traces[1].server_timing == {}
    assert summarize_stages(traces) == {
        "admission": {"p50": 0.05, "p90": 0.05, "n": 1},
        "queue": {"p50": 1.5, "p90": 1.5, "n": 1},
        "total": {"p50": 20.0, "p90": 20.0, "n": 1},
    }


def test_server_timing_well_formed_header():
    header = (
        "admission;dur=0.05, parse;dur=0.8, text;dur=0.3, queue;dur=0.02, submit;dur=0.4, prepare;dur=1.9, "
        "wait;dur=3.1, prefill;dur=12.0, vae;dur=4.2, return;dur=0.6, total;dur=23.3"
    )
    timing = parse_server_timing(header)
    assert list(timing) == [s for s in SERVER_STAGES if s not in ("send", "encode", "complete")]
    assert timing["admission"] == 0.05 and timing["prefill"] == 12.0 and timing["total"] == 23.3
    # Spec details: OWS around "=", any case of the names, a quoted dur, a desc holding "," and ";".
    assert parse_server_timing('Encode ; DUR = 7 ;desc="mp3, 128k; cbr", vae;dur="4.5"') == {"encode": 7.0, "vae": 4.5}
    assert parse_server_timing("x;dur=1e1,y;dur=.5,z;dur=3.") == {"x": 10.0, "y": 0.5, "z": 3.0}


def test_server_timing_missing_or_empty_header():
    assert parse_server_timing(None) == {}
    assert parse_server_timing("") == {}
    assert parse_server_timing(" , ,") == {}


def test_server_timing_malformed_entries_are_skipped_and_unknown_names_kept():
    header = ", ".join(
        [
            "parse;dur=0.8",
            "bad name;dur=1",  # not a token
            ";dur=2",  # no name
            "miss",  # a valid metric, but no duration to report
            "a;desc=x",
            "b;dur=",
            "c;dur=abc",
            "d;dur=-1",
            "e;dur=nan",
            "f;dur=inf",
            "g;dur=1_0",
            "h;dur=1e999",  # overflows to inf
            "i;dur 3",  # no "="
            'j;desc="unterminated, k;dur=4',  # the quote swallows the rest
        ]
    )
    assert parse_server_timing(header) == {"parse": 0.8}
    # Unknown names are kept; a repeated metric or dur counts the first time.
    header = "gpu-sync;dur=0.7, total;dur=5;dur=6, total;dur=9, TOTAL;dur=8, parse;dur=x, parse;dur=1"
    assert parse_server_timing(header) == {"gpu-sync": 0.7, "total": 5.0, "parse": 1.0}


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


def test_the_real_servers_server_timing_reads_as_its_stages(server):
    # The header lands in the server beside this client: until it does there is nothing to check.
    body = HttpLoad(max_generate_length=2, min_generate_length=2).body("Where the time goes.")
    resp = httpx.post(f"{server}/generate", json=body, timeout=60)
    assert resp.status_code == 200, resp.text[:300]
    raw = resp.headers.get("server-timing")
    if raw is None:
        pytest.skip("this server sends no Server-Timing header")
    timing = parse_server_timing(raw)
    # Every metric is one the benchmark knows (else its table order is stale) and none was dropped;
    # a stream's header leaves with the first audio, before any byte is written or a file encoded.
    assert "total" in timing and set(timing) <= set(SERVER_STAGES) - {"send", "encode", "complete"}, raw
    assert len(timing) == raw.count("dur="), raw
    assert all(ms <= timing["total"] + 0.1 for ms in timing.values()), raw  # stages lie within total (rounding)
