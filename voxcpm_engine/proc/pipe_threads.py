"""The engine client's two pipe threads: blocking pipe I/O kept off the asyncio event loop.

:class:`~voxcpm_engine.proc.client.AsyncEngine` talks to its engine-core process over a ``multiprocessing``
pipe. A writer thread sends what the loop queued (a big add, e.g. with prompt latents, must not
stall the loop while the engine is mid-step and not reading); a reader thread waits on the pipe and
the process sentinel together, unpickles each message and hands it to the loop with
``call_soon_threadsafe``. They live here, apart from the client's routing of requests, calls and
outputs on the loop, because they are the only code of the client that runs off the loop.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from functools import partial
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

from voxcpm_engine.proc.audio_ring import AudioRing
from voxcpm_engine.proc.messages import RingSpec, RollingStats, recv_message

__all__ = ["read_loop", "start_pipe_threads", "write_loop"]

log = logging.getLogger(__name__)


def start_pipe_threads(
    conn: Connection,
    process: BaseProcess,
    loop: asyncio.AbstractEventLoop,
    outbox: queue.SimpleQueue[bytes | None],
    *,
    dispatch: Callable[[object, float], None],
    on_exit: Callable[[], None],
    receive: RollingStats,
    label: str,
    ring: RingSpec | None = None,
) -> list[threading.Thread]:
    """Start the reader and the writer (daemon threads) of one engine connection.

    Args:
        conn: The pipe to the engine process.
        process: The engine process (its sentinel wakes the reader when it dies).
        loop: The event loop that gets the messages.
        outbox: Pickled messages for the writer to send; ``None`` ends it.
        dispatch: Called on the loop with each message and when it was read (``time.monotonic()``).
        on_exit: Called on the loop once the reader has ended (EOF, a broken pipe, the process gone)
            and the process has been reaped.
        receive: Where the reader records each message's read-and-unpickle time, in seconds.
        label: Names the threads (``engine-client-reader[label]``, ``engine-client-writer[label]``).
        ring: The engine's shared-memory audio ring, if it has one: mapped here and read by the
            reader (:mod:`voxcpm_engine.proc.audio_ring`).

    Returns:
        The two threads (to join at shutdown).

    Raises:
        OSError: The ring could not be mapped.
    """
    unpack = AudioRing.attach(ring).unpack if ring is not None else None
    reader = partial(read_loop, conn, process, loop, dispatch=dispatch, on_exit=on_exit, receive=receive, unpack=unpack)
    threads = []
    for target, name in ((reader, "reader"), (partial(write_loop, conn, outbox), "writer")):
        thread = threading.Thread(target=target, name=f"engine-client-{name}[{label}]", daemon=True)
        thread.start()
        threads.append(thread)
    return threads


def write_loop(conn: Connection, outbox: queue.SimpleQueue[bytes | None]) -> None:
    """Send each queued message until ``None`` arrives or the pipe breaks (the reader reports that)."""
    while (data := outbox.get()) is not None:
        try:
            conn.send_bytes(data)
        except OSError:  # the engine is gone; the reader reports it
            return


def read_loop(
    conn: Connection,
    process: BaseProcess,
    loop: asyncio.AbstractEventLoop,
    *,
    dispatch: Callable[[object, float], None],
    on_exit: Callable[[], None],
    receive: RollingStats,
    unpack: Callable[[object], object] | None = None,
) -> None:
    """Hand every message to the loop until EOF, then reap the process and call ``on_exit`` on the loop.

    See :func:`start_pipe_threads` for the arguments.
    """
    try:
        # Read while the pipe is readable, even once the sentinel fired: a dying engine's last
        # words (its failed outputs, the Fatal message) are in there; EOF ends the loop.
        while conn in wait([conn, process.sentinel]):
            t0 = time.monotonic()
            message = recv_message(conn)
            if unpack is not None:
                message = unpack(message)  # the step's audio out of shared memory, its slot released
            received = time.monotonic()
            receive.add(received - t0)
            loop.call_soon_threadsafe(dispatch, message, received)
    except (EOFError, OSError):
        pass
    except Exception:
        if not loop.is_closed():  # a closed loop means nobody is listening: quietly let the engine go
            log.exception("engine client reader failed; treating the engine as dead")
    # Reap here, not on the loop: after EOF the process may still be tearing down for a moment.
    process.join(2.0)
    if process.exitcode is None:  # only the pipe broke; a process we cannot talk to is dead to us
        process.kill()
        process.join(2.0)
    try:
        loop.call_soon_threadsafe(on_exit)
    except RuntimeError:  # the event loop is closed: nobody left to tell
        pass
