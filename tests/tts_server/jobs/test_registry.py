"""InflightRegistry with a real InferenceQueue: duplicate ids, cancelling queued requests, the states.

Cancelling a running request (engine abort) is tested end to end through the HTTP routes with the
real engine (``routes/test_generate.py``); here the engine side is never reached.
"""

import asyncio

import pytest

from tts_server.errors import ApiError
from tts_server.jobs.queue import InferenceQueue, QueueCancelled, Ticket
from tts_server.jobs.registry import CancelReason, InflightRegistry, RequestState


class _NoEngine:
    """Stands where the engine client goes; a queued request must never reach it."""

    async def abort(self, request_id: str) -> bool:
        raise AssertionError(f"abort({request_id!r}) reached the engine")


def test_duplicate_ids_are_409_until_the_request_is_over():
    registry = InflightRegistry(InferenceQueue(1), _NoEngine())
    first = registry.register("a", client_id="c", endpoint="generate")
    with pytest.raises(ApiError) as info:
        registry.register("a")
    assert info.value.status == 409 and info.value.field == "request_id"
    assert "a" in registry and len(registry) == 1 and registry.count(RequestState.QUEUED) == 1
    registry.finish(first, RequestState.FINISHED)
    registry.finish(first, RequestState.FAILED)  # idempotent: the first final state stays
    assert first.state is RequestState.FINISHED and "a" not in registry
    assert registry.register("a") is not first
    with pytest.raises(ValueError):
        registry.finish(first, RequestState.RUNNING)


def test_cancel_takes_a_queued_request_out_of_the_queue():
    async def go():
        queue = InferenceQueue(1)
        registry = InflightRegistry(queue, _NoEngine())
        await queue.acquire(Ticket("holder"))
        record = registry.register("w")
        waiter = asyncio.create_task(queue.acquire(Ticket("w")))
        await asyncio.sleep(0)
        assert queue.pending() == ["w"]
        assert await registry.cancel("w", CancelReason.CLIENT)
        assert record.state is RequestState.CANCELLING and record.cancel_reason is CancelReason.CLIENT
        with pytest.raises(QueueCancelled, match="POST /cancel"):
            await waiter
        assert queue.pending() == [] and queue.active == 1
        assert await registry.cancel("w", CancelReason.DISCONNECT)  # still in flight until the job ends
        assert record.cancel_reason is CancelReason.CLIENT  # the first reason stays
        registry.finish(record, RequestState.CANCELLED)
        assert not await registry.cancel("w", CancelReason.CLIENT)

    asyncio.run(go())


def test_a_cancel_between_grant_and_wake_up_is_seen_by_the_job():
    async def go():
        queue = InferenceQueue(1)
        registry = InflightRegistry(queue, _NoEngine())
        await queue.acquire(Ticket("holder"))
        record = registry.register("w")
        waiter = asyncio.create_task(queue.acquire(Ticket("w")))
        await asyncio.sleep(0)
        queue.release()  # the slot goes to "w", whose task has not run yet
        assert await registry.cancel("w", CancelReason.DISCONNECT)
        await waiter  # it got the slot ...
        assert record.cancelled and queue.active == 1  # ... and must see the flag and give it back
        queue.release()

    asyncio.run(go())


def test_cancel_all_and_final_states():
    async def go():
        queue = InferenceQueue(2)
        registry = InflightRegistry(queue, _NoEngine())
        records = [registry.register(f"r{i}") for i in range(3)]
        assert await registry.cancel_all(CancelReason.SHUTDOWN) == 3
        assert all(r.cancel_reason is CancelReason.SHUTDOWN for r in records)
        assert [s.is_final for s in RequestState] == [False, False, False, False, True, True, True]

    asyncio.run(go())


def test_a_cancelled_request_gives_its_id_up_at_once():
    async def go():
        queue = InferenceQueue(1)
        registry = InflightRegistry(queue, _NoEngine())
        await queue.acquire(Ticket("holder"))
        old = registry.register("x", client_id="c")
        waiter = asyncio.create_task(queue.acquire(Ticket("x", "c")))
        await asyncio.sleep(0)
        assert await registry.cancel("x", CancelReason.CLIENT)
        new = registry.register("x", client_id="c")  # was a 409 until the old job had wound down
        assert registry.get("x") is new and new.state is RequestState.QUEUED and not new.cancelled
        new_waiter = asyncio.create_task(queue.acquire(Ticket("x", "c")))  # the queue takes the id too
        await asyncio.sleep(0)
        assert queue.pending() == ["x"]
        with pytest.raises(QueueCancelled):
            await waiter
        registry.finish(old, RequestState.CANCELLED)  # the old job ends: the new record stays
        assert registry.get("x") is new and old.state is RequestState.CANCELLED
        with pytest.raises(ApiError) as info:  # the new request is not cancelled: its id is taken
            registry.register("x")
        assert info.value.status == 409
        queue.release()
        await new_waiter
        registry.finish(new, RequestState.FINISHED)
        assert "x" not in registry

    asyncio.run(go())


def test_owner_scopes_lookup_and_cancel():
    async def go():
        queue = InferenceQueue(1)
        registry = InflightRegistry(queue, _NoEngine())
        await queue.acquire(Ticket("holder"))
        mine = registry.register("m", client_id="alice")
        waiter = asyncio.create_task(queue.acquire(Ticket("m", "alice")))
        await asyncio.sleep(0)
        assert registry.owned("m", "alice") is mine and registry.owned("m", None) is mine
        assert registry.owned("m", "bob") is None and registry.owned("nobody", None) is None
        assert not await registry.cancel("m", CancelReason.CLIENT, owner="bob")  # as if it did not exist
        assert not mine.cancelled and queue.pending() == ["m"]
        assert await registry.cancel("m", CancelReason.CLIENT, owner="alice", settle_s=1.0)
        with pytest.raises(QueueCancelled):
            await waiter
        assert mine.cancel_reason is CancelReason.CLIENT

    asyncio.run(go())
