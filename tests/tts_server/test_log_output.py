"""Tests of tts_server.log_output: log calls never wait on the stream; what does not fit is counted."""

import io
import logging
import threading
import time

import pytest

from tts_server.log_output import LogOutput


class Stalled(io.StringIO):
    """A stream whose reader has stopped: ``write`` blocks until ``resume()``."""

    def __init__(self) -> None:
        super().__init__()
        self.open = threading.Event()

    def write(self, text: str) -> int:
        self.open.wait()
        return super().write(text)

    def resume(self) -> None:
        self.open.set()


@pytest.fixture
def restore_root():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_records_are_written_in_order_with_time_level_name_and_traceback(restore_root):
    stream = io.StringIO()
    output = LogOutput("info", stream)
    output.start()
    log = logging.getLogger("tts_server.test")
    log.debug("not at info")
    args = ["mutable"]
    log.info("first %s", args)
    args.append("changed after the call")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("second")
    output.stop()
    lines = stream.getvalue().splitlines()
    assert "not at info" not in stream.getvalue()
    assert lines[0].endswith("INFO tts_server.test: first ['mutable']")  # rendered at the call
    assert lines[1].endswith("ERROR tts_server.test: second") and "ValueError: boom" in stream.getvalue()


def test_a_stalled_stream_never_blocks_the_caller_and_the_drops_are_reported(restore_root):
    stream = Stalled()
    output = LogOutput("info", stream, capacity=10)
    output.start()
    log = logging.getLogger("tts_server.test")
    caller = threading.Thread(target=lambda: [log.info("record %d", i) for i in range(100)], daemon=True)
    caller.start()
    caller.join(timeout=2.0)
    assert not caller.is_alive()  # a blocking handler would still be waiting on the stream
    stream.resume()
    end = time.monotonic() + 5.0
    while "dropped" not in stream.getvalue() and time.monotonic() < end:  # the writer runs again: room
        time.sleep(0.01)
    log.info("after")
    output.stop()
    text = stream.getvalue()
    written = [int(line.rsplit(" ", 1)[1]) for line in text.splitlines() if ": record " in line]
    dropped = int(text.split(" log record(s) dropped")[0].rsplit(" ", 1)[1])
    assert written == sorted(written) and len(written) + dropped == 100 and dropped >= 89  # the writer held one or none
    assert text.splitlines()[-1].endswith("after")


def test_stop_does_not_wait_forever_on_a_stream_nobody_reads(restore_root):
    stream = Stalled()
    output = LogOutput("info", stream, capacity=2)
    output.start()
    for i in range(5):
        logging.getLogger("tts_server.test").info("record %d", i)
    started = time.monotonic()
    output.stop(timeout=0.2)
    assert time.monotonic() - started < 1.0
    stream.resume()
