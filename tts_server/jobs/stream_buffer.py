"""The audio of one streamed job between its generation task and its response: bounded, paced.

The generation task :meth:`~StreamBuffer.put`\\ s each chunk as the engine makes it and waits while
the buffer is full (a slow reader pauses its own generation). The response asks whether a write is
:meth:`~StreamBuffer.due` (:mod:`tts_server.jobs.pacing`), :meth:`~StreamBuffer.take`\\ s the
waiting chunks merged, or :meth:`~StreamBuffer.wait`\\ s for the next chunk or the pacing's deadline.
All on the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

import numpy as np

from tts_server.jobs.pacing import WritePacer

__all__ = ["StreamBuffer"]


class StreamBuffer:
    """Chunks made and not yet written, at most ``limit`` samples (see the module docstring).

    Args:
        limit: Samples at which :meth:`put` waits for the response to take some.
        pacer: When a write is due, and how much one write merges.
    """

    def __init__(self, limit: int, pacer: WritePacer) -> None:
        self._chunks: deque[np.ndarray] = deque()
        self._samples = 0
        self._limit = limit
        self._pacer = pacer
        self._made = asyncio.Event()  # set when the response should look again (a write may be due)
        self._taken = asyncio.Event()  # set when the response took audio

    async def put(self, chunk: np.ndarray) -> None:
        """Add a chunk; wake the response if a write is due; wait while the buffer is at its limit."""
        self._chunks.append(chunk)
        self._samples += chunk.size
        # The first chunk into an empty buffer always wakes the response: if it is held, the
        # response then waits with a timer for the pacing's deadline.
        if len(self._chunks) == 1 or self._pacer.due(self._samples, time.monotonic()):
            self._made.set()
        while self._samples >= self._limit:
            self._taken.clear()
            await self._taken.wait()

    def end(self) -> None:
        """No more chunks will come: wake the response for what is left."""
        self._made.set()

    def due(self, now: float, ended: bool) -> bool:
        """Whether a write is due at ``now`` (``ended``: the generation is over, nothing is held)."""
        return bool(self._chunks) and (ended or self._pacer.due(self._samples, now))

    def take(self, now: float) -> np.ndarray:
        """The oldest chunk, merged with those behind it up to the pacer's ``merge_limit``, as
        written at ``now``.

        Under load the response falls behind the engine by a few chunks, and a paced response waits
        for several on purpose; taking them as one costs one encode and one write on the event loop
        instead of one per step.
        """
        chunk = self._chunks.popleft()
        if self._chunks:
            limit = self._pacer.merge_limit
            parts = [chunk]
            size = chunk.size
            while self._chunks and size + self._chunks[0].size <= limit:
                parts.append(self._chunks.popleft())
                size += parts[-1].size
            chunk = np.concatenate(parts) if len(parts) > 1 else chunk
        self._samples -= chunk.size
        self._pacer.wrote(chunk.size, now)
        self._taken.set()
        return chunk

    async def wait(self, now: float) -> None:
        """Wait until a chunk or the end may make a write due, or until the pacing's deadline for
        audio already waiting (as of ``now``)."""
        self._made.clear()
        loop = asyncio.get_running_loop()
        timer = loop.call_later(self._pacer.deadline() - now, self._made.set) if self._chunks else None
        try:
            await self._made.wait()
        finally:
            if timer is not None:
                timer.cancel()
