"""An operator's log collector that stops reading stderr does not stop the server.

Under systemd or Kubernetes the server's stderr is a pipe to a collector. Here it is a pipe of one
page that nobody reads, and the server logs at debug level (several lines per request): the pipe is
full within the first requests. A server whose event loop wrote its log itself would stop there,
/ready and all; this one keeps serving, and the drain still ends the process on SIGTERM.
"""

from __future__ import annotations

import fcntl
import os
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import httpx

from tests.server_process import BASE_ARGS, ROOT, free_port

F_SETPIPE_SZ = 1031  # Linux fcntl: set a pipe's capacity (rounded up to a page)


def test_a_full_stderr_pipe_neither_blocks_requests_nor_the_drain(tiny_v2: Path):
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, F_SETPIPE_SZ, 4096)
    port = free_port()
    args = [
        sys.executable, "-m", "tts_server", "--model", str(tiny_v2), "--port", str(port), *BASE_ARGS,
        "--log-level", "debug", "--voices-dir", "",
    ]  # fmt: skip
    process = subprocess.Popen(
        args, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=write_end, stderr=write_end
    )
    os.close(write_end)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=10.0) as client:
            end = time.monotonic() + 120
            while time.monotonic() < end:
                assert process.poll() is None, f"the server exited with {process.returncode}"
                try:
                    if client.get("/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            else:
                raise AssertionError("not ready in 120 s with its stderr unread")
            for i in range(20):  # each logs several lines: far beyond the pipe's 4 KiB
                answer = client.post("/generate", json={"target_text": f"Line {i}.", "response_format": "pcm"})
                assert answer.status_code == 200 and len(answer.content) > 0
            assert client.get("/health").status_code == 200
            # The pipe is full (a line that does not fit waits whole): the log writer is stuck on it.
            assert _unread(read_end) > 4096 - 512
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0  # the drain ends even though its lines cannot be written
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        drained = threading.Thread(target=_drain, args=(read_end,), daemon=True)
        drained.start()
        drained.join(timeout=5)


def _unread(fd: int) -> int:
    """Bytes waiting in the pipe."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


def _drain(fd: int) -> None:
    while os.read(fd, 1 << 16):
        pass
    os.close(fd)
