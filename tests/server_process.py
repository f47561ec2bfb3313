"""Tests that need a real ``python -m tts_server`` subprocess on the tiny model.

Every such test talks to the server over loopback HTTP, exactly like a client would; the
server runs its own engine process. The log goes to a file (a pipe nobody reads would drop log
lines) so tests can inspect it afterwards.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]

# Test-sized engine: 4 inference slots, a short context, one torch thread.
BASE_ARGS = (
    "--device", "cpu", "--host", "127.0.0.1", "--max-num-seqs", "4", "--max-num-batched-tokens", "64",
    "--max-model-len", "256", "--engine-threads", "1", "--default-max-generate-length", "3",
    "--queue-timeout", "30", "--shutdown-grace", "3",
)  # fmt: skip


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """A running server process: its URL, process and log file."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    api_key: str | None = None

    def log(self) -> str:
        """Everything the process has written so far (stdout and stderr)."""
        return self.log_path.read_text(errors="replace")

    @property
    def auth(self) -> dict[str, str]:
        """The ``Authorization`` header of the API key (empty without one)."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def client(self, timeout: float = 30.0, headers: dict[str, str] | None = None, **kwargs: Any) -> httpx.Client:
        """A synchronous client sending the API key (unless ``headers`` give another ``Authorization``)."""
        return httpx.Client(base_url=self.url, timeout=timeout, headers={**self.auth, **(headers or {})}, **kwargs)

    def async_client(self, timeout: float = 30.0, **kwargs: Any) -> httpx.AsyncClient:
        """An asynchronous client sending the API key."""
        return httpx.AsyncClient(base_url=self.url, timeout=timeout, headers=self.auth, **kwargs)

    def engine_pid(self) -> int:
        """The engine-core process (a ``multiprocessing`` spawn child; not the resource tracker)."""
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        engines = [int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
        assert len(engines) == 1, children
        return engines[0]

    def wait_settled(self, timeout_s: float = 10.0) -> dict:
        """Wait until /status shows nothing active or queued and every KV block free; returns it."""
        end = time.monotonic() + timeout_s
        with self.client() as client:
            while True:
                status = client.get("/status").json()
                if idle(status) or time.monotonic() > end:
                    return status
                time.sleep(0.1)


def idle(status: dict) -> bool:
    """Whether a /status body shows an idle server with no KV block held."""
    engine = status["engine"]
    return (
        status["connections"]["active"] == 0
        and status["inference"]["active"] == 0
        and status["inference"]["queued"] == 0
        and engine["running"] == 0
        and engine["waiting"] == 0
        and engine["kv_blocks_total"] > 0
        and engine["kv_blocks_free"] == engine["kv_blocks_total"]
    )


def rss_kb(pid: int) -> int:
    """Resident set size of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def start(model: Path, log_path: Path, *extra: str, api_key: str | None = None, new_session: bool = False) -> Server:
    """Start a server and wait until ``/ready`` answers 200 (raises with the log if it exits).

    ``new_session``: in a process group of its own (to signal the group, as a terminal or systemd does).
    """
    port = free_port()
    args = [sys.executable, "-m", "tts_server", "--model", str(model), "--port", str(port), *BASE_ARGS, *extra]
    if api_key is not None:
        args += ["--api-key", api_key]
    environ = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            args, cwd=ROOT, env=environ, stdout=log, stderr=subprocess.STDOUT, start_new_session=new_session
        )
    server = Server(f"http://127.0.0.1:{port}", process, log_path, api_key)
    end = time.monotonic() + 120
    with httpx.Client(base_url=server.url, timeout=5.0) as client:
        while time.monotonic() < end:
            if process.poll() is not None:
                raise AssertionError(f"server exited with {process.returncode}:\n{server.log()}")
            try:
                if client.get("/ready").status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    stop(server)
    raise AssertionError(f"server not ready:\n{server.log()}")


def stop(server: Server, timeout_s: float = 30.0) -> int:
    """SIGTERM, wait (SIGKILL if it hangs); returns the exit code."""
    process = server.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@contextmanager
def running(model: Path, log_path: Path, *extra: str, api_key: str | None = None) -> Iterator[Server]:
    """A server for the ``with`` block, stopped (drained) afterwards."""
    server = start(model, log_path, *extra, api_key=api_key)
    try:
        yield server
    finally:
        stop(server)
