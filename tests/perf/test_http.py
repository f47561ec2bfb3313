"""HTTP mode: the load generator against a mock transport (503s, errors), against a tiny app on hypercorn
(the raw client's framing, keep-alive and worker processes) and against ``python -m tts_server``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from perf.http_client import HttpLoad, RemoteProtocolError, http_level, parse_server_timing, run_http
from perf.http_wire import _Chunked
from perf.metrics import SERVER_STAGES, summarize_closed, summarize_stages
from tests.perf.tiny_http_app import N_SAMPLES, RATE, free_port

ROOT = Path(__file__).resolve().parents[2]


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


# --- The raw client against a real hypercorn on loopback ------------------------------------------


def _run(url: str, **kw: object) -> tuple[list, float]:
    return asyncio.run(run_http(url, load=HttpLoad(max_generate_length=5), **kw))


def test_raw_client_reads_chunked_and_content_length_bodies(app):
    url, seen = app
    # The app really answers in both framings (else this test would test one of them twice).
    chunked = httpx.post(f"{url}/chunked/generate", json={"target_text": "x"})
    length = httpx.post(f"{url}/length/generate", json={"target_text": "x"})
    assert chunked.headers["transfer-encoding"] == "chunked" and "content-length" not in chunked.headers
    assert length.headers["content-length"] == str(2 * N_SAMPLES) and "transfer-encoding" not in length.headers

    traces, wall = _run(f"{url}/chunked", num_requests=2, concurrency=2, workers=1, tag="a")
    for t in traces:
        assert t.ok, t.error
        assert t.audio_s == pytest.approx(N_SAMPLES / RATE)
        # Whole samples per piece: the 3-byte piece is 1 sample, the 1 byte after it completes the 2nd.
        samples = [d * RATE for d in t.durations]
        assert samples[:2] == [pytest.approx(1.0), pytest.approx(1.0)] and len(samples) >= 3, samples
        assert all(s == pytest.approx(round(s)) for s in samples)
        assert t.arrivals == sorted(t.arrivals) and t.arrivals[1] - t.arrivals[0] > 0.03  # pieces as they came
        assert 0 < t.ttfb < 5 and t.server_timing == {"queue": 0.5, "total": 2.0}
    assert [t.request_id for t in traces] == ["ah0", "ah1"]
    assert wall >= max(t.arrivals[-1] for t in traces) - min(t.submitted for t in traces) - 1e-6

    traces, _ = _run(f"{url}/length", num_requests=2, concurrency=1, workers=1)
    assert [t.error for t in traces] == [None, None]
    assert [t.audio_s for t in traces] == [pytest.approx(N_SAMPLES / RATE)] * 2
    assert all(t.server_timing == {} for t in traces)
    assert [text for route, _, text in seen if route in ("chunked", "length")][-1].startswith("Request 1.")


def test_raw_client_keeps_one_connection_per_slot_alive(app):
    url, seen = app
    traces, _ = _run(f"{url}/length", num_requests=3, concurrency=1, workers=1)
    assert all(t.ok for t in traces), [t.error for t in traces]
    assert len(seen) == 3 and len({port for _, port, _ in seen}) == 1  # one connection, reused
    seen.clear()
    traces, _ = _run(f"{url}/chunked", num_requests=4, concurrency=2, workers=1)
    assert all(t.ok for t in traces) and len({port for _, port, _ in seen}) == 2
    seen.clear()
    # "Connection: close": the slot reconnects for each request, and every request still succeeds.
    traces, _ = _run(f"{url}/close", num_requests=3, concurrency=1, workers=1)
    assert all(t.ok for t in traces), [t.error for t in traces]
    assert len({port for _, port, _ in seen}) == 3


def test_raw_client_counts_503_apart_from_error_statuses(app):
    url, seen = app
    traces, wall = _run(f"{url}/mix", num_requests=6, concurrency=1, workers=1, tag="mix-")
    errors = [t.error for t in traces]
    assert errors[0] is None and errors[3] is None and errors[1] == errors[4] == "503", errors
    assert errors[2] == errors[5] == 'HTTP 422: {"error":"bad voice"}', errors
    assert traces[1].server_timing == {} and not traces[1].arrivals
    s = summarize_closed(traces, wall)
    assert (s["ok"], s["rejected_503"], s["errors"]) == (2, 2, 2)
    # The error answers were read to their end: the one connection carried all six requests.
    assert len(seen) == 6 and len({port for _, port, _ in seen}) == 1


def test_raw_client_records_network_errors():
    traces, _ = _run(f"http://127.0.0.1:{free_port()}", num_requests=2, concurrency=2, workers=1)
    assert [t.error.split(":")[0] for t in traces] == ["ConnectionRefusedError"] * 2
    with pytest.raises(ValueError, match="workers"):
        _run("http://127.0.0.1:1", num_requests=1, concurrency=1, workers=0)


def test_raw_client_workers_start_together_and_return_every_trace(app):
    url, seen = app
    traces, wall = _run(f"{url}/length", num_requests=4, concurrency=4, workers=2, tag="p")
    assert [t.request_id for t in traces] == ["ph0", "ph1", "ph2", "ph3"]
    assert all(t.ok for t in traces), [t.error for t in traces]
    sent = [t.submitted for t in traces]
    assert max(sent) - min(sent) < 0.5  # the barrier: both processes send at once
    assert 0 < wall and wall >= max(t.latency for t in traces) - 1e-6
    assert len({port for _, port, _ in seen}) == 4
    seen.clear()
    # The warm-up runs in the same processes and its connections carry on into the level. Its one
    # request (~0.8 s) is worker 0's: worker 1, idle meanwhile, must still wait for it to start the level.
    traces, _ = http_level(f"{url}/slow", num_requests=4, concurrency=4, load=HttpLoad(), warmup=1, workers=2)
    assert [t.request_id for t in traces] == ["h0", "h1", "h2", "h3"] and all(t.ok for t in traces)
    sent = [t.submitted for t in traces]
    assert max(sent) - min(sent) < 0.3
    assert len(seen) == 5 and len({port for _, port, _ in seen}) == 4


@pytest.mark.parametrize("cut", [1, 2, 3, 5, 8, 13])
def test_chunked_framing_split_anywhere(cut):
    body = bytes(range(256)) * 3
    wire = b"3;ext=1\r\n" + body[:3] + b"\r\n" + b"2FD\r\n" + body[3:] + b"\r\n0\r\nX-Trailer: y\r\n\r\n"
    decoder, got = _Chunked(), bytearray()
    for i in range(0, len(wire), cut):
        assert not decoder.done
        for piece in decoder.feed(wire[i : i + cut]):
            got += piece
    assert decoder.done and decoder.reusable and bytes(got) == body
    with pytest.raises(RemoteProtocolError):
        _Chunked().feed(b"zz\r\n")
