"""Where a request's time to first audio goes: one stamp per stage, server and engine side.

Every generation request carries a :class:`Timeline` of ``time.monotonic()`` stamps, the system-
wide monotonic clock, so the engine process's stamps (``voxcpm_engine.sched.request.FirstAudioTimes``) sit on the
same axis as the server's. Each :data:`STAGES` entry is the time between two consecutive points:

=========  ===================================================================================
admission  the request's headers arrived → past the connection cap
parse      → body read and validated, voice resolved
text       → text cleaned / normalized and split into segments
queue      → an inference slot granted
submit     → the engine process began ``add_request`` (the pipe and its reader)
prepare    → the engine had tokenized and laid out the prompt (and warmed a prompt's VAE state)
wait       → the first engine step with the request was launched
prefill    → its first latent patch was on the host
vae        → its first audio was decoded and on the host
return     → the first audio was in this process, in the job (the pipe back and the event loop)
send       → the first audio byte was handed to the connection (encode and write)
complete   (a whole file only) → the whole file was generated and encoded
=========  ===================================================================================

Operators see each stage as ``tts_request_stage_seconds{stage}`` (observed once per request, when
its first byte goes out), clients as a ``Server-Timing`` header: on a stream it goes out with the
first audio, so it holds the stages up to ``return``; on a whole file, every stage and ``complete``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

__all__ = ["STAGES", "TIMELINE_KEY", "Timeline"]

STAGES = ("admission", "parse", "text", "queue", "submit", "prepare", "wait", "prefill", "vae", "return", "send")
TIMELINE_KEY = "tts_timeline"  # where the admission middleware leaves it in the ASGI scope's "state"
_ENGINE_POINTS = 5  # added, queued, scheduled, first patch, first audio


@dataclass
class Timeline:
    """The stamps of one request (0.0: not reached, or not known).

    Attributes:
        received: The request's headers arrived (admission middleware).
        admitted: Past the connection cap.
        parsed: Body parsed and validated, voice resolved.
        text_ready: Segments ready.
        slot: Inference slot granted.
        engine: The engine's five stamps (``FirstAudioTimes.as_tuple()``), if it sent them.
        first_chunk: The first audio reached the job.
        first_byte: The first audio byte was handed to the connection.
        encoded: (whole file) the file was encoded.
    """

    received: float = 0.0
    admitted: float = 0.0
    parsed: float = 0.0
    text_ready: float = 0.0
    slot: float = 0.0
    engine: tuple[float, ...] | None = None
    first_chunk: float = 0.0
    first_byte: float = 0.0
    encoded: float = 0.0

    @staticmethod
    def now() -> float:
        """A stamp."""
        return time.monotonic()

    def _points(self) -> list[tuple[str, float]]:
        engine = (
            tuple(self.engine)
            if self.engine is not None and len(self.engine) == _ENGINE_POINTS
            else (0.0,) * _ENGINE_POINTS
        )
        added, queued, scheduled, first_patch, first_audio = engine
        return [
            ("admission", self.admitted),
            ("parse", self.parsed),
            ("text", self.text_ready),
            ("queue", self.slot),
            ("submit", added),
            ("prepare", queued),
            ("wait", scheduled),
            ("prefill", first_patch),
            ("vae", first_audio),
            ("return", self.first_chunk),
            ("send", self.first_byte),
            ("complete", self.encoded),
        ]

    def stages(self) -> list[tuple[str, float]]:
        """``(stage, seconds)`` for every stage whose start and end are both known, in order.

        A stage's start is the latest known point before it, so a missing stamp merges its time
        into the next known stage instead of losing it.
        """
        out: list[tuple[str, float]] = []
        last = self.received
        for name, point in self._points():
            if not point or not last:
                continue
            out.append((name, max(0.0, point - last)))
            last = point
        return out

    def total(self) -> float:
        """Seconds from arrival to the last known point (0.0 when nothing is known)."""
        known = [p for _, p in self._points() if p]
        return max(0.0, max(known) - self.received) if known and self.received else 0.0

    def server_timing(self) -> str:
        """The ``Server-Timing`` header value: ``name;dur=<ms>`` per known stage, then ``total``."""
        parts = [f"{name};dur={seconds * 1e3:.2f}" for name, seconds in self.stages()]
        parts.append(f"total;dur={self.total() * 1e3:.2f}")
        return ", ".join(parts)
