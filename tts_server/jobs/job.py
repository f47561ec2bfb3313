"""One generation job: register, wait for a slot, speak every segment through the engine, release.

Shared by ``/generate`` and ``/v1/audio/speech`` so both behave the same:

1. :meth:`Job.start` registers the id (409 if in flight), waits in the inference queue while a
   task watches the connection for ``http.disconnect`` (before the response starts nobody else
   reads it), then submits the first segment and waits for its first chunk. Any failure up to
   here is an :class:`ApiError` with an honest status (503 for a queue timeout or a dead engine,
   400 for input the engine rejects, 409 for a cancelled request), and the slot is back.
2. The route then streams :meth:`Job.stream` (or :meth:`Job.collect` for a whole file). Segments
   run one after another as separate engine requests inside the one slot. A stream's generation
   runs in a task of its own, ahead of the client by at most ``--stream-buffer-seconds`` of audio
   (at the bound it waits for the client to read), and gives the inference slot back as soon as
   the last segment is made: a slow reader holds its connection place while it reads, not a slot.
   The response takes the first chunk at once and, once the listener is well ahead of playback,
   the rest in blocks (:mod:`tts_server.jobs.pacing`).
3. :meth:`Job.close` runs exactly once however the job ends (finished, ``/cancel``, client gone,
   engine failure): it aborts an unfinished engine request, releases the slot, forgets the id and
   records the outcome.

Audio the engine makes is checked before it is sent: a chunk with NaN or infinite samples, or a
first chunk of exact zeros, fails the request (an error, never a 200 of silence: the encoders would
turn NaN into zeros).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from starlette.types import Message, Receive

from tts_server.errors import ApiError
from tts_server.jobs import failures
from tts_server.jobs.audio_checks import checked_audio
from tts_server.jobs.pacing import WritePacer
from tts_server.jobs.queue import QueueCancelled, QueueClosed, QueueTimeout, Ticket
from tts_server.jobs.registry import CancelReason, InflightRequest, RequestState
from tts_server.jobs.stream_buffer import StreamBuffer
from tts_server.jobs.timeline import Timeline
from tts_server.metrics import Outcome
from voxcpm_engine.proc.errors import EngineDeadError, EngineError, RequestCancelled
from voxcpm_engine.proc.stream import RequestStream
from voxcpm_engine.types import GenerationParams, Voice

if TYPE_CHECKING:  # the bundle of shared objects is built above the jobs layer
    from tts_server.services import Services

__all__ = ["Job", "JobSpec"]

log = logging.getLogger(__name__)

_FINAL_STATE = {
    Outcome.OK: RequestState.FINISHED,
    Outcome.CANCELLED: RequestState.CANCELLED,
    Outcome.TIMEOUT: RequestState.CANCELLED,
    Outcome.REJECTED: RequestState.CANCELLED,
    Outcome.FAILED: RequestState.FAILED,
}


@dataclass(frozen=True)
class JobSpec:
    """A validated request, ready to queue.

    Attributes:
        request_id: Client-facing id.
        client_id: Fair-queue key.
        endpoint: Metrics label (``generate``, ``openai``).
        segments: Engine texts, spoken in order.
        voice: Latents of the voice (None: zero-shot).
        lora: LoRA voice name in the engine.
        params: Sampling settings (segment ``k`` uses ``seed + k`` when a seed is given).
        text_field: The request's text field, named in errors about the text.
        timeline: Where its time to first audio goes (stamped along the way; see ``tts_server.jobs.timeline``);
            its ``received`` is when the request arrived (TTFB and queue wait start there).
    """

    request_id: str
    client_id: str
    endpoint: str
    segments: tuple[str, ...]
    voice: Voice | None
    lora: str | None
    params: GenerationParams
    text_field: str = "target_text"
    timeline: Timeline = dataclasses.field(default_factory=lambda: Timeline(received=time.monotonic()))


class Job:
    """One admitted request holding an inference slot (made by :meth:`start`)."""

    def __init__(self, spec: JobSpec, svc: Services, record: InflightRequest) -> None:
        self.spec = spec
        self.svc = svc
        self.record = record
        self.ticket = Ticket(spec.request_id, spec.client_id)
        self.samples = 0
        self.failure: EngineError | None = None  # why the stream stopped early, if the engine failed it
        limit = max(1, round(svc.config.stream_buffer_seconds * svc.sample_rate))
        self._audio = StreamBuffer(limit, WritePacer(svc.config.pacing, svc.sample_rate, limit))  # made, not sent
        self._generation_error: EngineError | None = None
        self._segment = 0
        self._stream: RequestStream | None = None
        self._first: np.ndarray | None = None
        self._holds_slot = False
        self._started_at: float | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._closed = False

    # --- admission -------------------------------------------------------------------------------

    @classmethod
    async def start(cls, svc: Services, spec: JobSpec, receive: Receive) -> Job:
        """Register, queue, and fetch the first chunk, watching for a disconnect meanwhile.

        Args:
            svc: The app's services.
            spec: The request.
            receive: The ASGI receive channel (its body already read).

        Raises:
            ApiError: 409 duplicate id or cancelled; 503 queue timeout, shutdown or engine down;
                400 input the engine rejected; 500 other engine failures.
        """
        record = svc.registry.register(spec.request_id, client_id=spec.client_id, endpoint=spec.endpoint)
        job = cls(spec, svc, record)
        job._watcher = asyncio.create_task(job._watch(receive), name=f"disconnect-watch[{spec.request_id}]")
        try:
            await job._wait_for_slot()
            await job._first_audio()
        except ApiError:
            job.stop_watching()
            raise
        except BaseException:
            job.stop_watching()
            job.close(Outcome.CANCELLED)
            raise
        return job

    async def _watch(self, receive: Receive) -> None:
        while True:
            message: Message = await receive()
            if message["type"] == "http.disconnect":
                if self.svc.registry.get(self.spec.request_id) is self.record:  # not a later request's id
                    await self.svc.registry.cancel(self.spec.request_id, CancelReason.DISCONNECT)
                return

    def stop_watching(self) -> None:
        """Stop watching the connection (the response's own disconnect handling takes over)."""
        if self._watcher is not None:
            self._watcher.cancel()  # a pending receive() may be cancelled safely: no message is lost
            self._watcher = None

    async def _wait_for_slot(self) -> None:
        svc = self.svc
        try:
            await svc.queue.acquire(self.ticket, svc.config.queue_timeout)
        except QueueTimeout as exc:
            self.close(Outcome.TIMEOUT)
            raise failures.unavailable(self.svc, "queue_timeout", f"queue timeout: {exc}") from None
        except QueueClosed as exc:
            self.close(Outcome.REJECTED)
            raise failures.unavailable(self.svc, "engine_dead", f"the engine is not running: {exc.reason}") from None
        except QueueCancelled:
            self.close(Outcome.CANCELLED)
            raise failures.cancelled(self.svc, self.record) from None
        self._holds_slot = True
        self.spec.timeline.slot = time.monotonic()
        svc.metrics.queue_wait.observe(self.spec.timeline.slot - self.spec.timeline.received)
        if self.record.cancelled:  # cancelled in the instant between the grant and this task running
            self.close(Outcome.CANCELLED)
            raise failures.cancelled(self.svc, self.record)
        self.record.state = RequestState.RUNNING
        log.debug(  # the shape of the work, never its text or voice material
            "request %s %s: slot granted after %.1f ms in the queue; %d segment(s), %s voice",
            self.spec.request_id,
            self.spec.endpoint,
            (self.spec.timeline.slot - self.spec.timeline.received) * 1e3,
            len(self.spec.segments),
            f"LoRA {self.spec.lora!r}" if self.spec.lora else ("prompted" if self.spec.voice else "zero-shot"),
        )

    async def _first_audio(self) -> None:
        self._started_at = time.monotonic()
        try:
            while self._open_next():
                assert self._stream is not None
                try:
                    self._first = checked_audio(await anext(self._stream), first=True)
                except StopAsyncIteration:
                    continue  # a segment without audio: on to the next
                marks = self.spec.timeline
                marks.first_chunk, marks.engine = time.monotonic(), self._stream.engine_times
                self.svc.metrics.ttfb.observe(marks.first_chunk - marks.received)
                return
            if self.record.cancelled:  # between two segments, before any audio
                self.close(Outcome.CANCELLED)
                raise failures.cancelled(self.svc, self.record)
        except EngineError as exc:
            self.failure = None if isinstance(exc, RequestCancelled) else exc
            self.close(Outcome.CANCELLED if self.record.cancelled else Outcome.FAILED)
            raise failures.from_engine(self.svc, exc, self.record, self.spec.text_field) from None

    def _open_next(self) -> bool:
        """Submit the next segment; False when none is left or the job was cancelled."""
        if self._segment >= len(self.spec.segments) or self.record.cancelled:
            return False
        k = self._segment
        self._segment += 1
        params = self.spec.params
        if k and params.seed is not None:  # same seed, different noise per segment, still reproducible
            params = dataclasses.replace(params, seed=(params.seed + k) % 2**63)
        engine_id = f"{self.spec.request_id}#{k}"
        self._stream = self.svc.engine.generate(
            engine_id, self.spec.segments[k], voice=self.spec.voice, params=params, lora=self.spec.lora
        )
        self.record.engine_request_id = engine_id
        return True

    # --- audio -----------------------------------------------------------------------------------

    @property
    def cut_off(self) -> bool:
        """Whether the response must break off rather than end: the engine failed, or the shutdown
        grace ended before the audio did (a clean end would look like a complete file)."""
        return self.failure is not None or self.record.cancel_reason is CancelReason.SHUTDOWN

    @property
    def queue_position(self) -> int:
        """Requests waiting ahead of this one when it arrived."""
        return self.ticket.position

    async def _chunks(self) -> AsyncIterator[np.ndarray]:
        """Every chunk of every segment, checked; engine errors propagate."""
        if self._first is not None:
            first, self._first = self._first, None
            self.samples += first.size
            yield first  # checked by _first_audio
        while self._stream is not None:
            async for chunk in self._stream:
                self.samples += chunk.size
                yield checked_audio(chunk)
            if not self._open_next():
                break

    async def _generate(self) -> None:
        """Pull every chunk into the buffer (waiting while it is full); give the slot back at the end."""
        try:
            async with aclosing(self._chunks()) as chunks:
                async for chunk in chunks:
                    await self._audio.put(chunk)
        except EngineError as exc:
            self._generation_error = exc
        finally:
            self._generation_over(self._generation_error)
            self._audio.end()

    def _generation_over(self, error: EngineError | None) -> None:
        """The engine is done with this job: its request closed, its slot back to the queue."""
        if self._stream is not None:
            self._stream.close()  # aborts the engine request unless it has ended
        if isinstance(error, EngineDeadError):
            self.svc.engine_lost(str(error))  # before the slot goes to a queued request
        if self._holds_slot:
            self._holds_slot = False
            self.svc.queue.release()

    async def stream(self) -> AsyncIterator[np.ndarray]:
        """The audio for a streaming response; ends early (cleanly) when cancelled by the client.

        If the engine fails mid-stream, or the shutdown grace ends first, the iteration ends with
        :attr:`cut_off` true (logged here): the response must then break off the transfer rather
        than end it, so the client can tell.
        """
        outcome = Outcome.CANCELLED  # the iterator is abandoned (client gone) unless set below
        generation = asyncio.create_task(self._generate(), name=f"generate[{self.spec.request_id}]")
        try:
            while not self.record.cancelled:
                now = time.monotonic()
                if self._audio.due(now, ended=generation.done()):
                    yield self._audio.take(now)
                elif generation.done():
                    break
                else:
                    await self._audio.wait(now)
            if generation.done() and not generation.cancelled() and generation.exception() is not None:
                raise generation.exception()  # a bug, not an engine error: let it be seen
            error = self._generation_error if generation.done() else None
            if isinstance(error, RequestCancelled) or (error is None and self.record.cancelled):
                outcome = Outcome.CANCELLED
                if not self.record.cancelled:
                    log.warning("request %s: the engine cancelled it (shutdown)", self.spec.request_id)
            elif error is not None:
                outcome = Outcome.FAILED
                self.failure = error
                log.error(
                    "request %s failed mid-stream after %d samples: %s", self.spec.request_id, self.samples, error
                )
            else:
                outcome = Outcome.OK
        except (asyncio.CancelledError, GeneratorExit):
            if self.record.cancel_reason is None:  # the server stopped iterating: the client went away
                self.record.cancel_reason = CancelReason.DISCONNECT
            raise
        finally:
            if not generation.done():
                generation.cancel()  # its finally gives the slot back
            self.close(outcome)

    async def collect(self) -> np.ndarray:
        """All the audio at once (for a non-streaming response).

        Raises:
            ApiError: The request was cancelled or the engine failed it.
        """
        chunks: list[np.ndarray] = []
        try:
            async with aclosing(self._chunks()) as audio:
                async for chunk in audio:
                    chunks.append(chunk)
        except EngineError as exc:
            self.failure = None if isinstance(exc, RequestCancelled) else exc
            self.close(Outcome.CANCELLED if self.record.cancelled else Outcome.FAILED)
            raise failures.from_engine(self.svc, exc, self.record, self.spec.text_field) from None
        finally:
            self.stop_watching()
        if self.record.cancelled:
            self.close(Outcome.CANCELLED)
            raise failures.cancelled(self.svc, self.record)
        self.close(Outcome.OK)
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)

    # --- the end ---------------------------------------------------------------------------------

    def close(self, outcome: Outcome) -> None:
        """End the job (idempotent): abort the engine request, release the slot, record the outcome."""
        if self._closed:
            return
        self._closed = True
        self.stop_watching()
        self._generation_over(self.failure)
        if self.record.cancelled and outcome is Outcome.OK:
            outcome = Outcome.CANCELLED
        self.svc.registry.finish(self.record, _FINAL_STATE[outcome])
        metrics = self.svc.metrics
        metrics.request_done(self.spec.endpoint, outcome)
        seconds = self.samples / self.svc.sample_rate
        if seconds:
            metrics.audio_seconds.inc(seconds)
        if outcome is Outcome.OK and seconds and self._started_at is not None:
            metrics.rtf.observe((time.monotonic() - self._started_at) / seconds)
        reason = self.record.cancel_reason.value if self.record.cancel_reason else ""
        log.info(
            "request %s %s: %s, %.2f s of audio, %d segment(s) %s",
            self.spec.request_id,
            self.spec.endpoint,
            outcome.value,
            seconds,
            self._segment,
            f"({reason})" if reason else "",
        )
