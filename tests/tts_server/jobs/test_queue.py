"""InferenceQueue on a bare event loop: hand-off, timeouts, cancellation, FIFO and fair order.

The property-style tests drive random interleavings of arrivals, releases, cancels, task
cancellations and timeouts (seeded, so a failure replays) and check the invariants after every
event: held slots never exceed the capacity, a free slot never sits next to a waiter, and slots
go out in the order the reference model predicts.
"""

import asyncio
import random
from collections import OrderedDict, deque

import pytest

from tts_server.jobs.queue import InferenceQueue, QueueCancelled, QueueClosed, QueueTimeout, Ticket


async def _settle():
    for _ in range(5):
        await asyncio.sleep(0)


def _spawn(queue, rid, client="", timeout=None, log=None):
    async def go():
        await queue.acquire(Ticket(rid, client), timeout)
        if log is not None:
            log.append(rid)

    return asyncio.get_running_loop().create_task(go())


def test_free_slots_are_taken_at_once_then_fifo_hand_off():
    async def go():
        q = InferenceQueue(2)
        granted = []
        await q.acquire(Ticket("a"))
        await q.acquire(Ticket("b"))
        assert (q.active, q.depth) == (2, 0)
        tasks = [_spawn(q, r, log=granted) for r in "cde"]
        await _settle()
        assert q.pending() == ["c", "d", "e"] and q.depth == 3 and granted == []
        q.release()
        assert q.active == 2  # the slot moved, it was never free
        late = _spawn(q, "late", log=granted)  # arrives after the hand-off but before "c" runs
        await _settle()
        assert granted == ["c"] and q.pending() == ["d", "e", "late"]
        for _ in range(3):
            q.release()
            await _settle()
        assert granted == ["c", "d", "e", "late"] and q.active == 2
        q.release()
        q.release()
        assert (q.active, q.depth) == (0, 0)
        await asyncio.gather(*tasks, late)

    asyncio.run(go())


def test_ticket_position_is_the_depth_at_arrival():
    async def go():
        q = InferenceQueue(1)
        first = Ticket("a")
        await q.acquire(first)
        tickets = [Ticket(f"w{i}") for i in range(3)]
        tasks = [asyncio.create_task(q.acquire(t)) for t in tickets]
        await _settle()
        assert first.position == 0 and [t.position for t in tickets] == [0, 1, 2]
        for _ in range(4):
            q.release()
            await _settle()
        await asyncio.gather(*tasks)

    asyncio.run(go())


def test_timeout_leaves_the_queue_and_leaks_nothing():
    async def go():
        q = InferenceQueue(1)
        await q.acquire(Ticket("holder"))
        with pytest.raises(QueueTimeout, match="0.05 s"):
            await q.acquire(Ticket("w"), timeout_s=0.05)
        assert (q.depth, q.pending(), q.active) == (0, [], 1)
        q.release()
        assert q.active == 0
        await q.acquire(Ticket("w"), timeout_s=0.05)  # the same id may queue again
        assert q.active == 1

    asyncio.run(go())


def test_cancel_of_a_queued_ticket_and_duplicates():
    async def go():
        q = InferenceQueue(1)
        await q.acquire(Ticket("holder"))
        waiter = asyncio.create_task(q.acquire(Ticket("w")))
        other = asyncio.create_task(q.acquire(Ticket("x")))
        await _settle()
        with pytest.raises(ValueError, match="already queued"):
            await q.acquire(Ticket("w"))
        assert q.cancel("w", "client asked") and not q.cancel("w") and not q.cancel("nobody")
        with pytest.raises(QueueCancelled, match="client asked"):
            await waiter
        assert q.pending() == ["x"]
        q.release()
        await other
        assert q.active == 1 and q.depth == 0

    asyncio.run(go())


def test_task_cancelled_after_the_grant_passes_the_slot_on():
    async def go():
        q = InferenceQueue(1)
        await q.acquire(Ticket("holder"))
        first = asyncio.create_task(q.acquire(Ticket("first")))
        second = asyncio.create_task(q.acquire(Ticket("second")))
        await _settle()
        q.release()  # grants "first" ...
        first.cancel()  # ... which is cancelled before it could run
        with pytest.raises(asyncio.CancelledError):
            await first
        await second  # the slot went on to the next waiter
        assert (q.active, q.depth) == (1, 0)
        q.release()
        assert q.active == 0

    asyncio.run(go())


def test_close_fails_waiters_and_later_arrivals():
    async def go():
        q = InferenceQueue(1)
        await q.acquire(Ticket("holder"))
        waiter = asyncio.create_task(q.acquire(Ticket("w")))
        await _settle()
        q.close("engine died")
        with pytest.raises(QueueClosed, match="engine died"):
            await waiter
        with pytest.raises(QueueClosed):
            await q.acquire(Ticket("later"))
        q.release()
        assert (q.active, q.depth) == (0, 0)

    asyncio.run(go())


def test_release_without_a_slot_is_an_error():
    with pytest.raises(RuntimeError):
        InferenceQueue(1).release()
    with pytest.raises(ValueError):
        InferenceQueue(0)


def test_fair_mode_round_robins_clients_fifo_within_each():
    async def go():
        q = InferenceQueue(1, fair=True)
        await q.acquire(Ticket("hold", "z"))
        granted = []
        arrivals = [("a1", "A"), ("a2", "A"), ("a3", "A"), ("a4", "A"), ("b1", "B"), ("b2", "B"), ("c1", "C")]
        tasks = [_spawn(q, rid, client, log=granted) for rid, client in arrivals]
        await _settle()
        expected = ["a1", "b1", "c1", "a2", "b2", "a3", "a4"]
        assert q.pending() == expected
        late = _spawn(q, "c2", "C", log=granted)  # C's second request joins C's turn of the next round
        await _settle()
        assert q.pending() == ["a1", "b1", "c1", "a2", "b2", "c2", "a3", "a4"]
        for _ in range(8):
            q.release()
            await _settle()
        assert granted == ["a1", "b1", "c1", "a2", "b2", "c2", "a3", "a4"]
        await asyncio.gather(*tasks, late)

    asyncio.run(go())


class _Model:
    """Reference model of the queue: a dict of per-client FIFOs served round-robin (one client in FIFO mode)."""

    def __init__(self, slots, fair):
        self.slots, self.fair, self.active = slots, fair, 0
        self.waiting: OrderedDict[str, deque[str]] = OrderedDict()

    def arrive(self, rid, client):
        if self.active < self.slots and not self.waiting:
            self.active += 1
            return True
        self.waiting.setdefault(client if self.fair else "", deque()).append(rid)
        return False

    def remove(self, rid):
        for key, q in list(self.waiting.items()):
            if rid in q:
                q.remove(rid)
                if not q:
                    del self.waiting[key]
                return True
        return False

    def release(self):
        if not self.waiting:
            self.active -= 1
            return None
        key, q = next(iter(self.waiting.items()))
        rid = q.popleft()
        if q:
            self.waiting.move_to_end(key)
        else:
            del self.waiting[key]
        return rid


@pytest.mark.parametrize("fair", [False, True])
@pytest.mark.parametrize("seed", range(25))
def test_random_interleavings_match_the_model(fair, seed):
    rng = random.Random(seed)

    async def go():
        slots = rng.randint(1, 3)
        q, model = InferenceQueue(slots, fair=fair), _Model(slots, fair)
        tasks: dict[str, asyncio.Task] = {}
        granted: list[str] = []  # in the order the tasks got their slots
        expected: list[str] = []  # in the order the model hands them out
        released: set[str] = set()

        async def acquire(rid, client):
            await q.acquire(Ticket(rid, client))
            granted.append(rid)

        for step in range(60):
            op = rng.random()
            if op < 0.45:
                rid, client = f"r{step}", rng.choice("ABC")
                if model.arrive(rid, client):
                    expected.append(rid)
                tasks[rid] = asyncio.create_task(acquire(rid, client))
            elif op < 0.75 and (held := [r for r in granted if r not in released]):
                released.add(rng.choice(held))
                q.release()
                if (nxt := model.release()) is not None:
                    expected.append(nxt)
            elif op < 0.88 and q.depth:
                rid = rng.choice(q.pending())
                assert model.remove(rid) and q.cancel(rid)
            elif q.depth:  # the waiting task itself is cancelled (e.g. the client went away)
                rid = rng.choice(q.pending())
                assert model.remove(rid)
                tasks[rid].cancel()
            await _settle()
            assert q.active == model.active == len(granted) - len(released) <= slots
            assert not (q.active < slots and q.depth), "a free slot next to a waiter"
            assert q.pending() == list(_model_order(model))
        assert granted == expected
        for t in tasks.values():
            t.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)

    asyncio.run(go())


def _model_order(model):
    queues = [list(q) for q in model.waiting.values()]
    for i in range(max((len(q) for q in queues), default=0)):
        for q in queues:
            if i < len(q):
                yield q[i]
