"""The engine-core process leaves signals to its parent and still never outlives it.

Each case runs a small parent program in a subprocess of its own (signals and ``atexit`` are
per-process), with a real engine process on the tiny model.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

PARENT = """
import asyncio, os, signal, sys, time
from voxcpm_engine.proc.client import AsyncEngine
from voxcpm_engine.config.engine_config import EngineConfig

async def main(mode):
    engine = AsyncEngine(sys.argv[1], EngineConfig(max_num_seqs=2, max_num_batched_tokens=64, max_model_len=256),
                         num_threads=1)
    await engine.start()
    print("engine", engine.pid, flush=True)
    if mode == "group-signal":
        stream = engine.generate("r", "Hello there.")
        first = await anext(stream)
        # Ctrl-C / systemd / kill -TERM -PGID: every process of the group gets the signal.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        os.killpg(os.getpgid(0), signal.SIGTERM)
        os.killpg(os.getpgid(0), signal.SIGINT)
        await asyncio.sleep(0.5)
        chunks = 1 + len([c async for c in stream])
        print("chunks", chunks, "alive", engine.is_alive, flush=True)
        await engine.stop()
        print("stopped", flush=True)
    elif mode == "forgotten":
        print("leaving without stop()", flush=True)  # atexit must not hang on the engine

asyncio.run(main(sys.argv[2]))
"""


def _run_parent(model: Path, mode: str) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    began = time.monotonic()
    # start_new_session: the parent gets a process group of its own to signal.
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PARENT), str(model), mode],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        start_new_session=True,
    )
    return done, time.monotonic() - began


def _engine_pid(stdout: str) -> int:
    return int(next(line for line in stdout.splitlines() if line.startswith("engine ")).split()[1])


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


def test_a_signal_to_the_process_group_does_not_stop_the_engine(tiny_v2: Path):
    done, _ = _run_parent(tiny_v2, "group-signal")
    assert done.returncode == 0, done.stdout + done.stderr
    # The stream went on to its natural end after SIGTERM and SIGINT reached the engine's group.
    chunks_line = next(line for line in done.stdout.splitlines() if line.startswith("chunks "))
    _, chunks, _, alive = chunks_line.split()
    assert int(chunks) > 1 and alive == "True", done.stdout
    assert "stopped" in done.stdout
    assert _gone(_engine_pid(done.stdout))


def test_a_parent_that_exits_without_stop_takes_its_engine_along(tiny_v2: Path):
    done, seconds = _run_parent(tiny_v2, "forgotten")
    assert done.returncode == 0, done.stdout + done.stderr
    pid = _engine_pid(done.stdout)
    end = time.monotonic() + 5
    while not _gone(pid) and time.monotonic() < end:
        time.sleep(0.05)
    assert _gone(pid), "the engine outlived its parent"
    assert seconds < 60, f"the parent took {seconds:.0f} s to exit"
