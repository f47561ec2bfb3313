"""The server process: hypercorn serving the app, with signals, drain and engine death wired to its stop.

Shutdown: on SIGTERM or SIGINT ``/ready`` turns 503 at once and new work gets 503; requests in
flight get ``--shutdown-grace`` seconds to finish, then whatever is left is cut off (streams break
off, body waits end, stalled connections are aborted) and the process exits 0 about a second
later. A second signal, a second or more after the first, cuts everything off at once. The
signal may come to this process alone or to its whole process group (Ctrl-C, ``kill -TERM
-PGID``, systemd): the engine processes ignore it and stop when this process tells them to. If an
engine dies the process exits 3 (see ``tts_server.app``).
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

from tts_server.app import create_app, cut_all, drain
from tts_server.config import ServerConfig
from tts_server.http.transport import guard
from tts_server.lifecycle import Lifecycle

__all__ = ["run_server"]

log = logging.getLogger("tts_server")

_ENGINE_DEATH_SETTLE_S = 5.0  # after an engine death: time for open responses to send their errors
# After our own drain, hypercorn closes idle keep-alive connections at once; anything still open
# then was cut off already and gets this long before its task is cancelled.
_HYPERCORN_GRACE_S = 1.0
# Idle keep-alive connections stay open longer than clients and balancers keep them (httpx 5 s,
# AWS ALB 60 s): a server that closes first races a request sent on the connection at that moment,
# which the client sees as "disconnected without a response". Idle connections hold no place.
_KEEP_ALIVE_S = 75.0
_SAME_SHUTDOWN_S = 1.0  # a signal this soon after the first is the same shutdown request, not a second


def _hypercorn_config(config: ServerConfig) -> HypercornConfig:
    hyper = HypercornConfig()
    host = f"[{config.host}]" if ":" in config.host else config.host
    hyper.bind = [f"{host}:{config.port}"]
    hyper.loglevel = config.log_level.upper()
    hyper.errorlog = logging.getLogger("hypercorn.error")  # through our handler, not a second one
    # method, path, status only (no bodies, no keys), and only when debugging
    hyper.accesslog = logging.getLogger("hypercorn.access") if config.log_level == "debug" else None
    hyper.graceful_timeout = _HYPERCORN_GRACE_S
    hyper.keep_alive_timeout = _KEEP_ALIVE_S
    # A session's start message may carry prompt audio, like a request body; larger frames close with 1009.
    hyper.websocket_max_message_size = config.max_body_bytes
    return hyper


class _Runner:
    """Signals, drain and engine death → the moment hypercorn should stop."""

    def __init__(self, app: Starlette, config: ServerConfig) -> None:
        self.app = app
        self.config = config
        self.lifecycle: Lifecycle = app.state.lifecycle
        self.stop = asyncio.Event()
        self._first_signal_at: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        now = asyncio.get_running_loop().time()
        if self._first_signal_at is None:
            self._first_signal_at = now
            log.info("%s: draining; in-flight requests get %.0f s", name, self.config.shutdown_grace)
            self._spawn(self._drain())
        elif now - self._first_signal_at < _SAME_SHUTDOWN_S:
            # One shutdown delivered twice: to the process group and forwarded by a wrapper
            # (main.sh's trap), or SIGINT and SIGTERM from a supervisor.
            log.info("%s: already draining", name)
        else:
            log.warning("%s again: cutting off in-flight requests now", name)
            self._spawn(self._hurry())

    async def _drain(self) -> None:
        await drain(self.app, self.config.shutdown_grace)
        self.stop.set()

    async def _hurry(self) -> None:
        await cut_all(self.app)
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
            hyper = guard(_hypercorn_config(self.config), self.app.state.transport_guard)
            await serve(self.app, hyper, shutdown_trigger=self.stop.wait)
        finally:
            for task in list(self._tasks):
                task.cancel()
        return self.lifecycle.exit_code


def run_server(config: ServerConfig) -> int:
    """Serve until told to stop; returns the exit code (0 after a drain, 3 after an engine death).

    Raises:
        Exception: The app could not start (engine load failure, unreadable voices directory...).
    """
    main = _Runner(create_app(config, freeze_when_ready=True), config).run()
    if config.event_loop == "uvloop":
        # libuv accepts and reads in C: the median request of a burst of 128 reached the app in 20 ms
        # instead of 43 on an H100 host, but time to first audio was no better (docs/PERFORMANCE.md).
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
