"""Test helpers: an ASGI app under a real hypercorn on a loopback port, one event loop per module, test audio.

Usage inside a coroutine::

    async with AppServer(app) as url:          # "http://127.0.0.1:<port>"
        async with httpx.AsyncClient(base_url=url) as client:
            ...

or kept for a whole module (an ``AsyncEngine`` and the server must share the loop they started on)::

    runner = LoopRunner()
    server = AppServer(app)
    url = runner.run(server.start())
    ...
    runner.run(server.stop())
    runner.close()
"""

from __future__ import annotations

import asyncio
import io
import socket
from collections.abc import Coroutine
from typing import Any, TypeVar

import numpy as np
import soundfile as sf
from hypercorn.asyncio import serve
from hypercorn.config import Config

from tts_server.http.transport import guard

T = TypeVar("T")


class LoopRunner:
    """One event loop kept across tests (an engine client belongs to the loop it was started on)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine to completion on this loop (tasks started earlier progress meanwhile)."""
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        """Close the loop."""
        self.loop.close()


class AppServer:
    """Serve an ASGI app with hypercorn on ``host`` and a free port, on the running event loop.

    The listening socket is bound and listening before hypercorn starts, so the URL is known at
    once and connections made before hypercorn accepts simply wait in the backlog.

    Args:
        app: The ASGI application.
        host: Loopback address to bind.
        graceful_timeout_s: How long shutdown waits for open requests.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", graceful_timeout_s: float = 2.0) -> None:
        self.app = app
        self.host = host
        self.graceful_timeout_s = graceful_timeout_s
        self.url: str | None = None
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> str:
        """Start serving; returns the base URL (``http://127.0.0.1:PORT``)."""
        if self._task is not None:
            raise RuntimeError("AppServer.start() called twice")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        sock.listen(128)
        port = sock.getsockname()[1]
        config = Config()
        config.bind = [f"fd://{sock.detach()}"]  # hypercorn owns and closes the socket from here
        config.graceful_timeout = self.graceful_timeout_s
        config.accesslog = None
        transport_guard = getattr(self.app.state, "transport_guard", None)
        if transport_guard is not None:  # the server's own apps: served as tts_server.process serves them
            guard(config, transport_guard)
        server_config = getattr(self.app.state, "config", None)
        if server_config is not None:  # WebSocket frames capped as tts_server.process caps them
            config.websocket_max_message_size = server_config.max_body_bytes
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(serve(self.app, config, shutdown_trigger=self._stop.wait))
        await asyncio.sleep(0)
        if self._task.done():  # e.g. the app's lifespan start-up failed: raise its error here
            self._task.result()
        self.url = f"http://{self.host}:{port}"
        return self.url

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Shut down gracefully and wait for hypercorn to exit (re-raising its error, if any)."""
        if self._task is None or self._stop is None:
            return
        self._stop.set()
        await asyncio.wait_for(self._task, timeout_s)

    async def __aenter__(self) -> str:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


def sine_wav(seconds: float, sample_rate: int = 16000, freq: float = 220.0, amplitude: float = 0.3) -> bytes:
    """A mono sine as 16-bit PCM WAV file bytes."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    buf = io.BytesIO()
    sf.write(buf, (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32), sample_rate, format="WAV")
    return buf.getvalue()
