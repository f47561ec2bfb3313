"""SessionOutbox: events in order, audio bounded (the speaker waits), cleared epochs never handed out."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from tts_server.jobs.pacing import PacingConfig, WritePacer
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


RATE = 1000  # samples per second in the paced tests: 100 samples are 0.1 s


def paced_box(write: float, lead: float, limit: int = 100_000) -> SessionOutbox:
    return SessionOutbox(limit, WritePacer(PacingConfig(write_seconds=write, lead_seconds=lead), RATE, limit))


def test_a_paced_session_sends_its_first_audio_alone_then_blocks_of_one_segment_flushed_by_other_events():
    async def go():
        box = paced_box(write=0.3, lead=0.0)
        stream = box.events()
        await box.put_audio(SegmentAudio(0, np.full(100, 0, np.float32)), box.epoch, lambda: False)
        first = await anext(stream)
        for i in range(1, 4):
            await box.put_audio(SegmentAudio(0, np.full(100, i, np.float32)), box.epoch, lambda: False)
        await box.put_audio(SegmentAudio(1, np.full(100, 9, np.float32)), box.epoch, lambda: False)
        box.put(SegmentStarted(2, "next", False))
        box.put(SessionEnded(3, 0.5))
        return [first] + [e async for e in stream]

    events = asyncio.run(go())
    shape = [(type(e).__name__, getattr(e, "index", None), getattr(e, "samples", np.empty(0)).size) for e in events]
    assert shape == [
        ("SegmentAudio", 0, 100),  # the first audio at once
        ("SegmentAudio", 0, 300),  # the rest of segment 0 as one block
        ("SegmentAudio", 1, 100),  # segment 1's audio is not merged into 0's, and goes before the event after it
        ("SegmentStarted", 2, 0),
        ("SessionEnded", None, 0),
    ]
    np.testing.assert_array_equal(events[1].samples, np.repeat(np.arange(1, 4, dtype=np.float32), 100))


def test_held_audio_goes_out_when_the_audio_before_it_has_played():
    async def go():
        box = paced_box(write=60.0, lead=0.0)
        stream = box.events()
        await box.put_audio(audio(100), box.epoch, lambda: False)  # 0.1 s, sent at once
        await anext(stream)
        sent = time.monotonic()
        await box.put_audio(audio(50), box.epoch, lambda: False)  # held: the block never fills
        await anext(stream)
        return time.monotonic() - sent

    waited = asyncio.run(go())
    assert 0.08 <= waited < 1.0  # when the first 0.1 s has played, not before and not never


def test_after_a_clear_the_next_audio_goes_at_once():
    async def go():
        box = paced_box(write=60.0, lead=0.0)
        stream = box.events()
        await box.put_audio(audio(10_000), box.epoch, lambda: False)  # 10 s sent: far ahead
        await anext(stream)
        box.new_epoch()  # the client dropped its audio
        await box.put_audio(audio(50), box.epoch, lambda: False)
        return await asyncio.wait_for(anext(stream), timeout=1.0)

    assert asyncio.run(go()).samples.size == 50
