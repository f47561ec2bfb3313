"""Between a session's speaker and its transport: events in order, audio bounded, cleared speech dropped.

Every event carries the *epoch* it was made in; ``clear`` starts a new epoch, and nothing of an
older one is handed out after that (events already queued are dropped, late ones are refused).
Audio made and not yet taken is bounded: at the bound the speaker waits (its generation pauses)
until the transport takes some, so a client that does not read costs the server a bounded amount
of memory. With a :class:`~tts_server.jobs.pacing.WritePacer`, audio is handed out like a streamed
response's: each chunk at once while the listener's lead is short, then the chunks of a segment
merged into blocks; any other event, or audio of the next segment, first takes the audio before it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

import numpy as np

from tts_server.jobs.pacing import WritePacer
from tts_server.jobs.session_events import SegmentAudio, SessionEnded, SessionEvent, SessionFailed, SessionWarning

__all__ = ["SessionOutbox"]


class SessionOutbox:
    """Ordered session events with a bound on unsent audio.

    Args:
        audio_limit: Samples of audio that may wait for the transport before the speaker waits.
        pacer: When audio is handed out (None: every chunk at once).
    """

    def __init__(self, audio_limit: int, pacer: WritePacer | None = None) -> None:
        self.epoch = 0
        self._events: deque[tuple[int, SessionEvent]] = deque()
        self._ready = asyncio.Event()  # set when events are queued
        self._taken = asyncio.Event()  # set when audio was taken, or a waiting speaker must look again
        self._audio = 0  # samples of queued audio
        self._audio_limit = max(1, audio_limit)
        self._pacer = pacer

    def __len__(self) -> int:
        return len(self._events)

    def put(self, event: SessionEvent, epoch: int | None = None) -> None:
        """Queue an event of ``epoch`` (default: the current one); one of an older epoch is dropped."""
        epoch = self.epoch if epoch is None else epoch
        if epoch != self.epoch:
            return
        self._events.append((epoch, event))
        if isinstance(event, SegmentAudio):
            before, self._audio = self._audio, self._audio + event.samples.size
            if before and self._pacer is not None and not self._pacer.due(self._audio, time.monotonic()):
                return  # held behind audio events() already holds (with a timer for its deadline)
        self._ready.set()

    async def put_audio(self, event: SegmentAudio, epoch: int, stop: Callable[[], bool]) -> None:
        """Queue audio, then wait while the queued audio is at its bound (until ``stop()`` or a new epoch)."""
        self.put(event, epoch)
        while self._audio >= self._audio_limit and epoch == self.epoch and not stop():
            self._taken.clear()
            await self._taken.wait()

    def new_epoch(self) -> None:
        """Drop every queued event but warnings; from now on older events are refused."""
        self.epoch += 1
        self._events = deque((self.epoch, ev) for _, ev in self._events if isinstance(ev, SessionWarning))
        self._audio = 0
        if self._pacer is not None:
            self._pacer.restart()  # the client dropped its audio: what comes next goes at once
        self._taken.set()

    def nudge(self) -> None:
        """Make a speaker waiting for room look again (it was cancelled)."""
        self._taken.set()

    async def events(self) -> AsyncIterator[SessionEvent]:
        """Every event in order; ends after :class:`SessionEnded` or :class:`SessionFailed`."""
        while True:
            held = False
            while self._events:
                epoch, event = self._events[0]
                if epoch != self.epoch:
                    self._pop()
                    continue
                if isinstance(event, SegmentAudio) and self._pacer is not None:
                    now = time.monotonic()
                    run, samples, more = self._audio_run(event.index)
                    if not more and not self._pacer.due(samples, now):
                        held = True
                        break
                    event = self._take_run(run)
                    self._pacer.wrote(event.samples.size, now)
                else:
                    self._pop()
                yield event
                if isinstance(event, SessionEnded | SessionFailed):
                    return
            self._ready.clear()
            timer = None
            if held:
                assert self._pacer is not None
                wait = self._pacer.deadline() - time.monotonic()
                timer = asyncio.get_running_loop().call_later(max(0.0, wait), self._ready.set)
            try:
                await self._ready.wait()
            finally:
                if timer is not None:
                    timer.cancel()

    def _pop(self) -> SessionEvent:
        _, event = self._events.popleft()
        if isinstance(event, SegmentAudio):
            self._audio -= event.samples.size
            self._taken.set()
        return event

    def _audio_run(self, index: int) -> tuple[int, int, bool]:
        """The audio events of segment ``index`` at the head: how many, their samples (up to the
        merge limit), and whether anything else is queued behind them (then they go at once)."""
        assert self._pacer is not None
        count = samples = 0
        for _, event in self._events:
            if not isinstance(event, SegmentAudio) or event.index != index:
                return count, samples, True
            if count and samples + event.samples.size > self._pacer.merge_limit:
                return count, samples, True
            count += 1
            samples += event.samples.size
        return count, samples, False

    def _take_run(self, count: int) -> SegmentAudio:
        """The first ``count`` (audio) events, as one."""
        parts = [self._pop() for _ in range(count)]
        audio = [p for p in parts if isinstance(p, SegmentAudio)]
        assert len(audio) == count
        if count == 1:
            return audio[0]
        return SegmentAudio(audio[0].index, np.concatenate([p.samples for p in audio]))
