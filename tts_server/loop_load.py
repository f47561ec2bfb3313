"""How busy the server's event loop is: its thread's CPU time and how late a short timer fires.

Everything the server does for a request (parse, queue, hand-off to the engine client, each audio
chunk's encode and write) runs on one event loop, so its thread is the server's own throughput
ceiling: near 100% CPU, every stream's chunks and every new request wait behind the others. The
engine process is separate and shows up in the engine figures instead.

:func:`watch_loop` ticks every :data:`TICK_S` on the loop. Each tick records the loop thread's CPU
time (``time.thread_time()`` read on that thread), the whole process's (the loop plus the engine
client's pipe threads and encoder threads), and the tick's lateness. ``/status`` and ``/metrics``
read the last tick: busy share and the largest lateness over the last :data:`WINDOW_S`, and the
cumulative CPU seconds, which a benchmark differences over a level.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass

__all__ = ["TICK_S", "WINDOW_S", "LoopFigures", "LoopLoad", "watch_loop"]

TICK_S = 0.1
WINDOW_S = 2.0  # long enough to smooth the ticks, short enough to follow a level of a benchmark


@dataclass(frozen=True)
class LoopFigures:
    """The event loop's load as of the last tick.

    Attributes:
        loop_cpu_s: CPU seconds of the event loop's thread since the server started.
        process_cpu_s: CPU seconds of the whole server process (every thread; not the engine process).
        busy_pct: The loop thread's CPU time over the last window, in percent of the window's wall time.
        lag_ms: The largest lateness of a tick over the last window: how long a ready callback can
            wait for the loop.
        uptime_s: Seconds since the first tick.
    """

    loop_cpu_s: float = 0.0
    process_cpu_s: float = 0.0
    busy_pct: float = 0.0
    lag_ms: float = 0.0
    uptime_s: float = 0.0


class LoopLoad:
    """The ticks' record (see the module docstring). Call :meth:`tick` only on the event loop's thread."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s!r}")
        self._window_s = window_s
        self._start = time.monotonic()
        self._cpu0 = time.thread_time()
        self._process0 = time.process_time()
        # (monotonic, loop thread CPU, lateness) per tick within the window, oldest first
        self._ticks: deque[tuple[float, float, float]] = deque([(self._start, self._cpu0, 0.0)])
        self._last = LoopFigures()

    def tick(self, late_s: float) -> LoopFigures:
        """Record one tick that fired ``late_s`` seconds after it was due; returns the new figures."""
        now, cpu = time.monotonic(), time.thread_time()
        ticks = self._ticks
        ticks.append((now, cpu, max(0.0, late_s)))
        while len(ticks) > 2 and now - ticks[1][0] >= self._window_s:
            ticks.popleft()
        t_first, cpu_first, _ = ticks[0]
        wall = now - t_first
        self._last = LoopFigures(
            loop_cpu_s=cpu - self._cpu0,
            process_cpu_s=time.process_time() - self._process0,
            busy_pct=round(100.0 * (cpu - cpu_first) / wall, 1) if wall > 0 else 0.0,
            lag_ms=round(1000.0 * max(late for _, _, late in list(ticks)[1:]), 2),
            uptime_s=now - self._start,
        )
        return self._last

    @property
    def figures(self) -> LoopFigures:
        """The figures of the last tick (at most :data:`TICK_S` plus the loop's lag old)."""
        return self._last


async def watch_loop(load: LoopLoad, period_s: float = TICK_S) -> None:
    """Tick ``load`` every ``period_s`` until cancelled (runs as a task on the loop it measures)."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + period_s
        await asyncio.sleep(period_s)
        load.tick(loop.time() - due)
