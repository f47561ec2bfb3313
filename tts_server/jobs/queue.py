"""Level 2: the inference queue, at most ``slots`` requests in the engines, the rest waiting in order.

A slot is handed from the request that frees it straight to the next waiter (its future gets the
slot as its result), so the count of held slots never dips and no other arrival can jump the line;
exactly one waiter wakes per freed slot. Everything runs on the event loop and every state change
is a synchronous step, so there is no check-then-take race.

Order: strict FIFO by arrival, or, in fair mode, round-robin between client ids with FIFO inside
each client (a client's burst waits behind one request of each other waiting client).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["InferenceQueue", "QueueCancelled", "QueueClosed", "QueueTimeout", "Ticket"]


class QueueTimeout(Exception):
    """The request waited longer than the queue timeout (the route answers 503)."""


class QueueCancelled(Exception):
    """The request was taken out of the queue (``/cancel``, client gone, shutdown, engine death).

    Attributes:
        reason: Why, as the canceller said.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class QueueClosed(QueueCancelled):
    """The queue takes no more requests (engine death): the waiter's error says why."""


@dataclass(eq=False)
class Ticket:
    """One request's place in the queue.

    Attributes:
        request_id: The client-facing request id (unique among queued tickets).
        client_id: Who asked (fair mode round-robins over these).
        enqueued_at: ``time.monotonic()`` at arrival.
        position: Requests ahead of this one when it arrived (0: it got a slot at once).
    """

    request_id: str
    client_id: str = ""
    enqueued_at: float = field(default_factory=time.monotonic)
    position: int = 0
    _future: asyncio.Future[None] | None = field(default=None, repr=False)


class InferenceQueue:
    """Slots for engine requests, granted in arrival order (or fairly between clients).

    Args:
        slots: Requests that may hold a slot at once (the engines' total batch capacity).
        fair: Round-robin between client ids instead of one FIFO.
    """

    def __init__(self, slots: int, *, fair: bool = False) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.slots = slots
        self.fair = fair
        self.active = 0  # slots held
        # client id -> its waiting tickets; dict order is the round-robin order (FIFO mode: one client "")
        self._waiting: OrderedDict[str, deque[Ticket]] = OrderedDict()
        self._by_id: dict[str, Ticket] = {}
        self._closed: str | None = None

    # --- introspection ---------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Requests waiting for a slot."""
        return len(self._by_id)

    def pending(self) -> list[str]:
        """Waiting request ids in the order they will get slots."""
        return [t.request_id for t in self._grant_order()]

    def is_queued(self, request_id: str) -> bool:
        """Whether a ticket of this id is waiting."""
        return request_id in self._by_id

    def _grant_order(self) -> Iterator[Ticket]:
        queues = [list(q) for q in self._waiting.values()]
        for i in range(max((len(q) for q in queues), default=0)):  # round i: the i-th ticket of each client
            for q in queues:
                if i < len(q):
                    yield q[i]

    # --- acquire / release -----------------------------------------------------------------------

    async def acquire(self, ticket: Ticket, timeout_s: float | None = None) -> None:
        """Wait for a slot; on return the caller holds one and must :meth:`release` it exactly once.

        Args:
            ticket: The request's ticket (its ``position`` is filled in here).
            timeout_s: Longest wait; ``None`` waits forever.

        Raises:
            QueueTimeout: No slot within ``timeout_s`` (the ticket has left the queue).
            QueueCancelled: :meth:`cancel` or :meth:`close` took the ticket out.
            ValueError: A ticket of this id is already queued.
            asyncio.CancelledError: The waiting task was cancelled (the ticket has left the queue,
                and a slot granted in the same instant is passed on).
        """
        if self._closed is not None:
            raise QueueClosed(self._closed)
        if ticket.request_id in self._by_id:
            raise ValueError(f"request_id {ticket.request_id!r} is already queued")
        ticket.enqueued_at = time.monotonic()
        if self.active < self.slots and not self._by_id:  # nobody waits: take a free slot now
            self.active += 1
            ticket.position = 0
            return
        ticket.position = self.depth
        loop = asyncio.get_running_loop()
        ticket._future = loop.create_future()
        key = ticket.client_id if self.fair else ""
        self._waiting.setdefault(key, deque()).append(ticket)
        self._by_id[ticket.request_id] = ticket
        # The timer resolves the future on the loop like a grant does, so a timeout and a grant in
        # the same instant cannot both happen: whichever runs first removes the ticket.
        timer = None
        if timeout_s is not None:
            timer = loop.call_later(timeout_s, self._expire, ticket, timeout_s)
        try:
            await ticket._future
        except asyncio.CancelledError:
            self._leave(ticket)
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _expire(self, ticket: Ticket, timeout_s: float) -> None:
        if self._remove(ticket):
            assert ticket._future is not None
            ticket._future.set_exception(QueueTimeout(f"no inference slot within {timeout_s:g} s"))

    def _leave(self, ticket: Ticket) -> None:
        """The waiter gives up: out of the queue, or, if a slot reached it meanwhile, pass that slot on."""
        future = ticket._future
        if future is not None and future.done() and not future.cancelled() and future.exception() is None:
            self.release()
            return
        self._remove(ticket)

    def release(self) -> None:
        """Give a slot back: the next waiter in order gets it, else it becomes free."""
        if self.active <= 0:
            raise RuntimeError("release() without a held slot")
        ticket = self._pop_next()
        if ticket is None:
            self.active -= 1
            return
        assert ticket._future is not None
        ticket._future.set_result(None)  # the slot moves to this waiter; active stays the same

    def _pop_next(self) -> Ticket | None:
        if not self._waiting:
            return None
        key, queue = next(iter(self._waiting.items()))
        ticket = queue.popleft()
        del self._by_id[ticket.request_id]
        if queue:
            self._waiting.move_to_end(key)  # this client had its turn
        else:
            del self._waiting[key]
        return ticket

    def _remove(self, ticket: Ticket) -> bool:
        if self._by_id.get(ticket.request_id) is not ticket:
            return False
        del self._by_id[ticket.request_id]
        key = ticket.client_id if self.fair else ""
        queue = self._waiting[key]
        queue.remove(ticket)
        if not queue:
            del self._waiting[key]
        return True

    # --- removal ---------------------------------------------------------------------------------

    def cancel(self, request_id: str, reason: str = "cancelled") -> bool:
        """Take a waiting request out of the queue; its :meth:`acquire` raises ``QueueCancelled(reason)``.

        Returns:
            False if no ticket of this id is waiting.
        """
        ticket = self._by_id.get(request_id)
        if ticket is None:
            return False
        self._remove(ticket)
        assert ticket._future is not None
        ticket._future.set_exception(QueueCancelled(reason))
        return True

    def close(self, reason: str) -> None:
        """Fail every waiter and every later :meth:`acquire` with ``QueueClosed(reason)`` (engine death)."""
        self._closed = reason
        for ticket in list(self._by_id.values()):
            self._remove(ticket)
            assert ticket._future is not None
            ticket._future.set_exception(QueueClosed(reason))
