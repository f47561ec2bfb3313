"""The server process: hypercorn serving the app, with signals, drain and engine death wired to its stop.

Shutdown: on SIGTERM or SIGINT ``/ready`` turns 503 at once and new work gets 503; requests in
flight get ``--shutdown-grace`` seconds to finish, then whatever is left is cancelled and the
process exits 0. A second signal cancels what is left at once. If an engine dies the process
exits 3 (see ``tts_server.app``).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Coroutine
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig
from starlette.applications import Starlette

from tts_server.app import create_app, drain
from tts_server.config import ServerConfig
from tts_server.inflight import CancelReason
from tts_server.lifecycle import Lifecycle

__all__ = ["run_server"]

log = logging.getLogger("tts_server")

_ENGINE_DEATH_SETTLE_S = 5.0  # after an engine death: time for open responses to send their errors


def _hypercorn_config(config: ServerConfig) -> HypercornConfig:
    hyper = HypercornConfig()
    host = f"[{config.host}]" if ":" in config.host else config.host
    hyper.bind = [f"{host}:{config.port}"]
    hyper.loglevel = config.log_level.upper()
    hyper.errorlog = logging.getLogger("hypercorn.error")  # through our handler, not a second one
    # method, path, status only (no bodies, no keys), and only when debugging
    hyper.accesslog = logging.getLogger("hypercorn.access") if config.log_level == "debug" else None
    hyper.graceful_timeout = 5.0  # our own drain already waited for requests; this covers idle keep-alives
    return hyper


class _Runner:
    """Signals, drain and engine death → the moment hypercorn should stop."""

    def __init__(self, app: Starlette, config: ServerConfig) -> None:
        self.app = app
        self.config = config
        self.lifecycle: Lifecycle = app.state.lifecycle
        self.stop = asyncio.Event()
        self._signals = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def on_signal(self, signum: int) -> None:
        self._signals += 1
        name = signal.Signals(signum).name
        if self._signals == 1:
            log.info("%s: draining; in-flight requests get %.0f s", name, self.config.shutdown_grace)
            self._spawn(self._drain())
        else:
            log.warning("%s again: cancelling in-flight requests now", name)
            self._spawn(self._hurry())

    async def _drain(self) -> None:
        await drain(self.app, self.config.shutdown_grace)
        self.stop.set()

    async def _hurry(self) -> None:
        registry = getattr(self.app.state, "registry", None)
        if registry is not None:
            await registry.cancel_all(CancelReason.SHUTDOWN)
        self.stop.set()

    async def watch_engine(self) -> None:
        await self.lifecycle.shutdown_requested.wait()
        admission = self.app.state.admission
        end = asyncio.get_running_loop().time() + _ENGINE_DEATH_SETTLE_S
        while admission.active and asyncio.get_running_loop().time() < end:
            await asyncio.sleep(0.05)
        self.stop.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.on_signal, signum)
        self._spawn(self.watch_engine())
        try:
            await serve(self.app, _hypercorn_config(self.config), shutdown_trigger=self.stop.wait)
        finally:
            for task in list(self._tasks):
                task.cancel()
        return self.lifecycle.exit_code


def run_server(config: ServerConfig) -> int:
    """Serve until told to stop; returns the exit code (0 after a drain, 3 after an engine death).

    Raises:
        Exception: The app could not start (engine load failure, unreadable voices directory...).
    """
    return asyncio.run(_Runner(create_app(config), config).run())
