"""ChangeLocks on its own (the voice store's use of it is tested in ``test_voices_store.py``)."""

from __future__ import annotations

import asyncio

import pytest

from tts_server.voices.change_locks import ChangeLocks


def test_one_change_per_name_and_the_table_empties() -> None:
    locks, log = ChangeLocks(), []

    async def change(name: str, tag: str) -> None:
        async with locks.locked(name):
            log.append(f"{tag}+")
            await asyncio.sleep(0.01)
            log.append(f"{tag}-")

    async def go() -> None:
        await asyncio.gather(change("a", "a1"), change("a", "a2"), change("b", "b1"))

    asyncio.run(go())
    assert log.index("a1-") < log.index("a2+")  # the same name: one after the other
    assert log.index("b1+") < log.index("a1-")  # another name: meanwhile
    assert len(locks) == 0


def test_a_change_outlives_its_cancelled_caller() -> None:
    ended: list[asyncio.Task] = []
    locks = ChangeLocks(ended.append)

    async def go() -> None:
        done = asyncio.Event()

        async def work() -> str:
            await asyncio.sleep(0.02)
            done.set()
            return "ok"

        assert await locks.complete(asyncio.sleep(0, "direct")) == "direct"
        caller = asyncio.create_task(locks.complete(work()))
        await asyncio.sleep(0.001)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        await asyncio.wait_for(done.wait(), 1)
        await asyncio.sleep(0)  # let the done callbacks run

    asyncio.run(go())
    assert len(ended) == 1 and ended[0].result() == "ok"
