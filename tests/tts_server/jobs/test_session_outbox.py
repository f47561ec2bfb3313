"""SessionOutbox: events in order, audio bounded (the speaker waits), cleared epochs never handed out."""

from __future__ import annotations

import asyncio

import numpy as np

from tts_server.jobs.session_events import Cleared, SegmentAudio, SegmentStarted, SessionEnded, SessionWarning
from tts_server.jobs.session_events import SessionProblem as P
from tts_server.jobs.session_outbox import SessionOutbox


def audio(n: int, k: int = 0) -> SegmentAudio:
    return SegmentAudio(k, np.ones(n, np.float32))


async def take(box: SessionOutbox, n: int) -> list:
    out = []
    async for event in box.events():
        out.append(event)
        if len(out) == n:
            break
    return out


def test_events_come_out_in_order_and_end_with_the_session():
    async def go():
        box = SessionOutbox(audio_limit=100)
        box.put(SegmentStarted(0, "a", False))
        await box.put_audio(audio(10), box.epoch, lambda: False)
        box.put(SessionEnded(1, 0.1))
        box.put(SegmentStarted(1, "after the end", False))
        return [e async for e in box.events()]

    events = asyncio.run(go())
    assert [type(e).__name__ for e in events] == ["SegmentStarted", "SegmentAudio", "SessionEnded"]


def test_the_speaker_waits_at_the_bound_until_audio_is_taken():
    async def go():
        box = SessionOutbox(audio_limit=25)
        pushed = []

        async def speaker():
            for i in range(6):
                await box.put_audio(audio(10, i), box.epoch, lambda: False)
                pushed.append(i)

        task = asyncio.create_task(speaker())
        await asyncio.sleep(0.05)
        held = list(pushed)  # 10, 20, then 30 >= 25: the third chunk is queued and its push waits
        await take(box, 2)
        await asyncio.sleep(0.05)
        more = list(pushed)
        task.cancel()
        return held, more

    held, more = asyncio.run(go())
    assert held == [0, 1] and len(more) > len(held)


def test_a_stopped_speaker_does_not_wait():
    async def go():
        box = SessionOutbox(audio_limit=5)
        await asyncio.wait_for(box.put_audio(audio(10), box.epoch, lambda: True), 1)
        return len(box)

    assert asyncio.run(go()) == 1


def test_a_new_epoch_drops_queued_speech_and_refuses_late_events():
    async def go():
        box = SessionOutbox(audio_limit=15)
        old = box.epoch
        box.put(SegmentStarted(0, "old", False))
        box.put(SessionWarning(P.SEGMENT_FAILED, "kept", "text"))
        waiting = asyncio.create_task(box.put_audio(audio(20), old, lambda: False))  # at the bound: waits
        await asyncio.sleep(0.01)
        box.new_epoch()  # wakes the waiting speaker
        await asyncio.wait_for(waiting, 1)
        box.put(audio(5), old)  # late audio of the cleared segment
        box.put(Cleared(3))
        box.put(SessionEnded(0, 0.0))
        return [e async for e in box.events()]

    events = asyncio.run(go())
    assert [type(e).__name__ for e in events] == ["SessionWarning", "Cleared", "SessionEnded"]
