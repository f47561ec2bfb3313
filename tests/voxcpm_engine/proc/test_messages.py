"""The IPC messages' pickling and the background :class:`MessageSender`, over real pipes."""

import threading

import numpy as np
import pytest

from voxcpm_engine.proc.messages import MessageSender, Output, RollingStats, StepOutputs, dumps, loads, recv_message

MB = 1 << 20


def _step(seq, samples=1024):
    audio = np.full(samples, seq, dtype=np.float32)
    return StepOutputs(seq, float(seq), [Output(f"r{seq}", audio, 1)])


def test_step_outputs_round_trip_with_audio():
    message = _step(3)
    back = loads(dumps(message))
    assert (back.seq, back.sent_at, back.outputs[0].request_id) == (3, 3.0, "r3")
    np.testing.assert_array_equal(back.outputs[0].audio, message.outputs[0].audio)


def test_sender_writes_every_message_in_order_and_close_flushes(pipe):
    reader, writer = pipe
    sender = MessageSender(writer, max_pending=1)
    got = []
    thread = threading.Thread(target=lambda: got.extend(recv_message(reader) for _ in range(20)))
    thread.start()
    for seq in range(20):
        sender.send(_step(seq, samples=MB // 4 if seq % 5 == 0 else 16))  # some larger than the pipe's buffer
    sender.close()
    thread.join(10)
    assert [m.seq for m in got] == list(range(20))
    assert all(float(m.outputs[0].audio[0]) == m.seq for m in got)
    assert sender.send_time.count == 20


def test_send_blocks_while_max_pending_messages_wait(pipe):
    """Backpressure: a reader that stops reading holds the sending loop back; nothing piles up."""
    reader, writer = pipe
    sender = MessageSender(writer, max_pending=1)
    done = threading.Event()

    def produce():
        for seq in range(4):
            sender.send(_step(seq, samples=MB // 4))  # 1 MB each: more than the pipe holds
        done.set()

    producer = threading.Thread(target=produce)
    producer.start()
    assert not done.wait(0.5)  # one message in the pipe, one in the sender's hands, one queued
    assert [recv_message(reader).seq for _ in range(4)] == [0, 1, 2, 3]
    assert done.wait(10)
    producer.join()
    sender.close()


def test_write_error_surfaces_on_the_next_call(pipe):
    reader, writer = pipe
    sender = MessageSender(writer)
    reader.close()  # the client is gone
    sender.send(_step(0, samples=MB // 4))
    with pytest.raises(OSError):
        sender.close()
    with pytest.raises(OSError):  # and keeps surfacing: nothing after the failed message is sent
        sender.close()
    with pytest.raises(RuntimeError, match="closed"):
        sender.send(_step(1))


def test_max_pending_must_be_positive(pipe):
    with pytest.raises(ValueError, match="max_pending"):
        MessageSender(pipe[1], max_pending=0)


def test_rolling_stats_window_and_lifetime_mean():
    stats = RollingStats(window=2)
    assert stats.summary() == {"count": 0}
    for v in (1.0, 2.0, 3.0):
        stats.add(v)
    s = stats.summary(10.0)
    assert s["count"] == 3 and s["mean"] == pytest.approx(20.0) and s["max"] == pytest.approx(30.0)
    assert s["p50"] == pytest.approx(25.0)  # the window keeps the newest two


@pytest.fixture
def pipe():
    from multiprocessing import Pipe

    a, b = Pipe()
    yield a, b
    for end in (a, b):
        if not end.closed:
            end.close()
