"""Locust user of ``/v1/tts/stream``: voice agents that stream a reply word by word and barge in.

Each :class:`SessionUser` runs one session at a time: it sends a reply (two or three sentences of
:data:`SENTENCES`) word by word ``LOAD_WORD_DELAY_S`` apart (default 0.03), as an LLM writes; with
probability ``LOAD_BARGE_IN_FRACTION`` (default 0.5) it then starts a long sentence and sends
``clear`` once that sentence's audio has begun (the caller talked over it); then ``close``.
Request events (request type ``SESSION``):

- ``ttfa``: first text fragment sent → first audio frame received;
- ``segment``: each later sentence, from its end being certain (the next sentence's first word
  sent, or the flush) to its first audio frame;
- ``barge-in``: ``clear`` sent → ``cleared`` received (no audio of the earlier text after it);
- ``complete``: the whole session; a failure is a fatal ``error`` event, an abnormal close or no audio.

A refused upgrade is ``REJECT session-503`` (a rejection, as for streams) or ``ERROR ws-<status>``.
Segments last ``LOAD_MAX_GENERATE_LENGTH`` patches at most (default 8).
"""

from __future__ import annotations

import json
import os
import random
import time
from typing import Any

import gevent
from locust import User, between, task
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

SENTENCES = (
    "Sure, I can help with that.",
    "Your order left the warehouse this morning.",
    "It should arrive on Thursday.",
    "Is there anything else I can do for you?",
)
INTERRUPTED = "Meanwhile, let me tell you about all the delivery options we have, which takes a while to explain."
WORD_DELAY_S = float(os.environ.get("LOAD_WORD_DELAY_S", "0.03"))
BARGE_IN_FRACTION = float(os.environ.get("LOAD_BARGE_IN_FRACTION", "0.5"))
MAX_GENERATE_LENGTH = int(os.environ.get("LOAD_MAX_GENERATE_LENGTH", "8"))
API_KEY = os.environ.get("LOAD_API_KEY", "")
WAIT_S = float(os.environ.get("LOAD_WAIT_S", "0.2"))


class _Session:
    """What one session saw: the receive side runs in its own greenlet."""

    def __init__(self) -> None:
        self.segments = 0  # segment_started events so far
        self.audio_of: dict[int, float] = {}  # segment → its first audio frame
        self.cleared_at: float | None = None
        self.failure: str | None = None
        self.done = False
        self.audio_bytes = 0

    def receive(self, ws: Any) -> None:
        try:
            for message in ws:
                now = time.perf_counter()
                if isinstance(message, bytes):
                    self.audio_bytes += len(message)
                    self.audio_of.setdefault(self.segments - 1, now)
                    continue
                event = json.loads(message)
                kind = event["type"]
                if kind == "segment_started":
                    self.segments += 1
                elif kind == "cleared":
                    self.cleared_at = now
                elif kind == "error" and event["fatal"]:
                    self.failure = f"{event['code']}: {event['message']}"
                elif kind == "done":
                    self.done = True
        except ConnectionClosed as exc:
            self.failure = self.failure or f"closed: {exc}"


class SessionUser(User):
    """A voice agent: one session at a time, then a short think time."""

    wait_time = between(WAIT_S * 0.5, WAIT_S * 1.5)

    def _fire(self, name: str, seconds: float, length: int = 0, exc: Exception | None = None, kind: str = "SESSION"):
        self.environment.events.request.fire(
            request_type=kind,
            name=name,
            response_time=seconds * 1000,
            response_length=length,
            exception=exc,
            context={},
        )

    def _words(self, ws: Any, sentence: str, first: bool) -> None:
        for i, word in enumerate(sentence.split(" ")):
            ws.send(json.dumps({"type": "text", "text": word if first and i == 0 else " " + word}))
            gevent.sleep(random.uniform(0, 2 * WORD_DELAY_S))

    @task
    def converse(self) -> None:
        """One session: a reply, maybe a barge-in, close."""
        url = (self.host or "").rstrip("/").replace("http", "ws", 1) + "/v1/tts/stream"
        headers = {"Authorization": f"Bearer {API_KEY}"} if API_KEY else {}
        started = time.perf_counter()
        try:
            ws = connect(url, additional_headers=headers, open_timeout=10, max_size=None)
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status == 503:
                self._fire("session-503", time.perf_counter() - started, kind="REJECT")
            else:
                self._fire(
                    f"ws-{status}", time.perf_counter() - started, exc=RuntimeError(f"HTTP {status}"), kind="ERROR"
                )
            return
        seen = _Session()
        with ws:
            ws.send(json.dumps({"type": "start", "format": "pcm", "max_generate_length": MAX_GENERATE_LENGTH}))
            receiver = gevent.spawn(seen.receive, ws)
            first_text = time.perf_counter()
            boundaries: list[float] = []
            for k, sentence in enumerate(SENTENCES[: random.randint(2, 3)]):
                if k:
                    boundaries.append(time.perf_counter())
                self._words(ws, sentence, first=k == 0)
            ws.send(json.dumps({"type": "flush"}))
            boundaries.append(time.perf_counter())
            spoken = len(boundaries)
            barge = random.random() < BARGE_IN_FRACTION
            if barge:
                self._words(ws, INTERRUPTED, first=False)
                ws.send(json.dumps({"type": "flush"}))
                deadline = time.perf_counter() + 60
                while spoken not in seen.audio_of and not receiver.dead and time.perf_counter() < deadline:
                    gevent.sleep(0.005)
                clear_sent = time.perf_counter()
                ws.send(json.dumps({"type": "clear"}))
                while seen.cleared_at is None and not receiver.dead and time.perf_counter() < deadline:
                    gevent.sleep(0.002)
                if seen.cleared_at is not None:
                    self._fire("barge-in", seen.cleared_at - clear_sent)
            ws.send(json.dumps({"type": "close"}))
            receiver.join(timeout=120)
        self._report(seen, started, first_text, boundaries)

    def _report(self, seen: _Session, started: float, first_text: float, boundaries: list[float]) -> None:
        if 0 in seen.audio_of:
            self._fire("ttfa", seen.audio_of[0] - first_text, seen.audio_bytes)
        for k in range(1, len(boundaries)):  # sentence k (segment k) ended for certain at boundaries[k]
            if k in seen.audio_of:
                self._fire("segment", seen.audio_of[k] - boundaries[k])
        failure = seen.failure or (None if seen.done else "no done event")
        failure = failure or (None if seen.audio_bytes else "no audio")
        exc = RuntimeError(f"failed session: {failure}") if failure else None
        self._fire("complete", time.perf_counter() - started, seen.audio_bytes, exc)
