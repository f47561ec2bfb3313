"""``--mode session``: voice-agent sessions over ``/v1/tts/stream`` against a running server.

Each of N sessions (started together) plays a voice agent: it streams a reply word by word with a
pause between words, as an LLM writes it, then a last, long sentence that it interrupts (barge-in)
once that sentence's audio has begun, then closes. Every session's audio is played back in
simulation (at 1x from its first sample) to see where a listener would hear a gap. Per level:

- **first audio**: from the first text fragment sent to the first audio sample received;
- **boundary → audio**: for each sentence, from the moment its end became certain (the first word
  of the next sentence sent, or the flush) to its segment's first audio sample, and the server's own
  ``timing`` event (text ready → first audio; of that, *behind*: the wait for the session's previous
  segment to end, and *queued*: the wait for an inference slot);
- **join gap**: the playback underrun at the start of each later segment (0: its audio was there
  before the previous segment finished playing), and the share of joins with one over 20 ms;
- **clear → silence**: from ``clear`` sent to ``cleared`` received (after which no audio of the
  earlier text comes), and how much audio still arrived in between;
- **join shape** (:func:`join_metrics`) on the audio itself: the jump at the join against the
  signal's own sample-to-sample steps around it (a click is a jump far above them) and the silence
  that spans the join.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from perf.metrics import percentile

__all__ = ["SessionLoad", "SessionTrace", "join_metrics", "run_session_level", "summarize_sessions"]

REPLY = (
    "Sure, I can help with that.",
    "Your order left the warehouse this morning and should arrive on Thursday.",
    "If it does not, just tell me and I will look into it right away.",
)
INTERRUPTED = (
    "Meanwhile, here is a longer explanation of the shipping options you have, which you may stop at any time "
    "by simply starting to talk over me."
)
_GAP_S = 0.02  # a join gap shorter than this is not heard as one
_SILENCE = 10 ** (-50 / 20)  # -50 dBFS


@dataclass(frozen=True)
class SessionLoad:
    """What each session sends."""

    steps: int = 25  # most patches per segment (random weights: exactly this many)
    word_delay_s: float = 0.03  # between words, as an LLM writes them
    temperature: float = 1.0
    cfg_value: float = 2.0
    timesteps: int = 10
    barge_in: bool = True

    def start(self, request_id: str) -> dict[str, Any]:
        """The session's start message."""
        return {
            "type": "start",
            "request_id": request_id,
            "client_id": request_id,
            "format": "pcm",
            "max_generate_length": self.steps,
            "temperature": self.temperature,
            "cfg_value": self.cfg_value,
            "inference_timesteps": self.timesteps,
            "seed": 0,
        }


@dataclass
class SegmentTrace:
    """One segment as the client saw it."""

    text: str
    started_at: float
    first_audio_at: float | None = None
    samples: int = 0
    server_ttfa_ms: float | None = None
    server_queued_ms: float | None = None
    server_behind_ms: float | None = None
    chunks: list[np.ndarray] = field(default_factory=list)


@dataclass
class SessionTrace:
    """One session: what was sent when, and what came back when."""

    sample_rate: int = 0
    first_text_at: float | None = None
    boundaries: list[float] = field(default_factory=list)  # when sentence k's end became certain
    segments: list[SegmentTrace] = field(default_factory=list)
    arrivals: list[tuple[float, int, bool]] = field(default_factory=list)  # (time, samples, first of a segment)
    clear_sent_at: float | None = None
    cleared_at: float | None = None
    samples_after_clear: int = 0
    error: str | None = None

    @property
    def first_audio_s(self) -> float | None:
        """First text fragment sent → first audio sample received."""
        firsts = [s.first_audio_at for s in self.segments if s.first_audio_at is not None]
        return min(firsts) - self.first_text_at if firsts and self.first_text_at is not None else None

    def join_gaps(self) -> list[float]:
        """Playback underrun, in seconds, at the start of each segment after the first."""
        gaps: list[float] = []
        play_end: float | None = None
        for at, samples, first in self.arrivals:
            if play_end is not None and first:
                gaps.append(max(0.0, at - play_end))
            play_end = (at if play_end is None else max(play_end, at)) + samples / self.sample_rate
        return gaps

    def boundary_to_audio(self) -> list[float]:
        """For each spoken sentence: its end certain → its segment's first audio sample."""
        out = []
        for boundary, seg in zip(self.boundaries, self.segments, strict=False):
            if seg.first_audio_at is not None:
                out.append(seg.first_audio_at - boundary)
        return out


async def _send_words(ws: Any, text: str, delay: float, trace: SessionTrace) -> None:
    words = text.split(" ")
    for i, word in enumerate(words):
        lead = "" if i == 0 and trace.first_text_at is None else " "  # words of a reply, spaced
        await ws.send(json.dumps({"type": "text", "text": lead + word}))
        trace.first_text_at = trace.first_text_at or time.monotonic()
        await asyncio.sleep(delay)


async def _receive(ws: Any, trace: SessionTrace, barge: asyncio.Event, cleared: asyncio.Event) -> None:
    interrupted = len(REPLY)
    async for message in ws:
        now = time.monotonic()
        if isinstance(message, bytes):
            pcm = np.frombuffer(message, dtype="<i2")
            seg = trace.segments[-1]
            first = seg.first_audio_at is None
            seg.first_audio_at = seg.first_audio_at or now
            seg.samples += pcm.size
            seg.chunks.append(pcm)
            if trace.clear_sent_at is not None and trace.cleared_at is None:
                trace.samples_after_clear += pcm.size
            if trace.clear_sent_at is None:
                trace.arrivals.append((now, pcm.size, first and len(trace.segments) > 1))
            if len(trace.segments) > interrupted:
                barge.set()
            continue
        event = json.loads(message)
        kind = event["type"]
        if kind == "started":
            trace.sample_rate = event["sample_rate"]
        elif kind == "segment_started":
            trace.segments.append(SegmentTrace(event["text"], now))
        elif kind == "timing":
            seg = trace.segments[event["segment"]]
            seg.server_ttfa_ms, seg.server_queued_ms = event["ttfa_ms"], event["queued_ms"]
            seg.server_behind_ms = event.get("behind_ms")  # servers before it was sent: absent
        elif kind == "cleared":
            trace.cleared_at = now
            cleared.set()
        elif kind == "error" and event.get("fatal"):
            trace.error = f"{event['code']}: {event['message']}"
        elif kind == "done":
            return


async def run_session(url: str, request_id: str, load: SessionLoad, timeout_s: float = 300.0) -> SessionTrace:
    """One agent session (see the module docstring); errors land in ``trace.error``."""
    from websockets.asyncio.client import connect

    trace = SessionTrace()
    barge, cleared = asyncio.Event(), asyncio.Event()
    try:
        async with asyncio.timeout(timeout_s), connect(url, max_size=None) as ws:
            await ws.send(json.dumps(load.start(request_id)))
            receiver = asyncio.create_task(_receive(ws, trace, barge, cleared))
            for sentence in REPLY:
                if trace.boundaries or trace.first_text_at is not None:
                    trace.boundaries.append(time.monotonic())  # this first word makes the last end certain
                await _send_words(ws, sentence, load.word_delay_s, trace)
            if load.barge_in:
                trace.boundaries.append(time.monotonic())
                await _send_words(ws, INTERRUPTED, load.word_delay_s / 4, trace)
                await ws.send(json.dumps({"type": "flush"}))
                await asyncio.wait({receiver, asyncio.create_task(barge.wait())}, return_when="FIRST_COMPLETED")
                trace.clear_sent_at = time.monotonic()
                await ws.send(json.dumps({"type": "clear"}))
                await asyncio.wait({receiver, asyncio.create_task(cleared.wait())}, return_when="FIRST_COMPLETED")
            else:
                await ws.send(json.dumps({"type": "flush"}))
                trace.boundaries.append(time.monotonic())
            await ws.send(json.dumps({"type": "close"}))
            await receiver
    except Exception as exc:  # a failed session is counted, the run goes on
        trace.error = trace.error or f"{type(exc).__name__}: {exc}"
    return trace


async def run_session_level(url: str, sessions: int, load: SessionLoad, tag: str) -> tuple[list[SessionTrace], float]:
    """``sessions`` agents started together; their traces and the wall time."""
    t0 = time.monotonic()
    traces = await asyncio.gather(*(run_session(url, f"{tag}{i}", load) for i in range(sessions)))
    return list(traces), time.monotonic() - t0


def join_metrics(before: np.ndarray, after: np.ndarray, sample_rate: int) -> dict[str, float]:
    """How two segments meet, from their samples (any scale).

    ``click`` is the jump across the join over the 99th percentile of the sample-to-sample steps in
    the 50 ms either side (1 or less: the join is no sharper than the signal itself); ``silence_ms``
    is the run of samples below -50 dBFS of full scale that spans the join (leading and trailing).
    """
    x = np.concatenate([before, after]).astype(np.float64)
    scale = 32768.0 if before.dtype == np.int16 else 1.0
    x /= scale
    j = before.size
    w = max(2, sample_rate // 20)
    local = np.abs(np.diff(np.concatenate([x[max(0, j - w) : j], x[j : j + w]])))
    local = np.delete(local, min(w, j) - 1) if local.size > 1 else local  # not the join itself
    step = abs(x[j] - x[j - 1]) if j and j < x.size else 0.0
    ref = percentile(local.tolist(), 99) if local.size else 0.0
    quiet = np.abs(x) < _SILENCE
    tail = int(np.argmin(quiet[:j][::-1])) if not quiet[:j].all() else j
    head = int(np.argmin(quiet[j:])) if not quiet[j:].all() else x.size - j
    silence = tail + head if tail + head >= sample_rate // 1000 else 0  # under 1 ms: a zero crossing
    return {"click": step / ref if ref > 0 else 0.0, "silence_ms": silence * 1e3 / sample_rate}


def summarize_sessions(traces: Sequence[SessionTrace], wall_s: float) -> dict[str, Any]:
    """Per-level figures (seconds as ms; see the module docstring)."""
    ok = [t for t in traces if t.error is None]

    def ms(values: list[float]) -> dict[str, float]:
        return {q: round(percentile([v * 1e3 for v in values], n), 1) for q, n in (("p50", 50), ("p99", 99))}

    first = [t.first_audio_s for t in ok if t.first_audio_s is not None]
    boundary = [b for t in ok for b in t.boundary_to_audio()[1:]]
    gaps = [g for t in ok for g in t.join_gaps()]
    clears = [t.cleared_at - t.clear_sent_at for t in ok if t.cleared_at and t.clear_sent_at]
    later = [s for t in ok for s in t.segments[1:]]
    server = [s.server_ttfa_ms / 1e3 for s in later if s.server_ttfa_ms is not None]
    queued = [s.server_queued_ms / 1e3 for s in later if s.server_queued_ms is not None]
    behind = [s.server_behind_ms / 1e3 for s in later if s.server_behind_ms is not None]
    joins = []
    for t in ok[:8]:  # the audio shape of a few sessions is enough
        spoken = [np.concatenate(s.chunks) for s in t.segments[: len(REPLY)] if s.chunks]
        joins += [join_metrics(a, b, t.sample_rate) for a, b in zip(spoken, spoken[1:], strict=False)]
    audio_s = sum(s.samples for t in ok for s in t.segments) / max(1, ok[0].sample_rate if ok else 1)
    return {
        "sessions": len(traces),
        "ok": len(ok),
        "errors": sorted({t.error for t in traces if t.error})[:5],
        "first_audio_ms": ms(first),
        "boundary_to_audio_ms": ms(boundary),
        "server_segment_ttfa_ms": ms(server),
        "server_segment_behind_ms": ms(behind),  # of that: the previous segment's end
        "server_segment_queued_ms": ms(queued),  # of that: the wait for a slot
        "join_gap_ms": ms(gaps),
        "joins_with_gap": round(sum(g > _GAP_S for g in gaps) / len(gaps), 3) if gaps else None,
        "clear_to_cleared_ms": ms(clears),
        "audio_after_clear_ms": ms(
            [t.samples_after_clear / t.sample_rate for t in ok if t.clear_sent_at and t.sample_rate]
        ),
        "join_click_max": round(max((j["click"] for j in joins), default=0.0), 2),
        "join_silence_ms_max": round(max((j["silence_ms"] for j in joins), default=0.0), 1),
        "audio_s": round(audio_s, 1),
        "wall_s": round(wall_s, 2),
    }
