"""The consumer's side of one request: an async iterator of audio chunks (its errors: :mod:`.errors`)."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Protocol

import numpy as np

from voxcpm_engine.proc.errors import EngineDeadError, EngineError, InvalidRequest, RequestCancelled, RequestFailed
from voxcpm_engine.proc.messages import Output
from voxcpm_engine.sched.request import RequestStatus


class _Owner(Protocol):
    def _abort_closed(self, request_id: str) -> None: ...


class StreamState:
    """What the client routes a request's outputs into.

    Kept apart from :class:`RequestStream` so that the client's routing table does not keep the
    consumer's stream alive: dropping the stream must be able to abort the request.

    Attributes:
        queue: Outputs, or an :class:`EngineDeadError` when the engine died.
        closed: The consumer left early; outputs still arriving are dropped.
    """

    __slots__ = ("closed", "ended", "queue")

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Output | EngineError] = asyncio.Queue()
        self.closed = False
        self.ended = False  # the final output has been routed: the engine no longer knows the request


class OutputRouter:
    """Request id → the open streams of that id, in the order the engine will end them.

    A stream left early stays here until its final output arrives (the engine sends exactly one
    per request), so a request id reused right after an abort never receives the old request's
    last output. Only called on the event loop.
    """

    def __init__(self) -> None:
        self._routes: dict[str, deque[StreamState]] = {}
        self.unfinished = 0  # requests whose final output has not arrived

    def open(self, request_id: str) -> StreamState:
        """Route a new request."""
        state = StreamState()
        self._routes.setdefault(request_id, deque()).append(state)
        self.unfinished += 1
        return state

    def has(self, request_id: str) -> bool:
        """Whether a stream of this id is open (not left early, not ended)."""
        return any(not s.closed for s in self._routes.get(request_id, ()))

    def route(self, outputs: list[Output]) -> None:
        """Hand each output to its stream."""
        for out in outputs:
            states = self._routes.get(out.request_id)
            if not states:
                continue
            state = states[0]
            if out.status > RequestStatus.RUNNING:  # final
                state.ended = True
                states.popleft()
                self.unfinished -= 1
                if not states:
                    del self._routes[out.request_id]
            if not state.closed:
                state.queue.put_nowait(out)

    def fail_all(self, message: str) -> None:
        """End every open stream with :class:`EngineDeadError` (the engine is gone)."""
        for states in self._routes.values():
            for state in states:
                if not state.closed:
                    state.queue.put_nowait(EngineDeadError(message))
        self._routes.clear()
        self.unfinished = 0


class RequestStream:
    """Float32 chunks of one request, as an async iterator (made by ``AsyncEngine.generate``).

    Leaving early aborts the request in the engine: ``break`` out of ``async for`` (the stream is
    collected), ``aclose()``, ``async with`` exit, or cancellation of a task waiting for the next chunk.

    Attributes:
        request_id: The request.
        status: Final status once the stream has ended in the engine.
        engine_times: Once the first chunk has been taken: when the request reached each engine
            stage (``voxcpm_engine.sched.request.FirstAudioTimes.as_tuple()``: added, queued, scheduled, first
            patch, first audio; ``time.monotonic()``), if the engine sent them.
        latents: Once the stream has ended normally, the generated latent patches ``[A, P, D]``
            (float32), if the request asked for them (``GenerationParams.return_latents``).
    """

    def __init__(self, request_id: str, state: StreamState, owner: _Owner) -> None:
        self.request_id = request_id
        self.status: RequestStatus | None = None
        self.engine_times: tuple[float, ...] | None = None
        self.latents: np.ndarray | None = None
        self._state = state
        self._finished = False
        self._owner = owner

    @property
    def closed(self) -> bool:
        """Left early by the consumer."""
        return self._state.closed

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> np.ndarray:
        if self._finished or self.closed:
            raise StopAsyncIteration
        try:
            item = self._state.queue.get_nowait()  # under load the chunk is usually there: no task switch
        except asyncio.QueueEmpty:
            try:
                item = await self._state.queue.get()
            except asyncio.CancelledError:  # e.g. the HTTP client went away
                self.close()
                raise
        if isinstance(item, Exception):
            self._finished = True
            raise item
        status = RequestStatus(item.status)
        if item.times is not None:
            self.engine_times = item.times
        if not status.is_finished:
            return item.audio
        self._finished = True
        self.status = status
        self.latents = item.latents
        if status == RequestStatus.CANCELLED:
            raise RequestCancelled(f"request {self.request_id!r} was cancelled")
        if status == RequestStatus.FAILED:
            reason = item.error or "engine error"
            message = f"request {self.request_id!r} failed: {reason}"
            raise InvalidRequest(message, reason, item.field) if item.invalid else RequestFailed(message, reason)
        if item.audio is not None:
            return item.audio  # the last chunk; the next call ends the iteration
        raise StopAsyncIteration

    def close(self) -> None:
        """Stop consuming; aborts the request in the engine unless it has already ended."""
        if self._finished or self.closed:
            return
        self._state.closed = True
        if not self._state.ended:  # else the id may already belong to a newer request
            self._owner._abort_closed(self.request_id)

    async def aclose(self) -> None:
        """Async spelling of :meth:`close` (``contextlib.aclosing`` works)."""
        self.close()

    async def __aenter__(self) -> RequestStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: modules may be half torn down
            pass
