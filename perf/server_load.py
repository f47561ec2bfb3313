"""The server process's own CPU load during a level: its event loop's share of the level's wall time.

The server does every request's HTTP work on one event loop (``tts_server/loop_load.py``); when that
loop is near 100% busy, the server, not the engine, limits throughput over HTTP. :class:`StatusPoller`
reads ``/status`` on a thread while a level runs; :func:`cpu_shares` turns the cumulative CPU
seconds it saw into the loop's and the whole process's share of the level's span.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from types import TracebackType

import httpx

from perf.metrics import StreamTrace

__all__ = ["CpuSample", "StatusPoller", "cpu_shares", "level_span"]


@dataclass(frozen=True)
class CpuSample:
    """One ``/status`` read: when (``time.perf_counter()``) and the server's cumulative CPU seconds."""

    at: float
    loop_cpu_s: float
    process_cpu_s: float


class StatusPoller:
    """Read ``{server}/status`` every ``period_s`` on a thread while in the ``with`` block.

    A server without the figures (an older build, another server) gives no samples; a read that
    fails is skipped. Each read is one small request on the loop it measures (about 1 ms per
    ``period_s``).
    """

    def __init__(self, server: str, period_s: float = 0.25) -> None:
        if period_s <= 0:
            raise ValueError(f"period_s must be > 0, got {period_s!r}")
        self.url = server.rstrip("/") + "/status"
        self.period_s = period_s
        self.samples: list[CpuSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="status-poller", daemon=True)

    def _read(self, client: httpx.Client) -> None:
        try:
            server = client.get(self.url).json().get("server")
        except (httpx.HTTPError, ValueError):
            return
        if isinstance(server, dict) and {"loop_cpu_s", "process_cpu_s"} <= set(server):
            self.samples.append(CpuSample(time.perf_counter(), server["loop_cpu_s"], server["process_cpu_s"]))

    def _run(self) -> None:
        with httpx.Client(timeout=2.0) as client:
            while True:
                self._read(client)
                if self._stop.wait(self.period_s):
                    self._read(client)  # one read after the level, so its end is bracketed
                    return

    def __enter__(self) -> StatusPoller:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()

    def shares(self, traces: list[StreamTrace], requests: int = 0, audio_s: float = 0.0) -> dict[str, float]:
        """:func:`cpu_shares` of these samples over the level of ``traces`` (:func:`level_span`); empty
        when the level had no audio or too few samples fell inside it."""
        span = level_span(traces)
        shares = cpu_shares(self.samples, *span, requests=requests, audio_s=audio_s) if span is not None else None
        return shares or {}


def level_span(traces: list[StreamTrace]) -> tuple[float, float] | None:
    """From the first request's send to the last chunk's arrival (``None`` without any chunk)."""
    ends = [t.arrivals[-1] for t in traces if t.arrivals]
    if not ends:
        return None
    return min(t.submitted for t in traces), max(ends)


def cpu_shares(
    samples: list[CpuSample], start: float, end: float, requests: int = 0, audio_s: float = 0.0
) -> dict[str, float] | None:
    """The server's CPU over the samples inside ``[start, end]``, in percent of their wall time.

    With ``requests`` (answered in the span) and ``audio_s`` (their audio), the loop's CPU is also
    given per request and per second of audio: the busy share applied to the whole span, so that
    versions of the server compare at any load.

    Returns:
        ``{"server_loop_busy_pct", "server_process_cpu_pct"}`` and, when given the counts,
        ``server_loop_ms_per_request`` and ``server_loop_ms_per_audio_s``; ``None`` with fewer than two
        samples inside the span (a level shorter than two poll periods).
    """
    inside = [s for s in samples if start <= s.at <= end]
    if len(inside) < 2 or inside[-1].at <= inside[0].at:
        return None
    first, last = inside[0], inside[-1]
    wall = last.at - first.at
    busy = (last.loop_cpu_s - first.loop_cpu_s) / wall
    out = {
        "server_loop_busy_pct": round(100.0 * busy, 1),
        "server_process_cpu_pct": round(100.0 * (last.process_cpu_s - first.process_cpu_s) / wall, 1),
    }
    if requests > 0:
        out["server_loop_ms_per_request"] = round(1000.0 * busy * (end - start) / requests, 3)
    if audio_s > 0:
        out["server_loop_ms_per_audio_s"] = round(1000.0 * busy * (end - start) / audio_s, 3)
    return out
