"""Clients that stall cannot hold the server hostage (issue 15, items 1, 2 and 9).

A server of 2 inference slots and 6 connection places, with short limits so the tests are quick:
``--send-timeout 2`` (a write the client does not take for 2 s aborts the connection) and
``--body-timeout 2`` (a request body must be complete 2 s after the request began).

- Two clients that never read (4 KiB receive buffers) and ask for long streams: their connections
  are aborted, their slots and places come back, and the next request is served at once (before,
  the two held every slot forever and it got ``503 queue timeout`` after 60 s).
- A client that reads slower than the audio is made does not hold a slot once generation is over:
  its slot serves the next request while it is still reading.
- Six clients that send headers and no body, and one that sends a byte every half second, fill
  every place (the next request gets 503 at once), then get 408 and free them.
- A client that leaves during its upload is logged at INFO, without an error or a traceback.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.reliability.raw_http import connect, post_json, read_response, request_head
from tests.server_process import Server, running

SLOTS = 2
PLACES = 6
TIMEOUT_S = 2
LONG_STEPS = 400  # ~6 MB of pcm: more than loopback's socket buffers hold


@pytest.fixture(scope="module")
def strict_server(tiny_v2: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("slow-clients") / "server.log"
    extra = (
        "--voices-dir", "", "--max-num-seqs", str(SLOTS), "--max-concurrent-connections", str(PLACES),
        "--max-model-len", "512", "--send-timeout", str(TIMEOUT_S), "--body-timeout", str(TIMEOUT_S),
    )  # fmt: skip
    with running(tiny_v2, log, *extra) as served:
        yield served


def _status(server: Server) -> dict:
    with server.client() as client:
        return client.get("/status").json()


def _wait(server: Server, done, timeout_s: float) -> dict:
    end = time.monotonic() + timeout_s
    while True:
        status = _status(server)
        if done(status) or time.monotonic() > end:
            return status
        time.sleep(0.1)


def _metric(server: Server, name: str) -> float:
    with server.client() as client:
        text = client.get("/metrics").text
    found = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def _short_request(server: Server) -> httpx.Response:
    with server.client(timeout=30) as client:
        body = {"target_text": "Next in line.", "max_generate_length": 2, "response_format": "pcm"}
        return client.post("/generate", json=body)


def test_clients_that_never_read_lose_their_slots_and_places(strict_server: Server):
    server = strict_server
    stalls_before = _metric(server, 'tts_connections_cut_total{reason="send_stall"}')
    body = {"target_text": "Nobody reads this.", "max_generate_length": LONG_STEPS, "response_format": "pcm"}
    sockets = []
    for _ in range(SLOTS):
        sock = connect(server.url, rcvbuf=4096)
        post_json(sock, "/generate", body)
        sockets.append(sock)
    try:
        held = _wait(server, lambda s: s["inference"]["active"] == SLOTS, 10)
        assert held["inference"]["active"] == SLOTS  # both hold a slot: every slot is taken
        freed = _wait(server, lambda s: s["connections"]["active"] == 0 and s["inference"]["active"] == 0, 40)
        assert freed["connections"]["active"] == 0 and freed["inference"]["active"] == 0, freed
        began = time.monotonic()
        response = _short_request(server)
        assert response.status_code == 200 and response.content
        assert time.monotonic() - began < 10  # served, not queued behind the stalled clients
        for sock in sockets:  # the server gave up on them: a reset, or the end of what it had sent
            answer = read_response(sock, 5)
            assert answer.status == 200 and (answer.reset or len(answer.body) < 2 * LONG_STEPS * 7680)
    finally:
        for sock in sockets:
            sock.close()
    assert _metric(server, 'tts_connections_cut_total{reason="send_stall"}') - stalls_before == SLOTS
    assert server.wait_settled()["engine"]["running"] == 0
    assert "took no data for 2 s: connection aborted" in server.log()


def test_a_slow_reader_gives_its_slot_back_when_generation_ends(tiny_v2: Path, tmp_path: Path):
    extra = (
        "--voices-dir", "", "--max-num-seqs", "1", "--max-model-len", "512", "--send-timeout", "60",
        "--stream-buffer-seconds", "600",
    )  # fmt: skip
    with running(tiny_v2, tmp_path / "server.log", *extra) as server:
        sock = connect(server.url, rcvbuf=4096)
        try:
            body = {"target_text": "Read me slowly.", "max_generate_length": LONG_STEPS, "response_format": "pcm"}
            post_json(sock, "/generate", body)
            assert _wait(server, lambda s: s["inference"]["active"] == 1, 10)["inference"]["active"] == 1
            # Generation ends while the client has read next to nothing: the one slot is free
            # again, the connection (and the unsent audio) still there.
            status = _wait(server, lambda s: s["inference"]["active"] == 0 and s["engine"]["running"] == 0, 30)
            assert status["inference"]["active"] == 0 and status["connections"]["active"] == 1, status
            response = _short_request(server)  # served on the slot the slow reader gave back
            assert response.status_code == 200 and response.content
            answer = read_response(sock, 30)  # and the slow reader still gets all of its audio
            assert answer.status == 200 and not answer.reset
            assert answer.body.endswith(b"0\r\n\r\n")  # a complete chunked body
        finally:
            sock.close()


def test_bodies_that_never_come_time_out_with_408(strict_server: Server):
    server = strict_server
    cuts_before = _metric(server, 'tts_connections_cut_total{reason="body_timeout"}')
    silent = []
    for _ in range(PLACES - 1):
        sock = connect(server.url)
        sock.sendall(request_head("/generate", 50))  # and then nothing
        silent.append(sock)
    trickle = connect(server.url)
    trickle.sendall(request_head("/generate", 50))
    try:
        _wait(server, lambda s: s["connections"]["active"] == PLACES, 5)
        full = _short_request(server)
        assert full.status_code == 503 and full.headers["retry-after"]  # every place is taken...
        refused = connect(server.url)  # ...and a refused client's missing body is not waited for
        try:
            began = time.monotonic()
            refused.sendall(request_head("/generate", 50))
            assert read_response(refused, 10).status == 503
            assert time.monotonic() - began < 3
        finally:
            refused.close()
        end = time.monotonic() + 2 * TIMEOUT_S
        while time.monotonic() < end:  # ...and one client keeps its body trickling in, until cut off
            try:
                trickle.sendall(b" ")
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.5)
        for sock in [*silent, trickle]:
            answer = read_response(sock, 10)
            assert answer.status == 408, answer.head
            assert b"--body-timeout" in answer.body
        freed = _wait(server, lambda s: s["connections"]["active"] == 0, 5)
        assert freed["connections"]["active"] == 0
        assert _short_request(server).status_code == 200
    finally:
        for sock in [*silent, trickle]:
            sock.close()
    assert _metric(server, 'tts_connections_cut_total{reason="body_timeout"}') - cuts_before == PLACES


def test_a_client_leaving_during_its_upload_is_not_an_error(strict_server: Server):
    server = strict_server
    logged = len(server.log())
    sock = connect(server.url)
    sock.sendall(request_head("/generate", 1000) + b'{"target_text": "half')
    time.sleep(0.3)
    sock.close()
    status = _wait(server, lambda s: s["connections"]["active"] == 0, 5)
    assert status["connections"]["active"] == 0
    time.sleep(0.2)
    log = server.log()[logged:]
    assert "the client disconnected before its body was complete" in log
    assert "ERROR" not in log and "Traceback" not in log, log
