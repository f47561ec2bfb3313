"""The TCP side of a connection: a client that stops reading is cut off after ``--send-timeout``.

Hypercorn writes a response and then waits, without a limit, for the socket to drain; a client
that never reads (or reads a byte now and then) would hold its connection, and with it its
request's inference slot and connection place, forever. :class:`GuardedTCPServer` is hypercorn's
connection handler with two limits:

- a write whose data cannot be handed to the kernel within ``send_timeout`` seconds aborts the
  connection (a TCP reset, no further bytes): the app then sees ``http.disconnect`` and ends the
  request exactly as if the client had gone away (engine request aborted, slot and place back);
- closing a connection whose last bytes the client does not take waits at most as long, then
  aborts; after :meth:`TransportGuard.cut` (the end of the shutdown grace) it aborts at once.

:func:`install` puts the class in place of hypercorn's own in ``hypercorn.asyncio.run`` (its only
user); connections served with a config that carries no :class:`TransportGuard` (see
:func:`guard`) behave exactly as before.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import hypercorn.asyncio.run as hypercorn_run
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Closed, Event, RawData

__all__ = ["GuardedTCPServer", "TransportGuard", "guard", "install"]

log = logging.getLogger(__name__)

_ATTRIBUTE = "tts_transport_guard"


@dataclass(eq=False)
class TransportGuard:
    """The limits of every connection of one server.

    Attributes:
        send_timeout: Seconds a write may wait for the client to read before the connection is aborted.
        on_stall: Called once per connection cut for a stalled write (metrics).
        cutting: Set by :meth:`cut`: a connection that closes with unsent bytes is aborted at once.
    """

    send_timeout: float
    on_stall: Callable[[], None] = field(default=lambda: None)
    cutting: bool = False
    _waiting: set[GuardedTCPServer] = field(default_factory=set)  # connections waiting for their client to read

    def cut(self) -> None:
        """Abort every connection waiting for its client to read, and from now on close without waiting."""
        self.cutting = True
        for server in list(self._waiting):
            server.writer.transport.abort()  # the waiting drain fails: hypercorn closes the stream


def guard(config: HypercornConfig, transport_guard: TransportGuard) -> HypercornConfig:
    """Attach ``transport_guard`` to a hypercorn config (and make sure the guarded class is installed)."""
    install()
    setattr(config, _ATTRIBUTE, transport_guard)
    return config


class GuardedTCPServer(TCPServer):
    """Hypercorn's TCP connection handler with a write-stall limit (see the module docstring)."""

    @property
    def _guard(self) -> TransportGuard | None:
        return getattr(self.config, _ATTRIBUTE, None)

    async def protocol_send(self, event: Event) -> None:
        guard = self._guard
        if guard is None or not isinstance(event, RawData):
            await super().protocol_send(event)
            return
        async with self.send_lock:
            transport = self.writer.transport
            try:
                self.writer.write(event.data)
                if transport.get_write_buffer_size() <= transport.get_write_buffer_limits()[1]:
                    await self.writer.drain()  # not paused: returns at once (or raises a connection error)
                elif guard.cutting:
                    transport.abort()
                    await self.writer.drain()
                else:
                    guard._waiting.add(self)
                    try:
                        # asyncio.timeout, not wait_for: Python 3.11's wait_for loses a cancellation that
                        # arrives as the drain ends (cut() + http.disconnect in the same loop turn).
                        async with asyncio.timeout(guard.send_timeout):
                            await self.writer.drain()
                    finally:
                        guard._waiting.discard(self)
                if transport.is_closing():  # aborted (by cut()): a lost connection's drain returns quietly
                    await self.protocol.handle(Closed())
            except (ConnectionError, RuntimeError):
                await self.protocol.handle(Closed())
            except TimeoutError:
                peer = self.writer.get_extra_info("peername")
                log.warning(
                    "client %s took no data for %.0f s: connection aborted (--send-timeout)", peer, guard.send_timeout
                )
                guard.on_stall()
                transport.abort()
                await self.protocol.handle(Closed())
        if transport.is_closing():
            # The data of a lost connection is dropped. Yield once: uvloop's drain raises the lost
            # connection's error without yielding, and an app that only writes would never let its
            # disconnect listener run (a busy loop on a dead connection).
            await asyncio.sleep(0)

    async def _close(self) -> None:
        guard = self._guard
        if guard is None:
            await super()._close()
            return
        transport = self.writer.transport
        try:
            self.writer.write_eof()
        except (NotImplementedError, OSError, RuntimeError):
            pass  # an SSL connection, or closed already
        try:
            self.writer.close()
            if guard.cutting and transport.get_write_buffer_size():
                transport.abort()
            async with asyncio.timeout(guard.send_timeout):
                await self.writer.wait_closed()
        except TimeoutError:  # the client does not take the last bytes
            transport.abort()
        except (BrokenPipeError, ConnectionAbortedError, ConnectionResetError, RuntimeError, asyncio.CancelledError):
            pass  # closed already (hypercorn's own close treats these the same)
        finally:
            await self.idle_task.stop()


def install() -> None:
    """Serve every hypercorn connection with :class:`GuardedTCPServer` (idempotent).

    Raises:
        RuntimeError: This hypercorn does not create its connections the way this module expects.
    """
    current = getattr(hypercorn_run, "TCPServer", None)
    if current is GuardedTCPServer:
        return
    if current is not TCPServer or not all(hasattr(TCPServer, name) for name in ("protocol_send", "_close")):
        raise RuntimeError("hypercorn.asyncio.run.TCPServer is not hypercorn's TCPServer: cannot guard writes")
    hypercorn_run.TCPServer = GuardedTCPServer  # type: ignore[misc]
