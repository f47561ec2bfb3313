"""The drain holds however the signal arrives, and ends on time (issue 15, items 4, 5 and 6).

The server runs in a process group of its own, and the signal goes to the whole group, as Ctrl-C in
a terminal, ``kill -TERM -PGID`` and systemd's default ``KillMode`` deliver it: the engine process
gets it too. In the second case a wrapper (``main.sh``'s trap) forwards a SIGTERM right after the
group's SIGINT: still one drain, not "a second signal, cut everything off now". In flight when it
arrives: a stream whose client reads, a client that never reads, and a client that sent its headers
but no body. ``--shutdown-grace 3``, and send and body timeouts far longer than that, so only the
drain can end them.

Checked: the reading stream keeps receiving audio through the grace period (the engine did not die
with the signal) and then breaks off (an incomplete chunked transfer, not a clean end that would
look like a whole file); the body-less client gets an answer or a closed connection; the process
exits 0 within about a second of the grace period, with no traceback in its log; the engine process
is gone with it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.reliability.raw_http import connect, post_json, read_response, request_head
from tests.server_process import start, stop

GRACE_S = 3.0
STEPS = 400  # far more than the grace period lets the tiny model make


class Reader(threading.Thread):
    """Reads one long stream, noting when each piece arrives and how the transfer ended."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.arrivals: list[float] = []
        self.ending = "open"
        self.started = threading.Event()

    def run(self) -> None:
        body = {"target_text": "Keep talking.", "max_generate_length": STEPS, "response_format": "pcm"}
        try:
            with httpx.Client(base_url=self.url, timeout=60) as client:
                with client.stream("POST", "/generate", json=body) as response:
                    assert response.status_code == 200
                    for chunk in response.iter_raw():
                        if chunk:
                            self.arrivals.append(time.monotonic())
                            self.started.set()
            self.ending = "clean"
        except httpx.RemoteProtocolError:
            self.ending = "broken"
        except httpx.TransportError as exc:
            self.ending = f"transport error {type(exc).__name__}"


@pytest.mark.parametrize(
    "forwarded",
    [(signal.SIGTERM, None), (signal.SIGINT, signal.SIGTERM)],
    ids=["SIGTERM", "SIGINT-then-forwarded-SIGTERM"],  # the second: Ctrl-C under main.sh, whose trap forwards it
)
def test_a_signal_to_the_process_group_drains_and_exits_on_time(tiny_v2: Path, tmp_path: Path, forwarded):
    signum, then = forwarded
    extra = (
        "--voices-dir", "", "--max-num-seqs", "2", "--max-model-len", "512", "--shutdown-grace", str(GRACE_S),
        "--send-timeout", "120", "--body-timeout", "120",
    )  # fmt: skip
    server = start(tiny_v2, tmp_path / "server.log", *extra, new_session=True)
    engine_pid = server.engine_pid()
    reader = Reader(server.url)
    stalled = connect(server.url, rcvbuf=4096)
    bodyless = connect(server.url)
    try:
        reader.start()
        post_json(stalled, "/generate", {"target_text": "Nobody reads.", "max_generate_length": STEPS})
        bodyless.sendall(request_head("/generate", 50))
        assert reader.started.wait(30)
        with server.client() as client:
            end = time.monotonic() + 10
            while client.get("/status").json()["connections"]["active"] < 3 and time.monotonic() < end:
                time.sleep(0.05)
        time.sleep(1.0)  # the stalled client's socket buffers fill
        os.killpg(server.process.pid, signum)
        signalled = time.monotonic()
        if then is not None:  # the same shutdown, delivered a second time: not a hurry
            time.sleep(0.05)
            server.process.send_signal(then)
        code = server.process.wait(timeout=GRACE_S + 15)
        exited = time.monotonic() - signalled
        reader.join(10)
        answer = read_response(bodyless, 2)
    finally:
        stop(server)
        stalled.close()
        bodyless.close()
    log = server.log()
    assert code == 0, log
    assert exited < GRACE_S + 2.5, f"exited {exited:.1f} s after the signal (grace {GRACE_S} s)"
    # The stream went on through the grace period, then broke off.
    assert reader.arrivals and reader.arrivals[-1] - signalled > GRACE_S - 1.0, reader.arrivals[-1] - signalled
    assert reader.ending == "broken", reader.ending
    assert answer.status in (None, 503), answer.head  # told the server is stopping, or just closed
    assert "Traceback" not in log and "CancelledError" not in log, log
    assert "cut off 3 request(s)" in log, log
    end = time.monotonic() + 5
    while Path(f"/proc/{engine_pid}").exists() and time.monotonic() < end:
        time.sleep(0.05)
    assert not Path(f"/proc/{engine_pid}").exists() or "zombie" in Path(f"/proc/{engine_pid}/status").read_text()
