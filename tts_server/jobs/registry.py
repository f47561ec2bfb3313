"""The registry of in-flight generation requests: duplicate ids (409) and cancellation by id.

A request is registered before it queues and leaves the registry when its job ends, so an id
can be reused as soon as its previous request is over. Cancellation works the same whoever asks
(``POST /cancel``, a client disconnect, shutdown): a queued request is taken out of the queue, a
running one is aborted in the engine (its stream ends with the next engine step, and the job
releases its slot), and the job checks the flag before it starts each further text segment.

A cancelled request gives its id up at once, before its job has wound down: a new request may
take the id as soon as the old one has no engine request open any more (``POST /cancel`` waits
for that, so a client can resubmit the id it just cancelled). The old job keeps its own record;
every registry change it makes checks that the id still maps to that record, so it never touches
the new one. Requests belong to their ``client_id``; the ``owner`` arguments scope lookups and
cancellation to one owner (None: any).
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tts_server.errors import ApiError
from tts_server.jobs.queue import InferenceQueue
from voxcpm_engine.proc.engine_client import EngineClient

__all__ = ["CancelReason", "InflightRegistry", "InflightRequest", "RequestState"]


class RequestState(enum.Enum):
    """Lifecycle of one server request."""

    QUEUED = "queued"  # waiting for an inference slot
    IDLE = "idle"  # a streaming session between segments: no slot, waiting for text
    RUNNING = "running"  # holds a slot; an engine request may be open
    CANCELLING = "cancelling"  # cancel asked; the job has not ended yet
    FINISHED = "finished"
    CANCELLED = "cancelled"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        """Whether the request is over."""
        return self in (RequestState.FINISHED, RequestState.CANCELLED, RequestState.FAILED)


class CancelReason(enum.Enum):
    """Who ended a request early."""

    CLIENT = "cancelled by POST /cancel"
    DISCONNECT = "the client disconnected"
    SHUTDOWN = "the server is shutting down"


# How often POST /cancel looks whether the engine has ended an aborted request: an engine step
# takes milliseconds (tiny model on CPU) to ~100 ms (a full batch on a GPU).
_SETTLE_POLL_S = 0.005


@dataclass(eq=False)
class InflightRequest:
    """One registered request.

    Attributes:
        request_id: The client-facing id.
        client_id: Fair-queue client key.
        endpoint: Route label (metrics, logs).
        state: Where it is in its lifecycle.
        engine_request_id: The engine request of the segment being spoken, if any.
        cancel_reason: Set once a cancel was asked.
        created_at: ``time.monotonic()`` at registration.
        on_cancel: Called once when a cancel is asked (a streaming session waiting for text wakes up).
    """

    request_id: str
    client_id: str = ""
    endpoint: str = ""
    state: RequestState = RequestState.QUEUED
    engine_request_id: str | None = None
    cancel_reason: CancelReason | None = None
    created_at: float = field(default_factory=time.monotonic)
    on_cancel: Callable[[], None] | None = field(default=None, repr=False)

    @property
    def cancelled(self) -> bool:
        """Whether a cancel was asked."""
        return self.cancel_reason is not None


class InflightRegistry:
    """Request id → :class:`InflightRequest`, for requests not yet over.

    Args:
        queue: The inference queue (to take queued requests out).
        engine: Anything with ``async abort(engine_request_id)`` (the engine client).
    """

    def __init__(self, queue: InferenceQueue, engine: EngineClient) -> None:
        self._queue = queue
        self._engine = engine
        self._requests: dict[str, InflightRequest] = {}

    def __len__(self) -> int:
        return len(self._requests)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._requests

    def get(self, request_id: str) -> InflightRequest | None:
        """The in-flight request of this id, if any."""
        return self._requests.get(request_id)

    def count(self, state: RequestState) -> int:
        """Requests currently in ``state``."""
        return sum(1 for r in self._requests.values() if r.state is state)

    def of_endpoint(self, endpoint: str) -> list[InflightRequest]:
        """The requests of one endpoint label (``stream``: the open sessions)."""
        return [r for r in self._requests.values() if r.endpoint == endpoint]

    def owned(self, request_id: str, owner: str | None) -> InflightRequest | None:
        """The in-flight request of this id if ``owner`` may see it (None: anyone's), else None."""
        request = self._requests.get(request_id)
        if request is None or (owner is not None and request.client_id != owner):
            return None
        return request

    def register(self, request_id: str, *, client_id: str = "", endpoint: str = "") -> InflightRequest:
        """Add a request in state QUEUED; it takes the id of a cancelled request whose engine request has ended.

        Raises:
            ApiError: 409 when a request of this id is still in flight, or was cancelled but its
                engine request has not ended yet (a moment: one engine step).
        """
        previous = self._requests.get(request_id)
        if previous is not None:
            if not previous.cancelled:
                message = f"request_id: {request_id!r} is already in flight"
                raise ApiError(409, message, field="request_id", type="conflict")
            if self._engine_open(previous):
                # The new job would submit the same engine request id while the old one still runs.
                message = f"request_id: {request_id!r} was cancelled and is still stopping; retry in a moment"
                raise ApiError(409, message, field="request_id", type="conflict")
        request = InflightRequest(request_id, client_id, endpoint)
        self._requests[request_id] = request
        return request

    def finish(self, request: InflightRequest, state: RequestState) -> None:
        """Record the final state and forget the request (idempotent)."""
        if not state.is_final:
            raise ValueError(f"{state} is not a final state")
        if request.state.is_final:
            return
        request.state = state
        if self._requests.get(request.request_id) is request:
            del self._requests[request.request_id]

    async def cancel(
        self, request_id: str, reason: CancelReason, *, owner: str | None = None, settle_s: float = 0.0
    ) -> bool:
        """Cancel a request wherever it is.

        Args:
            request_id: The client-facing id.
            reason: Who asked (kept if a cancel was asked before).
            owner: Only cancel a request of this client id (None: anyone's).
            settle_s: Wait up to this long for the engine to end an aborted request, so that the
                id is free for a new request when this returns (``POST /cancel``).

        Returns:
            False if no request of this id (of ``owner``) is in flight.
        """
        request = self.owned(request_id, owner)
        if request is None:
            return False
        first = request.cancel_reason is None
        if first:
            request.cancel_reason = reason
        if request.state is RequestState.IDLE:
            request.state = RequestState.CANCELLING
        elif request.state is RequestState.QUEUED:
            request.state = RequestState.CANCELLING
            # False: the slot was granted a moment ago and the job has not run yet; it sees the flag.
            self._queue.cancel(request_id, reason.value)
        elif request.state is RequestState.RUNNING:
            request.state = RequestState.CANCELLING
            if request.engine_request_id is not None:
                await self._engine.abort(request.engine_request_id)
        if first and request.on_cancel is not None:
            request.on_cancel()
        deadline = time.monotonic() + settle_s
        while self._engine_open(request) and time.monotonic() < deadline:
            await asyncio.sleep(_SETTLE_POLL_S)
        return True

    def _engine_open(self, request: InflightRequest) -> bool:
        """Whether the engine client still has a stream of the request's engine request open."""
        engine_id = request.engine_request_id
        return engine_id is not None and self._engine.has_request(engine_id)

    async def cancel_all(self, reason: CancelReason) -> int:
        """Cancel every in-flight request (shutdown after the grace period); returns how many."""
        ids = list(self._requests)
        for request_id in ids:
            await self.cancel(request_id, reason)
        return len(ids)
