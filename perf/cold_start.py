"""Cold start of a real server: time to ``/ready`` and the first requests after it, empty vs filled kernel cache.

What a new replica's first users get. :func:`cold_start` starts ``python -m tts_server`` with an
empty kernel cache directory (``--kernel-cache-dir``, a new temporary one unless given) and times
its start until ``/ready`` answers 200. Then, at each concurrency level in turn, the very first
requests of that size (no warm-up: whatever the server still had to compile or capture shows
here), and after all levels the same levels again, warm, ``repeats`` times each. The server is
stopped and started once more on the same, now filled, cache and measured the same way.

Per start it reports the seconds to ``/ready`` and per level the first run's TTFB (p50 and max)
against the warm runs' median TTFB p50, and the longest gap any stream of the first run saw
between two pieces of audio (the server writes each chunk as made, ``--stream-write-seconds 0``,
so a gap is a stall). The promise it checks (issue: warm from the first request): each first run
within 1.5x of its warm value and no gap over 100 ms.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from perf.http_client import HttpLoad, http_level
from perf.metrics import combine_repeats, summarize_closed, summarize_stages

FIRST_OVER_WARM_MAX = 1.5  # the first run's TTFB p50 over the warm median, at most
GAP_MAX_MS = 100.0  # the longest silence a running stream may see while others start
_POLL_S = 0.1
_STOP_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class ColdStartPlan:
    """What :func:`cold_start` runs.

    Attributes:
        model_dir: Checkpoint directory the server loads.
        levels: Concurrency levels, in order (each one's first run, then each one warm).
        load: What each request asks for.
        repeats: Warm runs per level.
        max_num_seqs: The server's inference slots (default: the largest level).
        max_num_batched_tokens: The server's token budget per step (``None``: the server's default);
            the benchmark passes its own, so a server runs with the budget of the in-process runs.
        kernel_cache_dir: The cache to start from; ``None``: a new, empty temporary directory.
        server_args: More ``tts_server`` flags.
        ready_timeout_s: Longest wait for ``/ready``.
        log_dir: Where the servers' logs go.
    """

    model_dir: Path
    levels: tuple[int, ...] = (1, 4, 16, 64, 128)
    load: HttpLoad = HttpLoad()
    repeats: int = 3
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    kernel_cache_dir: Path | None = None
    server_args: tuple[str, ...] = ()
    ready_timeout_s: float = 900.0
    log_dir: Path = Path(tempfile.gettempdir())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def server_argv(plan: ColdStartPlan, port: int, cache_dir: Path) -> list[str]:
    """The command line of one server start: the plan's limits, then its extra flags (which win)."""
    argv = [
        sys.executable, "-m", "tts_server", "--model", str(plan.model_dir), "--host", "127.0.0.1",
        "--port", str(port), "--max-num-seqs", str(plan.max_num_seqs or max(plan.levels)),
        "--voices-dir", "", "--kernel-cache-dir", str(cache_dir),
        # every chunk written as made, so a long gap between two is a stall in the server, not a paced block
        "--stream-write-seconds", "0",
    ]  # fmt: skip
    if plan.max_num_batched_tokens is not None:
        argv += ["--max-num-batched-tokens", str(plan.max_num_batched_tokens)]
    return argv + list(plan.server_args)


class ServerProcess:
    """``python -m tts_server`` on loopback, started now; its log goes to a file."""

    def __init__(self, plan: ColdStartPlan, cache_dir: Path, label: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = plan.log_dir / f"cold-start-server-{label}.log"
        argv = server_argv(plan, self.port, cache_dir)
        self.started = time.perf_counter()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout_s: float) -> float:
        """Seconds from the start to the first ``/ready`` 200.

        Raises:
            RuntimeError: The server exited first (with the end of its log), or ``timeout_s`` passed.
        """
        deadline = self.started + timeout_s
        with httpx.Client(timeout=2.0) as client:
            while time.perf_counter() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"the server exited with code {self.process.returncode} before it was ready:\n"
                        + _tail(self.log_path)
                    )
                try:
                    if client.get(f"{self.url}/ready").status_code == 200:
                        return time.perf_counter() - self.started
                except httpx.TransportError:
                    pass  # not listening yet
                time.sleep(_POLL_S)
        raise RuntimeError(f"the server was not ready in {timeout_s:g} s:\n" + _tail(self.log_path))

    def stop(self) -> None:
        """SIGTERM (the server drains and exits), SIGKILL after a minute."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def _level(url: str, level: int, load: HttpLoad, tag: str) -> dict[str, Any]:
    traces, wall = http_level(url, num_requests=level, concurrency=level, load=load, tag=tag)
    row: dict[str, Any] = {"engine": "server", "concurrency": level, **summarize_closed(traces, wall)}
    gaps = [t.max_gap * 1e3 for t in traces if t.ok]
    row["max_gap_ms_max"] = max(gaps) if gaps else float("nan")
    row["ttfb_ms_max"] = max((t.ttfb * 1e3 for t in traces if t.ok), default=float("nan"))
    row["server_timing_ms"] = summarize_stages(traces)
    return row


def measure_start(plan: ColdStartPlan, cache_dir: Path, label: str, log: Any = print) -> dict[str, Any]:
    """One server start on ``cache_dir``: time to ``/ready``, each level's first run, then each level warm."""
    server = ServerProcess(plan, cache_dir, label)
    try:
        ready_s = server.wait_ready(plan.ready_timeout_s)
        log(f"[{label}] /ready 200 after {ready_s:.1f} s (kernel cache {cache_dir})")
        first = []
        for level in plan.levels:
            row = _level(server.url, level, plan.load, f"first-c{level}-")
            first.append(row)
            log(
                f"[{label}] first {level}: TTFB p50 {row['ttfb_ms_p50']:.1f} max {row['ttfb_ms_max']:.1f} ms, "
                f"longest gap {row['max_gap_ms_max']:.1f} ms, underrun {row['underrun_share']:.0%}"
            )
        warm = []
        for level in plan.levels:
            runs = [_level(server.url, level, plan.load, f"warm-c{level}r{r}-") for r in range(plan.repeats)]
            warm.append(combine_repeats(runs))
            log(f"[{label}] warm {level}: TTFB p50 median {warm[-1]['ttfb_ms_p50']:.1f} ms")
    finally:
        server.stop()
    levels = []
    for f, w in zip(first, warm, strict=True):
        ratio = f["ttfb_ms_p50"] / w["ttfb_ms_p50"] if w["ttfb_ms_p50"] > 0 else float("nan")
        levels.append(
            {
                "concurrency": f["concurrency"],
                "first": f,
                "warm": w,
                "first_over_warm": ratio,
                "ok": ratio <= FIRST_OVER_WARM_MAX and f["max_gap_ms_max"] <= GAP_MAX_MS and f["errors"] == 0,
            }
        )
    return {"label": label, "ready_s": ready_s, "kernel_cache_dir": str(cache_dir), "levels": levels}


def cold_start(plan: ColdStartPlan, log: Any = print) -> list[dict[str, Any]]:
    """Two starts: on an empty kernel cache, then on the cache the first start filled (see the module docstring)."""
    if plan.kernel_cache_dir is not None:
        cache = plan.kernel_cache_dir
        if cache.exists() and any(cache.iterdir()):
            raise ValueError(f"kernel cache {cache} is not empty: a cold start needs an empty one")
        cache.mkdir(parents=True, exist_ok=True)
        return [measure_start(plan, cache, "empty-cache", log), measure_start(plan, cache, "filled-cache", log)]
    with tempfile.TemporaryDirectory(prefix="voxcpm-kernels-") as tmp:
        cache = Path(tmp)
        return [measure_start(plan, cache, "empty-cache", log), measure_start(plan, cache, "filled-cache", log)]


def parse_server_args(text: str | None) -> tuple[str, ...]:
    """``--server-args "--flag value ..."`` as argv words."""
    return tuple(shlex.split(text or ""))
