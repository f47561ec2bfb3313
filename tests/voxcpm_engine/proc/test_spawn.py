"""Tests of voxcpm_engine.proc.spawn: starting the engine-core process, waiting for READY, reaping it."""

from __future__ import annotations

import multiprocessing
import signal
import time
from multiprocessing.connection import Connection
from pathlib import Path

from voxcpm_engine.config.engine_config import EngineConfig
from voxcpm_engine.proc.messages import StartFailed, Starting, send_message
from voxcpm_engine.proc.spawn import reap, spawn_engine_core, wait_until_started
from voxcpm_engine.types import StartupPhase, StartupProgress

# Forked children: the parent's side is what is under test, and a fork starts in milliseconds.
FORK = multiprocessing.get_context("fork")


def _announce_then(conn: Connection, final: object, steps: int) -> None:
    for done in range(steps):
        send_message(conn, Starting(StartupProgress(StartupPhase.LOADING, done, steps, 0.5 * done)))
    send_message(conn, final)


def _exit_with(code: int) -> None:
    raise SystemExit(code)


def _ignore_sigterm_and_sleep() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(60)


def test_progress_goes_to_the_callback_and_the_first_other_message_is_returned():
    conn, child = FORK.Pipe(duplex=True)
    process = FORK.Process(target=_announce_then, args=(child, StartFailed("no such checkpoint"), 3), daemon=True)
    process.start()
    child.close()
    seen: list[StartupProgress] = []
    result = wait_until_started(process, conn, timeout_s=30, on_progress=seen.append)
    assert result == StartFailed("no such checkpoint")
    assert [(p.done, p.total) for p in seen] == [(0, 3), (1, 3), (2, 3)]
    reap(process, 5.0)
    assert process.exitcode == 0


def test_a_process_that_exits_before_ready_is_reported_with_its_exit_code():
    _, conn = FORK.Pipe(duplex=True)
    process = FORK.Process(target=_exit_with, args=(3,), daemon=True)
    process.start()
    result = wait_until_started(process, conn, timeout_s=30, on_progress=lambda p: None)
    assert result == "the process exited with code 3 before it was ready"


def test_no_ready_in_time_and_reap_kills_a_process_that_ignores_sigterm():
    _, conn = FORK.Pipe(duplex=True)
    process = FORK.Process(target=_ignore_sigterm_and_sleep, daemon=True)
    process.start()
    began = time.monotonic()
    assert wait_until_started(process, conn, timeout_s=0.3, on_progress=lambda p: None) == "no READY within 0 s"
    process.terminate()  # SIGTERM: ignored
    reap(process, timeout_s=0.3)
    assert process.exitcode == -signal.SIGKILL and time.monotonic() - began < 10


def test_spawned_engine_core_reports_a_bad_checkpoint_and_exits(tmp_path: Path):
    config = EngineConfig(max_num_seqs=1, max_num_batched_tokens=8, max_model_len=16)
    process, conn = spawn_engine_core(str(tmp_path / "missing"), config, "cpu", num_threads=1)
    assert process.daemon and process.name == "engine-core[cpu]"
    result = wait_until_started(process, conn, timeout_s=120, on_progress=lambda p: None)
    assert isinstance(result, StartFailed) and "missing" in result.message, result
    reap(process, 30.0)
    assert process.exitcode not in (0, None)
