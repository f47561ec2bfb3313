"""The parent's side of the engine-core process: start it, wait for READY, reap it, never leave one behind.

The child (:func:`voxcpm_engine.proc.core.run_engine_core`) ignores
:data:`voxcpm_engine.proc.core.ENGINE_IGNORED_SIGNALS`:
signals are the server's, and the child stops when its parent says so or goes away. So this side
blocks those signals around the spawn (the child starts with them blocked, until it ignores them),
kills rather than terminates a child that does not exit, and kills at exit any child a parent
never stopped.
"""

from __future__ import annotations

import atexit
import multiprocessing
import signal
import time
import weakref
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

from voxcpm_engine.config.engine_config import EngineConfig
from voxcpm_engine.proc.core import ENGINE_IGNORED_SIGNALS, run_engine_core
from voxcpm_engine.proc.messages import Starting, recv_message
from voxcpm_engine.types import StartupProgress

__all__ = ["reap", "spawn_engine_core", "wait_until_started"]


def spawn_engine_core(
    checkpoint_dir: str,
    engine_config: EngineConfig | None,
    device: str,
    dtype: str | None = None,
    num_threads: int | None = None,
) -> tuple[BaseProcess, Connection]:
    """Start :func:`run_engine_core` in a spawned daemon process; returns it and the parent's end of the pipe.

    The child starts with :data:`ENGINE_IGNORED_SIGNALS` blocked (a signal mask survives fork and
    exec), so a signal to the process group while the interpreter starts cannot kill it before it
    ignores them; here they stay pending for the moment of the spawn and are delivered after it.
    """
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=True)
    args = (child, checkpoint_dir, engine_config, device, dtype, num_threads)
    process = ctx.Process(target=run_engine_core, args=args, name=f"engine-core[{device}]", daemon=True)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, ENGINE_IGNORED_SIGNALS)
    try:
        process.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    _spawned.add(process)
    child.close()  # else our copy of the child's end would hide its death (no EOF)
    return process, parent


def wait_until_started(
    process: BaseProcess, conn: Connection, timeout_s: float, on_progress: Callable[[StartupProgress], None]
) -> object:
    """READY / StartFailed, or a string saying why neither came (blocking: run it in a worker thread).

    Every :class:`~voxcpm_engine.proc.messages.Starting` message before it goes to ``on_progress``.
    """
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        ready = wait([conn, process.sentinel], timeout=left)
        if conn in ready:
            try:
                message = recv_message(conn)
            except EOFError:
                pass
            else:
                if isinstance(message, Starting):
                    on_progress(message.progress)
                    continue
                return message
        if ready:
            process.join(5.0)
            return f"the process exited with code {process.exitcode} before it was ready"
    return f"no READY within {timeout_s:.0f} s"


def reap(process: BaseProcess, timeout_s: float) -> None:
    """Wait for the process to exit; kill it if it does not (blocking; it ignores SIGTERM)."""
    process.join(timeout_s)
    if process.exitcode is None:
        process.kill()
        process.join(2.0)


def _kill_left_over_engines() -> None:
    # multiprocessing's own exit handler would SIGTERM (ignored) and then join them forever; this
    # one is registered after it and so runs first. Only a parent that never stopped its engine
    # (an exception, a script that forgot) gets here; the engine has nothing left to save.
    for process in list(_spawned):
        if process.exitcode is None:
            process.kill()
            process.join(2.0)


_spawned: weakref.WeakSet[BaseProcess] = weakref.WeakSet()
atexit.register(_kill_left_over_engines)
