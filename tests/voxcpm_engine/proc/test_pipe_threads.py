"""Tests of voxcpm_engine.proc.pipe_threads: the engine client's pipe reader and writer threads."""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
from multiprocessing.connection import Connection

from voxcpm_engine.proc.messages import RollingStats, dumps, recv_message, send_message
from voxcpm_engine.proc.pipe_threads import start_pipe_threads, write_loop

FORK = multiprocessing.get_context("fork")


def _echo(conn: Connection) -> None:
    """The far end: answers each message with ("echo", message) until "bye"."""
    while (message := recv_message(conn)) != "bye":
        send_message(conn, ("echo", message))
    send_message(conn, ("last", "words"))  # sent before exiting: must still be read


def test_write_loop_sends_in_order_until_none_and_survives_a_broken_pipe():
    ours, theirs = multiprocessing.Pipe(duplex=True)
    outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
    for item in ("a", {"b": 1}, None, "never sent"):
        outbox.put(None if item is None else dumps(item))
    write_loop(ours, outbox)
    assert [recv_message(theirs), recv_message(theirs)] == ["a", {"b": 1}] and not theirs.poll(0.05)
    assert outbox.get() == dumps("never sent")
    theirs.close()
    outbox.put(dumps("x" * 100_000))
    outbox.put(dumps("y"))
    write_loop(ours, outbox)  # the pipe is broken: returns quietly (the reader reports the death)


def test_threads_carry_messages_both_ways_and_report_the_end_once_the_process_is_reaped():
    async def go():
        loop = asyncio.get_running_loop()
        parent, child = FORK.Pipe(duplex=True)
        process = FORK.Process(target=_echo, args=(child,), daemon=True)
        process.start()
        child.close()
        outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        received: list[object] = []
        ended = asyncio.Event()
        stats = RollingStats()

        def dispatch(message: object, at: float) -> None:
            assert at > 0
            received.append(message)

        def on_exit() -> None:
            assert process.exitcode == 0  # reaped before the loop hears of it
            ended.set()

        threads = start_pipe_threads(
            parent, process, loop, outbox, dispatch=dispatch, on_exit=on_exit, receive=stats, label="t"
        )
        assert [t.name for t in threads] == ["engine-client-reader[t]", "engine-client-writer[t]"]
        assert all(t.daemon for t in threads)
        for i in range(3):
            outbox.put(dumps(i))
        outbox.put(dumps("bye"))
        outbox.put(None)
        await asyncio.wait_for(ended.wait(), 30)
        for thread in threads:
            thread.join(5)
        assert not any(t.is_alive() for t in threads)
        assert received == [("echo", 0), ("echo", 1), ("echo", 2), ("last", "words")]
        assert stats.count == 4

    asyncio.run(go())
