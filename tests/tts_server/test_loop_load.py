"""The event loop's load figures: busy share and lateness from real CPU work and real blocking on a loop."""

import asyncio
import time

import pytest

from tts_server.loop_load import LoopLoad, watch_loop


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def _measured(work) -> tuple[LoopLoad, float]:
    """A fresh load's first tick after ``work``, and the busy share measured around it independently."""
    t0, c0 = time.monotonic(), time.thread_time()
    load = LoopLoad(window_s=10.0)
    work()
    load.tick(0.0)
    return load, 100.0 * (time.thread_time() - c0) / (time.monotonic() - t0)


def test_busy_share_is_the_threads_cpu_over_wall_time():
    busy, expected = _measured(lambda: _spin(0.2))
    # However much other processes slow this one down, the share is this thread's CPU over wall time.
    assert busy.figures.busy_pct == pytest.approx(expected, abs=5.0) and expected > 10.0
    assert busy.figures.loop_cpu_s >= 0.2 and busy.figures.process_cpu_s >= busy.figures.loop_cpu_s
    idle, expected = _measured(lambda: time.sleep(0.2))
    assert idle.figures.busy_pct == pytest.approx(expected, abs=5.0) and idle.figures.busy_pct < 10.0


def test_the_window_forgets_old_ticks_but_the_totals_do_not():
    load = LoopLoad(window_s=0.15)
    _spin(0.15)
    load.tick(0.5)
    first = load.figures
    assert first.lag_ms == 500.0
    for _ in range(4):
        time.sleep(0.06)
        load.tick(0.0)
    later = load.figures
    assert later.lag_ms == 0.0  # the late tick left the window
    assert later.busy_pct < 30.0  # so did the busy stretch
    assert later.loop_cpu_s >= first.loop_cpu_s >= 0.15
    assert load.tick(-1.0).lag_ms == 0.0  # early is not late


def test_window_must_be_positive():
    with pytest.raises(ValueError, match="window_s"):
        LoopLoad(window_s=0)


def test_watch_loop_sees_a_blocked_loop():
    async def main() -> tuple[float, float]:
        load = LoopLoad()
        watcher = asyncio.create_task(watch_loop(load, period_s=0.02))
        await asyncio.sleep(0.1)
        _spin(0.25)  # the loop is held: the watcher's timer fires late
        await asyncio.sleep(0.1)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        return load.figures.lag_ms, load.figures.loop_cpu_s

    lag_ms, loop_cpu_s = asyncio.run(main())
    assert lag_ms >= 200.0  # at least the 0.25 s of CPU it was held for, less the tick it was waiting for
    assert loop_cpu_s >= 0.25  # the watcher ran on the loop's thread, where the spin was
