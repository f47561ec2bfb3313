"""Step audio through shared memory instead of the pipe: a ring of slots in ``/dev/shm``.

A step message carries every running stream's newest chunk (3.6 MB at 128 VoxCPM1.5 streams).
Pickled through the pipe, that is a copy into the pickle, ~55 pipe-buffer round trips between the
two processes, a copy out and an unpickle, with the GIL held on both sides for much of it; in the
server that is time taken from its event loop. Here the engine's sender thread copies the chunks
into one slot of a memory-mapped file (one ``np.concatenate``) and the message carries only their
lengths (:class:`~voxcpm_engine.proc.messages.RingSpan`); the client's reader thread copies the
slot out (one memcpy), hands the slot back and puts the chunks back into the message.

The first 64 bytes of the file hold the highest ring sequence number the reader has released. The
writer takes slot ``seq % slots`` only once ``seq - slots`` has been released, waiting for it (the
reader is at most ``slots`` steps behind; a client that stops reading holds the engine back, as a
full pipe does). A wait longer than ``wait_s`` sends that message's audio in the pipe instead, so a
reader that is gone cannot hang the engine's sender. The engine creates the file and removes it at
exit; the client removes the name as soon as it has mapped it, so nothing is left behind whichever
process dies first.
"""

from __future__ import annotations

import mmap
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from voxcpm_engine.proc.messages import Output, RingSpan, RingSpec, StepOutputs

__all__ = ["HEADER_BYTES", "AudioRing"]

HEADER_BYTES = 64
_SHM_DIR = "/dev/shm"
# Every page mapped up front: else each process takes a page fault per 4 KB the first time it
# touches a slot (~900 for a 3.6 MB slot), in the middle of a stream.
_MAP_FLAGS = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)


class AudioRing:
    """One engine connection's ring (made by :meth:`create` in the engine, :meth:`attach` in the client).

    Args:
        spec: Its file, slot count and slot size.
        mapping: The mapped file.
        wait_s: Longest wait of the writer for a free slot before it sends audio in the pipe.
    """

    def __init__(self, spec: RingSpec, mapping: mmap.mmap, wait_s: float = 1.0) -> None:
        self.spec = spec
        self.wait_s = wait_s
        self._map = mapping
        self._released = np.ndarray((1,), np.int64, mapping, 0)  # written by the reader only
        self._data = np.ndarray((spec.slots, spec.slot_samples), np.float32, mapping, HEADER_BYTES)
        self._next = 1  # the writer's next ring sequence number
        self.fallbacks = 0  # messages whose audio went through the pipe (no free slot in time)

    @classmethod
    def create(cls, slots: int, slot_samples: int, directory: str = _SHM_DIR) -> AudioRing:
        """A new ring in a fresh file of ``directory`` (the engine's side).

        Raises:
            OSError: No such directory, or no room in it.
        """
        if slots < 1 or slot_samples < 1:
            raise ValueError(f"a ring needs slots >= 1 and slot_samples >= 1, got {slots}, {slot_samples}")
        size = HEADER_BYTES + slots * slot_samples * 4
        fd, path = tempfile.mkstemp(prefix="voxcpm-audio-", dir=directory)
        try:
            os.ftruncate(fd, size)
            os.posix_fallocate(fd, 0, size)  # fail now, not with SIGBUS mid-stream, when /dev/shm is full
            mapping = mmap.mmap(fd, size, flags=_MAP_FLAGS)
        except BaseException:
            os.unlink(path)
            raise
        finally:
            os.close(fd)
        return cls(RingSpec(path, slots, slot_samples), mapping)

    @classmethod
    def attach(cls, spec: RingSpec) -> AudioRing:
        """Map the engine's ring and remove its name (the client's side)."""
        fd = os.open(spec.path, os.O_RDWR)
        try:
            mapping = mmap.mmap(fd, HEADER_BYTES + spec.slots * spec.slot_samples * 4, flags=_MAP_FLAGS)
        finally:
            os.close(fd)
            os.unlink(spec.path)
        return cls(spec, mapping)

    def remove(self) -> None:
        """Remove the file's name if the client has not (the engine's side, at exit)."""
        Path(self.spec.path).unlink(missing_ok=True)

    # --- the engine's sender thread ---------------------------------------------------------------

    def pack(self, message: object) -> object:
        """A step message with its audio moved into the next slot (anything else unchanged)."""
        if not isinstance(message, StepOutputs):
            return message
        chunks = [o.audio for o in message.outputs if o.audio is not None]
        total = sum(c.size for c in chunks)
        if not chunks or total > self.spec.slot_samples or any(c.dtype != np.float32 or c.ndim != 1 for c in chunks):
            return message  # not what a step makes: the pipe carries it
        seq = self._next
        deadline = time.monotonic() + self.wait_s
        while int(self._released[0]) < seq - self.spec.slots:
            if time.monotonic() > deadline:
                self.fallbacks += 1
                return message
            time.sleep(0.0002)
        np.concatenate(chunks, out=self._data[seq % self.spec.slots, :total])
        self._next += 1
        lengths = tuple(o.audio.size if o.audio is not None else 0 for o in message.outputs)
        outputs = [_with_audio(o, None) if o.audio is not None else o for o in message.outputs]
        return StepOutputs(message.seq, message.sent_at, outputs, RingSpan(seq, lengths))

    # --- the client's reader thread ---------------------------------------------------------------

    def unpack(self, message: object) -> object:
        """A step message with its audio back from the ring (its slot released); anything else unchanged."""
        if not isinstance(message, StepOutputs) or message.ring is None:
            return message
        span = message.ring
        ends = np.cumsum(span.lengths)
        audio = self._data[span.seq % self.spec.slots, : int(ends[-1])].copy()
        self._released[0] = span.seq  # after the copy: the writer may reuse the slot
        outputs = [
            _with_audio(o, audio[end - n : end]) if n else o
            for o, n, end in zip(message.outputs, span.lengths, ends.tolist(), strict=True)
        ]
        return StepOutputs(message.seq, message.sent_at, outputs)

    def close(self) -> None:
        """Unmap (the arrays handed out are copies: they stay valid)."""
        del self._released, self._data
        self._map.close()


def _with_audio(o: Output, audio: np.ndarray | None) -> Output:
    # The constructor, not dataclasses.replace: 128 of these per step, at a fifth of the cost.
    return Output(o.request_id, audio, o.status, o.error, o.invalid, o.field, o.times, o.latents)
