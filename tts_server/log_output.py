"""The server's log output: records leave the event loop through a bounded queue, a thread writes them.

A log call on the event loop must never wait on stderr. Under systemd or Kubernetes stderr is a
pipe to a collector; when that collector stalls, a plain ``StreamHandler`` blocks in ``write`` and
with it every request the loop serves. Here a log call only renders its message and puts the record
on a queue (a few microseconds); one thread formats and writes. If the queue is full (the reader of
stderr has stopped for a while), records are dropped and counted, and the writer reports how many
before the next record it writes.
"""

from __future__ import annotations

import copy
import logging
import os
import queue
import sys
import threading
from collections.abc import Callable
from typing import TextIO

__all__ = ["LOG_FORMAT", "QUEUE_RECORDS", "LogOutput"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
QUEUE_RECORDS = 10_000
"""Records that may wait for the writer; at 200 bytes each about 2 MB."""


class _Enqueue(logging.Handler):
    """Puts records on the queue without waiting; counts those that do not fit.

    The queue is a ``SimpleQueue`` (a put takes no Python-level lock and wakes the writer cheaply)
    bounded here by its size: under concurrent puts the bound is approximate, by a few records.
    """

    def __init__(self, records: queue.SimpleQueue[logging.LogRecord | None], capacity: int) -> None:
        super().__init__()
        self._records = records
        self._capacity = capacity
        self._lock = threading.Lock()
        self._dropped = 0

    def handle(self, record: logging.LogRecord) -> bool:
        # No handler lock around emit: the queue is thread-safe, and the count has its own lock.
        passed = self.filter(record)
        if passed:
            self.emit(record)
        return bool(passed)

    def emit(self, record: logging.LogRecord) -> None:
        if self._records.qsize() >= self._capacity:
            self.count_dropped(1)
            return
        # Render now what may change or hold frames later (the arguments, a traceback); the line's
        # format (time, level, name) is the writer's work. A copy: a handler after this one still
        # gets the record as logged.
        record = copy.copy(record)
        record.msg = record.getMessage()
        record.args = None
        if record.exc_info:
            record.exc_text = _RENDER.formatException(record.exc_info)
            record.exc_info = None
        self._records.put(record)

    def count_dropped(self, records: int) -> None:
        """Count records that could not be written."""
        with self._lock:
            self._dropped += records

    def take_dropped(self) -> int:
        """Records dropped since the last call."""
        with self._lock:
            dropped, self._dropped = self._dropped, 0
        return dropped


_RENDER = logging.Formatter()


class LogOutput:
    """Root logging through the queue to ``stream`` (stderr), from :meth:`start` to :meth:`stop`.

    The writer writes to the stream's file descriptor with ``os.write`` where it has one: a thread
    stuck on a stalled pipe then holds no Python lock that logging's or the interpreter's exit
    would wait for.

    Args:
        level: Root level name (``info``, ``debug``, ...).
        stream: Where lines go (default: ``sys.stderr`` as of :meth:`start`, set there).
        capacity: Records that may wait for the writer.
    """

    def __init__(self, level: str, stream: TextIO | None = None, capacity: int = QUEUE_RECORDS) -> None:
        self.level = level.upper()
        self.stream = stream
        self._records: queue.SimpleQueue[logging.LogRecord | None] = queue.SimpleQueue()
        self._enqueue = _Enqueue(self._records, capacity)
        self._format = logging.Formatter(LOG_FORMAT)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Replace the root logger's handlers with the queue and start the writer thread."""
        if self.stream is None:
            self.stream = sys.stderr
        root = logging.getLogger()
        for handler in list(root.handlers):
            root.removeHandler(handler)
            handler.close()
        root.addHandler(self._enqueue)
        root.setLevel(self.level)
        # Nothing in the format needs them, and each costs every record a lookup on the caller's thread.
        logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
        logging.logAsyncioTasks = False  # Python 3.12+
        # A daemon: a writer stuck on a stalled stream must not keep the process from exiting.
        self._thread = threading.Thread(target=self._write, args=(_sink(self.stream),), name="log-writer", daemon=True)
        self._thread.start()

    def _write(self, sink: Callable[[str], None]) -> None:
        while (record := self._records.get()) is not None:
            dropped = self._enqueue.take_dropped()
            lines = self._format.format(record) + "\n"
            if dropped:
                note = logging.makeLogRecord({
                    "name": __name__, "levelno": logging.WARNING, "levelname": "WARNING",
                    "msg": f"{dropped} log record(s) dropped: stderr was not being read",
                })  # fmt: skip
                lines = self._format.format(note) + "\n" + lines
            try:
                sink(lines)
            except OSError:  # stderr closed (EPIPE): nowhere to say it; counted if it ever comes back
                self._enqueue.count_dropped(1 + dropped)

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued (waiting at most ``timeout`` seconds) and stop the thread; if it
        finished, log straight to the stream from then on.

        A stream nobody reads is not waited for beyond ``timeout`` (the process may be exiting, and
        a stalled collector must not keep it alive): later records then stay queued or are dropped.
        """
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._records.put(None)
        thread.join(timeout=timeout)
        if thread.is_alive():
            return
        root = logging.getLogger()
        root.removeHandler(self._enqueue)
        direct = logging.StreamHandler(self.stream)
        direct.setFormatter(self._format)
        root.addHandler(direct)


def _sink(stream: TextIO) -> Callable[[str], None]:
    """How the writer puts text on ``stream``: its file descriptor if it has one, else ``write``."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.StringIO and the like: no descriptor
        fd = None
    if fd is None:

        def write(text: str) -> None:
            stream.write(text)
            stream.flush()

        return write
    stream.flush()  # what the stream buffered before goes first
    encoding = getattr(stream, "encoding", None) or "utf-8"

    def write_fd(text: str) -> None:
        data = memoryview(text.encode(encoding, "backslashreplace"))
        while data:
            data = data[os.write(fd, data) :]

    return write_fd
