"""Between a session's speaker and its transport: events in order, audio bounded, cleared speech dropped.

Every event carries the *epoch* it was made in; ``clear`` starts a new epoch, and nothing of an
older one is handed out after that (events already queued are dropped, late ones are refused).
Audio made and not yet taken is bounded: at the bound the speaker waits (its generation pauses)
until the transport takes some, so a client that does not read costs the server a bounded amount
of memory.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable

from tts_server.jobs.session_events import SegmentAudio, SessionEnded, SessionEvent, SessionFailed, SessionWarning

__all__ = ["SessionOutbox"]


class SessionOutbox:
    """Ordered session events with a bound on unsent audio.

    Args:
        audio_limit: Samples of audio that may wait for the transport before the speaker waits.
    """

    def __init__(self, audio_limit: int) -> None:
        self.epoch = 0
        self._events: deque[tuple[int, SessionEvent]] = deque()
        self._ready = asyncio.Event()  # set when events are queued
        self._taken = asyncio.Event()  # set when audio was taken, or a waiting speaker must look again
        self._audio = 0  # samples of queued audio
        self._audio_limit = max(1, audio_limit)

    def __len__(self) -> int:
        return len(self._events)

    def put(self, event: SessionEvent, epoch: int | None = None) -> None:
        """Queue an event of ``epoch`` (default: the current one); one of an older epoch is dropped."""
        epoch = self.epoch if epoch is None else epoch
        if epoch != self.epoch:
            return
        self._events.append((epoch, event))
        if isinstance(event, SegmentAudio):
            self._audio += event.samples.size
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
        self._taken.set()

    def nudge(self) -> None:
        """Make a speaker waiting for room look again (it was cancelled)."""
        self._taken.set()

    async def events(self) -> AsyncIterator[SessionEvent]:
        """Every event in order; ends after :class:`SessionEnded` or :class:`SessionFailed`."""
        while True:
            while self._events:
                epoch, event = self._events.popleft()
                if isinstance(event, SegmentAudio):
                    self._audio -= event.samples.size
                    self._taken.set()
                if epoch != self.epoch:
                    continue
                yield event
                if isinstance(event, SessionEnded | SessionFailed):
                    return
            self._ready.clear()
            await self._ready.wait()
