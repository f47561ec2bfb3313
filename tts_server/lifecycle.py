"""The server's own lifecycle: starting, ready, draining, engine dead, stopped.

One object answers "may new work come in?" for the admission middleware and ``/ready``, and
carries the process's exit code: 0 after a drain, 1 when the start failed, 3 after the engine died
(so the supervisor restarts the whole server, see ``tts_server.app``).
"""

from __future__ import annotations

import asyncio
import enum
import logging

__all__ = ["EXIT_ENGINE_DEAD", "EXIT_START_FAILED", "Lifecycle", "ServerState"]

log = logging.getLogger(__name__)

EXIT_START_FAILED = 1
EXIT_ENGINE_DEAD = 3


class ServerState(enum.Enum):
    """Where the server is; only READY takes new work."""

    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    ENGINE_DEAD = "engine_dead"
    START_FAILED = "start_failed"
    STOPPED = "stopped"


class Lifecycle:
    """The server state plus the event that tells the process runner to shut down.

    Attributes:
        state: Current state.
        reason: Why the server is not READY (for ``/ready`` and 503 messages), if it is not.
        exit_code: What the process should exit with.
    """

    def __init__(self) -> None:
        self.state = ServerState.STARTING
        self.reason: str | None = "the engine is starting"
        self.exit_code = 0
        self._shutdown = asyncio.Event()

    @property
    def accepting(self) -> bool:
        """Whether new work may be admitted."""
        return self.state is ServerState.READY

    @property
    def shutdown_requested(self) -> asyncio.Event:
        """Set when the process should stop serving (drain over, or engine death)."""
        return self._shutdown

    def ready(self) -> None:
        """The engine is up: take work."""
        if self.state is ServerState.STARTING:
            self.state = ServerState.READY
            self.reason = None

    def drain(self) -> bool:
        """Stop taking work (SIGTERM); False if the server was not serving."""
        if self.state not in (ServerState.READY, ServerState.STARTING):
            return False
        self.state = ServerState.DRAINING
        self.reason = "the server is shutting down"
        return True

    def engine_died(self, message: str) -> None:
        """The engine is gone: refuse work, exit non-zero, and ask the runner to stop.

        A start that has already failed keeps its reason and exit code (1): the supervisor should
        see why the server never served, not that its engine went away afterwards.
        """
        if self.state in (ServerState.STOPPED, ServerState.START_FAILED):
            return
        self.state = ServerState.ENGINE_DEAD
        self.reason = f"the engine is not running: {message}"
        self.exit_code = EXIT_ENGINE_DEAD
        self._shutdown.set()

    def start_failed(self, message: str) -> None:
        """The engine, tokenizer or voices could not be loaded: exit non-zero at once."""
        if self.state is not ServerState.STARTING:
            return
        self.state = ServerState.START_FAILED
        self.reason = f"the server could not start: {message}"
        self.exit_code = EXIT_START_FAILED
        self._shutdown.set()

    def stopped(self) -> None:
        """The app has shut down."""
        if self.state not in (ServerState.ENGINE_DEAD, ServerState.START_FAILED):
            self.state = ServerState.STOPPED
            self.reason = "the server has stopped"
