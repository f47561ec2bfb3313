"""Locust load test of ``POST /generate``: streamed speech, timed to the first audio byte and to the end.

Locust's own timing of a streamed request stops at the response headers, so each stream fires its
own request events (request type ``STREAM``):

- ``ttfb``: time to the first audio byte (after the 44-byte header of a WAV stream);
- ``complete``: the whole stream; a failure means a broken stream (transfer error, no audio);
- ``cancelled``: a stream this user cancelled via ``POST /cancel`` (ended early, cleanly).

A 503 is a rejection, not an error: it is reported as ``REJECT generate-503`` and the headers
request is marked a success. A 503 while this process never had ``cap`` streams open in the last
second (``cap`` = the server's connection cap from ``/status``) is a failure ``REJECT
unexpected-503``. Any other error status is a failure of ``POST generate [<format>]`` and is
also counted as ``ERROR http-<status>``.

Users: :class:`StreamingUser` (closed loop: one stream at a time, then a think time),
:class:`OpenLoopUser` (fires streams on a Poisson schedule without waiting for the previous one,
so queueing shows up in the latencies instead of slowing the arrivals) and
:class:`~session_user.SessionUser` (voice agents on ``/v1/tts/stream``: time to first audio and
barge-in latency; see ``session_user.py``). Pick one by naming it on the locust command line.
Voices (read from ``/voices`` at the start, plus the default voice),
formats and cancellations are mixed at random.

Environment: ``LOAD_FORMATS`` (comma list, default ``wav,pcm,mp3``), ``LOAD_CANCEL_FRACTION``
(default 0.2), ``LOAD_MAX_GENERATE_LENGTH`` (default 8), ``LOAD_CANCEL_LENGTH`` (patches asked for
by streams that will be cancelled, default 200), ``LOAD_WAIT_S`` (think time, default 0.2),
``LOAD_USER_RATE`` (Poisson arrivals per second per open-loop user, default 0.5),
``LOAD_API_KEY``, ``LOAD_SHAPE`` (``step`` or ``arrival``: use that shape of
``loadtests/shapes.py``; unset: the command line's ``-u``/``-r``).
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
import urllib.request
import uuid
from typing import Any

import gevent
from gevent.pool import Group
from locust import FastHttpUser, between, events, task
from locust.env import Environment

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from session_user import SessionUser  # beside this file; locust finds the users by name here

__all__ = ["OpenLoopUser", "SessionUser", "StreamingUser"]

WAV_HEADER_BYTES = 44
TEXTS = (
    "Hello there.",
    "The quick brown fox jumps over the lazy dog.",
    "Streaming speech, one patch at a time.",
    "Load tests show what averages hide.",
)
FORMATS = [f for f in os.environ.get("LOAD_FORMATS", "wav,pcm,mp3").split(",") if f]
CANCEL_FRACTION = float(os.environ.get("LOAD_CANCEL_FRACTION", "0.2"))
MAX_GENERATE_LENGTH = int(os.environ.get("LOAD_MAX_GENERATE_LENGTH", "8"))
CANCEL_LENGTH = int(os.environ.get("LOAD_CANCEL_LENGTH", "200"))
WAIT_S = float(os.environ.get("LOAD_WAIT_S", "0.2"))
USER_RATE = float(os.environ.get("LOAD_USER_RATE", "0.5"))
API_KEY = os.environ.get("LOAD_API_KEY", "")
SHAPE = os.environ.get("LOAD_SHAPE", "")

if SHAPE not in ("", "step", "arrival"):
    raise SystemExit(f"LOAD_SHAPE: {SHAPE!r} is neither 'step' nor 'arrival'")


class _Server:
    """What every user of this process shares: the voices, the cap, and the open streams."""

    voices: list[str | None] = [None]
    cap: int | None = None
    lock = threading.Lock()
    open_streams = 0
    last_at_cap = 0.0

    @classmethod
    def opened(cls) -> None:
        with cls.lock:
            cls.open_streams += 1
            if cls.cap is not None and cls.open_streams >= cls.cap:
                cls.last_at_cap = time.monotonic()

    @classmethod
    def closed(cls) -> None:
        with cls.lock:
            if cls.cap is not None and cls.open_streams >= cls.cap:
                cls.last_at_cap = time.monotonic()
            cls.open_streams -= 1

    @classmethod
    def rejection_expected(cls) -> bool:
        """Whether a 503 can be the cap's doing: this process had ``cap`` streams open within a second."""
        return cls.cap is None or time.monotonic() - cls.last_at_cap < 1.0


def _get_json(host: str, path: str) -> Any:
    """GET ``host + path`` as JSON (urllib: the gevent-patched stdlib works where httpx does not)."""
    headers = {"Authorization": f"Bearer {API_KEY}"} if API_KEY else {}
    with urllib.request.urlopen(urllib.request.Request(host.rstrip("/") + path, headers=headers), timeout=10) as r:
        return json.loads(r.read())


@events.test_start.add_listener
def _discover(environment: Environment, **_: Any) -> None:
    """Read the voices and the connection cap once, before the users start."""
    try:
        _Server.voices = [None, *_get_json(environment.host or "", "/voices")["voices"]]
        _Server.cap = int(_get_json(environment.host or "", "/status")["connections"]["max"])
    except (OSError, KeyError, ValueError) as exc:
        print(f"locustfile: could not read /voices or /status ({exc}); default voice only, cap unknown")
    print(f"locustfile: voices {_Server.voices}, connection cap {_Server.cap}")


class _Streams(FastHttpUser):
    """Shared streaming logic; not run itself."""

    abstract = True
    network_timeout = 120.0
    connection_timeout = 10.0

    def on_start(self) -> None:
        """Send the API key when one is given."""
        if API_KEY:
            self.client.auth_header = f"Bearer {API_KEY}"

    def stream_once(self) -> None:
        """One ``/generate`` stream with a random voice and format; some are cancelled mid-stream."""
        fmt = random.choice(FORMATS)
        will_cancel = random.random() < CANCEL_FRACTION
        rid = uuid.uuid4().hex
        body: dict[str, Any] = {
            "target_text": random.choice(TEXTS) * (4 if will_cancel else 1),
            "response_format": fmt,
            "request_id": rid,
            "max_generate_length": CANCEL_LENGTH if will_cancel else MAX_GENERATE_LENGTH,
        }
        voice = random.choice(_Server.voices)
        if voice is not None:
            body["voice"] = voice
        audio_from = WAV_HEADER_BYTES if fmt == "wav" else 0
        _Server.opened()
        try:
            self._stream(body, fmt, rid, will_cancel, audio_from)
        finally:
            _Server.closed()

    def _fire(self, name: str, started: float, length: int, exc: Exception | None = None, kind: str = "STREAM") -> None:
        self.environment.events.request.fire(
            request_type=kind,
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=length,
            exception=exc,
            context={},
        )

    def _stream(self, body: dict[str, Any], fmt: str, rid: str, will_cancel: bool, audio_from: int) -> None:
        started = time.perf_counter()
        with self.client.post(
            "/generate", json=body, stream=True, catch_response=True, name=f"generate [{fmt}]"
        ) as response:
            status = response.status_code
            if status == 503:
                response.success()
                if _Server.rejection_expected():
                    self._fire("generate-503", started, 0, kind="REJECT")
                else:
                    self._fire("unexpected-503", started, 0, RuntimeError("503 below the connection cap"), "REJECT")
                return
            if status != 200:
                response.failure(f"HTTP {status}: {(response.text or '')[:200]}")
                self._fire(f"http-{status}", started, 0, RuntimeError(f"HTTP {status}"), "ERROR")
                return
            response.success()
        canceller = gevent.spawn_later(random.uniform(0.1, 0.6), self._cancel, rid) if will_cancel else None
        received = 0
        first = False
        try:
            for chunk in response.iter_content(chunk_size=16384, decode_content=False):
                received += len(chunk)
                if not first and received > audio_from:
                    first = True
                    self._fire("ttfb", started, received)
        except Exception as exc:  # any transfer error is a broken stream
            if canceller is not None:
                canceller.kill()
            self._fire("complete", started, received, RuntimeError(f"broken stream: {type(exc).__name__}: {exc}"))
            return
        cancelled = canceller is not None and canceller.ready() and canceller.value == "cancelled"
        if canceller is not None:
            canceller.kill()
        if cancelled:
            self._fire("cancelled", started, received)
        elif not first:
            self._fire("complete", started, received, RuntimeError("broken stream: no audio"))
        else:
            self._fire("complete", started, received)

    def _cancel(self, rid: str) -> str:
        with self.client.post("/cancel", json={"request_id": rid}, catch_response=True, name="cancel") as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
                return "error"
            return str(response.json()["status"])


class StreamingUser(_Streams):
    """Closed loop: one stream at a time, then a short think time."""

    wait_time = between(WAIT_S * 0.5, WAIT_S * 1.5)

    @task
    def generate(self) -> None:
        """Stream one generation."""
        self.stream_once()


class OpenLoopUser(_Streams):
    """Open loop: a Poisson source of streams at ``LOAD_USER_RATE`` per second, never waiting for one."""

    def on_start(self) -> None:
        """Start the pool of in-flight streams."""
        super().on_start()
        self.inflight = Group()

    @task
    def arrivals(self) -> None:
        """Spawn one stream, then wait an exponential interarrival time."""
        self.inflight.spawn(self.stream_once)
        gevent.sleep(random.expovariate(USER_RATE))

    def on_stop(self) -> None:
        """Let the streams already started finish (they count as admitted)."""
        self.inflight.join(timeout=60)


# Locust runs the one shape class it finds among this module's names.
if SHAPE == "step":
    from shapes import StepLoadShape

    StepLoadShape.run_classes = [StreamingUser]
elif SHAPE == "arrival":
    from shapes import ArrivalRateShape

    ArrivalRateShape.run_classes = [OpenLoopUser]
