"""A streaming session: text arrives in fragments, speech leaves segment by segment, in order.

A voice agent's LLM writes its reply token by token; :class:`Session` speaks it as it is written.
Fragments go into a :class:`~tts_server.text.incremental.TextBuffer`, which releases a piece once
its boundary is certain; a piece also leaves on ``flush``, on ``close``, and when no fragment came
for ``text_wait_s``. One task (the speaker) speaks the pieces in order, one engine request per
segment, and:

- takes an inference slot through the same queue as HTTP requests (fair between clients when the
  server is), holds at most one, and gives it back whenever it has nothing to speak;
- continues each segment from the audio of the one before (VoxCPM's prompt continuation with the
  previous segment's latents and text), so timbre and prosody carry across the join; a previous
  segment longer than the context bound is not used (the next one starts from the session's voice);
- holds at most ``buffer_seconds`` of made-but-unsent audio: a client that does not read pauses
  its session's generation instead of growing the server's memory; audio is handed to the
  transport paced like a streamed response's (:mod:`tts_server.jobs.pacing`).

``clear`` (barge-in) drops the buffered text and the queued audio at once and aborts the engine
request in flight (its stream ends within one engine step). The session is one entry of the
in-flight registry: ``/queue`` and ``/status`` count it, and ``POST /cancel`` ends it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tts_server.errors import ApiError
from tts_server.jobs import failures
from tts_server.jobs.audio_checks import checked_audio
from tts_server.jobs.continuation import continuation_voice
from tts_server.jobs.pacing import WritePacer
from tts_server.jobs.queue import QueueCancelled, QueueClosed, QueueTimeout, Ticket
from tts_server.jobs.registry import CancelReason, RequestState
from tts_server.jobs.session_events import (
    Cleared,
    Flushed,
    SegmentAudio,
    SegmentDone,
    SegmentStarted,
    SegmentTiming,
    SessionEnded,
    SessionEvent,
    SessionFailed,
    SessionInputError,
    SessionProblem,
    SessionWarning,
)
from tts_server.jobs.session_outbox import SessionOutbox
from tts_server.jobs.session_spec import SessionSpec
from tts_server.metrics import Outcome
from tts_server.text.incremental import TextBuffer
from voxcpm_engine.proc.errors import EngineDeadError, EngineError, InvalidRequest, RequestCancelled
from voxcpm_engine.types import Voice

if TYPE_CHECKING:  # the bundle of shared objects is built above the jobs layer
    from tts_server.services import Services

__all__ = ["ENDPOINT", "Session"]

log = logging.getLogger(__name__)

ENDPOINT = "stream"  # the metrics label of sessions


@dataclass(frozen=True)
class _Piece:
    text: str
    ready_at: float  # when its end became certain (or it was flushed)


_FLUSH = "flush"
_END = "end"
Prepare = Callable[[str], Awaitable[tuple[str, ...]]]


class Session:
    """One streaming session (made by :meth:`open`; see the module docstring).

    Args:
        spec: The settings.
        svc: The app's services.
        prepare: Text of a piece → the engine texts of its segments (cleanup, optional
            normalization, splitting to fit the engine with room for the continuation context);
            raises :class:`ApiError` for a piece with nothing to speak.
    """

    def __init__(self, spec: SessionSpec, svc: Services, prepare: Prepare) -> None:
        self.spec = spec
        self.svc = svc
        self._prepare = prepare
        self.record = svc.registry.register(spec.request_id, client_id=spec.client_id, endpoint=ENDPOINT)
        self.record.state = RequestState.IDLE
        self.record.on_cancel = self._wake
        self.text = TextBuffer(spec.policy)
        self.received_chars = 0
        self.segments = 0
        self.samples = 0
        self._work: deque[_Piece | str] = deque()
        self._work_ready = asyncio.Event()
        self._last_fragment = time.monotonic()
        self._closing = False
        limit = round(spec.buffer_seconds * svc.sample_rate)
        self.outbox = SessionOutbox(limit, WritePacer(svc.config.pacing, svc.sample_rate, limit))
        self._holds_slot = False
        self._engine_id: str | None = None
        self._context: Voice | None = None  # the previous segment, to continue from
        # With continuation on, each segment's own latents come back with its end: the next one's prompt.
        self._params = dataclasses.replace(spec.params, return_latents=True) if spec.context_patches else spec.params
        self._over = False
        self._speaker: asyncio.Task[None] | None = None

    @classmethod
    def open(cls, svc: Services, spec: SessionSpec, prepare: Prepare) -> Session:
        """Register the session (409 for an id in flight) and start its speaker."""
        session = cls(spec, svc, prepare)
        session._speaker = asyncio.create_task(session._speak_all(), name=f"session[{spec.request_id}]")
        return session

    # --- input (the transport's receive loop) ----------------------------------------------------

    def add_text(self, fragment: str) -> None:
        """Buffer a fragment; pieces whose end is now certain go to the speaker.

        Raises:
            SessionInputError: After close, or over the session's text or buffer limits.
        """
        if self._closing:
            raise SessionInputError(SessionProblem.CLOSED, "text: the session is closing; no text after close")
        if self.received_chars + len(fragment) > self.spec.max_session_chars:
            limit = self.spec.max_session_chars
            raise SessionInputError(SessionProblem.TEXT_LIMIT, f"text: over the session's {limit} characters", "text")
        if self.text.pending + len(fragment) > self.spec.max_pending_chars:
            limit = self.spec.max_pending_chars
            message = f"text: more than {limit} characters waiting to be spoken; send flush or wait for audio"
            raise SessionInputError(SessionProblem.BUFFER_FULL, message, "text")
        self.received_chars += len(fragment)
        self._last_fragment = time.monotonic()
        self.text.append(fragment)
        self._queue_pieces(self.text.take_ready())
        self._wake()  # also restarts the speaker's wait for more text

    def flush(self) -> None:
        """Speak what is buffered now; a :class:`Flushed` event follows its audio."""
        rest = self.text.take_all()
        self._queue_pieces([rest] if rest else [])
        self._work.append(_FLUSH)
        self._wake()

    def close(self) -> None:
        """Speak what is buffered, then end with :class:`SessionEnded` (idempotent)."""
        if self._closing:
            return
        self.flush()
        self._closing = True
        self._work.append(_END)
        self._wake()

    async def clear(self) -> None:
        """Barge-in: drop the buffered text and unsent audio, stop the segment in flight; then :class:`Cleared`."""
        dropped = self.text.clear() + sum(len(w.text) for w in self._work if isinstance(w, _Piece))
        self._work = deque(w for w in self._work if w == _END)
        self.outbox.new_epoch()
        self._context = None  # the interrupted speech was not heard whole: start the next one afresh
        engine_id = self._engine_id
        if engine_id is not None:
            await self.svc.engine.abort(engine_id)
        self.outbox.put(Cleared(dropped))
        self._wake()

    async def abort(self, reason: CancelReason) -> None:
        """End the session now (the client went away, or the server stops): within one engine step."""
        await self.svc.registry.cancel(self.spec.request_id, reason)
        if self._speaker is not None:
            await asyncio.gather(self._speaker, return_exceptions=True)

    @property
    def busy(self) -> bool:
        """Whether the session has text to speak, is speaking, or has events not yet taken."""
        return bool(self._work or self.text.pending or self._holds_slot or self.outbox or self._engine_id)

    # --- output (the transport's send loop) ------------------------------------------------------

    def events(self) -> AsyncIterator[SessionEvent]:
        """Every event in order; ends after :class:`SessionEnded` or :class:`SessionFailed`."""
        return self.outbox.events()

    # --- the speaker -----------------------------------------------------------------------------

    def _wake(self) -> None:
        self._work_ready.set()
        self.outbox.nudge()  # a speaker waiting for the transport looks again (cancel)

    def _queue_pieces(self, pieces: list[str]) -> None:
        now = time.monotonic()
        self._work.extend(_Piece(p, now) for p in pieces)

    async def _next_work(self) -> _Piece | str | None:
        """The next piece or marker; None when the session was cancelled."""
        while not self._work:
            if self.record.cancelled:
                return None
            self._release_slot()  # nothing to speak: the slot goes to whoever waits
            timeout = None
            if self.text.pending:
                timeout = max(0.0, self._last_fragment + self.spec.text_wait_s - time.monotonic())
            self._work_ready.clear()
            try:
                await asyncio.wait_for(self._work_ready.wait(), timeout)
            except TimeoutError:  # the writer paused: speak what it wrote so far
                rest = self.text.take_all()
                self._queue_pieces([rest] if rest else [])
        return None if self.record.cancelled else self._work.popleft()

    async def _speak_all(self) -> None:
        outcome, failure = Outcome.OK, None
        try:
            while (work := await self._next_work()) is not None:
                if work == _END:
                    break
                if work == _FLUSH:
                    self.outbox.put(Flushed())
                    continue
                assert isinstance(work, _Piece)
                await self._speak_piece(work)
            if self.record.cancelled:
                outcome = Outcome.CANCELLED
                failure = (self._cancel_problem(), failures.cancelled(self.svc, self.record))
        except _Stop as stop:
            outcome, failure = stop.outcome, (stop.problem, stop.error)
        except Exception as exc:  # a defect: the client hears of it, the log has the traceback
            log.exception("session %s failed", self.spec.request_id)
            outcome = Outcome.FAILED
            failure = (SessionProblem.ENGINE_ERROR, ApiError(500, f"the session failed: {exc}", type="server_error"))
        finally:
            self._finish(outcome)
        if failure is not None:
            self.outbox.put(SessionFailed(*failure))
        else:
            self.outbox.put(SessionEnded(self.segments, round(self.samples / self.svc.sample_rate, 3)))

    async def _speak_piece(self, piece: _Piece) -> None:
        epoch = self.outbox.epoch
        try:
            texts = await self._prepare(piece.text)
        except ApiError as error:  # e.g. only punctuation or emoji: nothing to say, and nothing wrong
            log.debug("session %s: piece not spoken: %s", self.spec.request_id, error.message)
            if error.field is not None and "nothing to speak" not in error.message:
                self.outbox.put(SessionWarning(SessionProblem.SEGMENT_FAILED, error.message, error.field))
            return
        for text in texts:
            if epoch != self.outbox.epoch or self.record.cancelled:
                return
            queued_at = time.monotonic()
            await self._take_slot()
            if epoch != self.outbox.epoch or self.record.cancelled:
                return
            waits = (queued_at - piece.ready_at, time.monotonic() - queued_at)  # behind the session, for a slot
            await self._speak_segment(text, piece.ready_at, waits, epoch)

    async def _speak_segment(self, text: str, ready_at: float, waits: tuple[float, float], epoch: int) -> None:
        k = self.segments
        self.segments += 1
        params = self._params
        if k and params.seed is not None:  # same seed, different noise per segment, still reproducible
            params = dataclasses.replace(params, seed=(params.seed + k) % 2**63)
        context = self._context
        voice = context or self.spec.voice
        engine_id = self._engine_id = self.record.engine_request_id = f"{self.spec.request_id}#{k}"
        stream = self.svc.engine.generate(engine_id, text, voice=voice, params=params, lora=self.spec.lora)
        self.outbox.put(SegmentStarted(k, text, continued=context is not None), epoch)
        made = 0  # samples of this segment
        first_at = None
        try:
            async for chunk in stream:
                chunk = checked_audio(chunk, first=first_at is None)
                if first_at is None:
                    first_at = time.monotonic()
                    behind_s, queued_s = waits
                    ms = [round(s * 1e3, 1) for s in (first_at - ready_at, queued_s, behind_s)]
                    timing = SegmentTiming(k, *ms)
                    self.outbox.put(timing, epoch)
                made += chunk.size
                self.samples += chunk.size
                await self.outbox.put_audio(SegmentAudio(k, chunk), epoch, lambda: self.record.cancelled)
                if epoch != self.outbox.epoch:
                    break
        except RequestCancelled:
            if epoch == self.outbox.epoch and not self.record.cancelled:
                raise _Stop(Outcome.CANCELLED, SessionProblem.SHUTDOWN, failures.unavailable(
                    self.svc, "shutdown", "the engine stopped the request (shutdown)"
                )) from None  # fmt: skip
            return  # cleared, or cancelled: the caller sees which
        except InvalidRequest as exc:  # this text cannot be spoken; the session goes on
            error = failures.from_engine(self.svc, exc, self.record, "text")
            self.outbox.put(SessionWarning(SessionProblem.SEGMENT_FAILED, error.message, error.field))
            return
        except EngineError as exc:
            if isinstance(exc, EngineDeadError):
                self.svc.engine_lost(str(exc))
            raise _Stop(
                Outcome.FAILED, SessionProblem.ENGINE_ERROR, failures.from_engine(self.svc, exc, self.record, "text")
            ) from None
        finally:
            stream.close()  # aborts the engine request unless it has ended
            self._engine_id = None
        if epoch != self.outbox.epoch:
            return
        seconds = made / self.svc.sample_rate
        self.outbox.put(SegmentDone(k, round(seconds, 3)))
        latents = stream.latents
        fits = latents is not None and 0 < len(latents) <= self.spec.context_patches
        if fits and len(text) <= self.spec.context_chars:
            self._context = continuation_voice(text, latents, self.spec.voice)
        else:
            self._context = None

    async def _take_slot(self) -> None:
        if self._holds_slot:
            return
        svc = self.svc
        self.record.state = RequestState.QUEUED
        try:
            await svc.queue.acquire(Ticket(self.spec.request_id, self.spec.client_id), svc.config.queue_timeout)
        except QueueTimeout as exc:
            error = failures.unavailable(svc, "queue_timeout", f"queue timeout: {exc}")
            raise _Stop(Outcome.TIMEOUT, SessionProblem.OVERLOADED, error) from None
        except QueueClosed as exc:
            error = failures.unavailable(svc, "engine_dead", f"the engine is not running: {exc.reason}")
            raise _Stop(Outcome.REJECTED, SessionProblem.ENGINE_ERROR, error) from None
        except QueueCancelled:
            raise _Stop(Outcome.CANCELLED, self._cancel_problem(), failures.cancelled(svc, self.record)) from None
        self._holds_slot = True
        self.record.state = RequestState.RUNNING if not self.record.cancelled else RequestState.CANCELLING

    def _cancel_problem(self) -> SessionProblem:
        shutdown = self.record.cancel_reason is CancelReason.SHUTDOWN
        return SessionProblem.SHUTDOWN if shutdown else SessionProblem.CANCELLED

    def _release_slot(self) -> None:
        if self._holds_slot:
            self._holds_slot = False
            self.svc.queue.release()
        if self.record.state is RequestState.RUNNING:
            self.record.state = RequestState.IDLE

    def _finish(self, outcome: Outcome) -> None:
        if self._over:
            return
        self._over = True
        self._release_slot()
        self._context = None
        if self.record.cancelled and outcome is Outcome.OK:
            outcome = Outcome.CANCELLED
        final = {Outcome.OK: RequestState.FINISHED, Outcome.FAILED: RequestState.FAILED}
        self.svc.registry.finish(self.record, final.get(outcome, RequestState.CANCELLED))
        seconds = self.samples / self.svc.sample_rate
        self.svc.metrics.request_done(ENDPOINT, outcome)
        if seconds:
            self.svc.metrics.audio_seconds.inc(seconds)
        log.info(
            "session %s: %s, %d segment(s), %.2f s of audio, %d characters",
            self.spec.request_id,
            outcome.value,
            self.segments,
            seconds,
            self.received_chars,
        )


class _Stop(Exception):
    """The speaker cannot go on: how the session ends and what the client is told."""

    def __init__(self, outcome: Outcome, problem: SessionProblem, error: ApiError) -> None:
        super().__init__(error.message)
        self.outcome = outcome
        self.problem = problem
        self.error = error
