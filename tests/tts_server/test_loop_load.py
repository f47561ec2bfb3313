"""The event loop's load figures: busy share and lateness from real CPU work and real blocking on a loop."""

import asyncio
import time

import pytest

from tts_server.loop_load import LoopLoad, watch_loop


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_a_busy_thread_reads_near_100_percent_and_an_idle_one_near_0():
    load = LoopLoad(window_s=10.0)
    _spin(0.2)
    busy = load.tick(0.0)
    assert busy.busy_pct > 60.0
    assert busy.loop_cpu_s >= 0.2 and busy.process_cpu_s >= busy.loop_cpu_s
    idle = LoopLoad(window_s=10.0)
    time.sleep(0.2)
    assert idle.tick(0.0).busy_pct < 20.0


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
        return load.figures.lag_ms, load.figures.busy_pct

    lag_ms, busy_pct = asyncio.run(main())
    assert lag_ms >= 150.0
    assert busy_pct > 40.0
