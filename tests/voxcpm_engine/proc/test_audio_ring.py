"""Tests of voxcpm_engine.proc.audio_ring: step audio through shared memory, in order, never overwritten unread."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from voxcpm_engine.proc.audio_ring import AudioRing
from voxcpm_engine.proc.messages import Output, Ready, StepOutputs

SAMPLES = 1000


def step(seq: int, *sizes: int) -> StepOutputs:
    """A step message: one output per size (0: an output without audio), samples seq + row index."""
    outputs = [Output(f"r{i}", np.full(n, seq + i / 10, np.float32) if n else None, 1) for i, n in enumerate(sizes)]
    return StepOutputs(seq, 0.0, outputs)


@pytest.fixture
def rings(tmp_path):
    writer = AudioRing.create(2, SAMPLES, directory=str(tmp_path))
    reader = AudioRing.attach(writer.spec)
    yield writer, reader
    reader.close()
    writer.close()


def test_audio_goes_around_the_pipe_and_comes_back_whole(rings, tmp_path):
    writer, reader = rings
    assert list(tmp_path.iterdir()) == []  # the client removed the name once it had mapped the file
    message = step(3, 300, 0, 200)
    packed = writer.pack(message)
    assert all(o.audio is None for o in packed.outputs) and packed.ring.lengths == (300, 0, 200)
    assert len(pickle.dumps(packed, protocol=5)) < 1000 < len(pickle.dumps(message, protocol=5))
    back = reader.unpack(pickle.loads(pickle.dumps(packed)))
    assert back.ring is None and back.outputs[1].audio is None
    for got, sent in zip(back.outputs, message.outputs, strict=True):
        if sent.audio is not None:
            np.testing.assert_array_equal(got.audio, sent.audio)


def test_messages_without_step_audio_travel_unchanged(rings):
    writer, _ = rings
    ready = Ready(1, None)  # type: ignore[arg-type]
    assert writer.pack(ready) is ready
    silent = step(1, 0, 0)
    assert writer.pack(silent) is silent
    oversize = step(2, SAMPLES + 1)
    assert writer.pack(oversize) is oversize  # more than a slot holds: the pipe carries it


def test_a_slot_is_reused_only_once_read_and_a_stalled_reader_gets_the_pipe(rings):
    writer, reader = rings
    writer.wait_s = 0.05
    first, second = writer.pack(step(1, 10)), writer.pack(step(2, 10))
    assert first.ring.seq == 1 and second.ring.seq == 2
    stalled = writer.pack(step(3, 10))  # both slots unread: after wait_s the audio goes in the message
    assert stalled.ring is None and stalled.outputs[0].audio is not None and writer.fallbacks == 1
    got_first = reader.unpack(first)
    third = writer.pack(step(4, 10))  # slot of seq 1 is free again
    assert third.ring.seq == 3
    np.testing.assert_array_equal(got_first.outputs[0].audio, np.full(10, 1, np.float32))  # a copy: not rewritten
    assert reader.unpack(second).outputs[0].audio[0] == 2 and reader.unpack(third).outputs[0].audio[0] == 4


def test_no_room_fails_at_creation(tmp_path):
    with pytest.raises(OSError):
        AudioRing.create(1, 10, directory=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="slots"):
        AudioRing.create(0, 10, directory=str(tmp_path))
