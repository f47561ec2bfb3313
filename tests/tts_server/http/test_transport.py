"""``tts_server.http.transport``: hypercorn connections with a write-stall limit, on a real hypercorn.

A minimal app streams bytes for as long as it is allowed to; a raw socket with a tiny receive
buffer never reads. The guarded connection is aborted ``send_timeout`` seconds after its writes
stop draining (the app sees ``http.disconnect``); :meth:`TransportGuard.cut` aborts it at once.
Both on asyncio's own event loop and on uvloop's (the server's default, ``--event-loop``).
"""

from __future__ import annotations

import asyncio
import socket
import time

import hypercorn.asyncio.run as hypercorn_run
import pytest
import uvloop
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from tests.tts_server.serving import AppServer
from tts_server.http.transport import GuardedTCPServer, TransportGuard, install

CHUNK = b"x" * 65536
LOOPS = pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])


def _streaming_app(ended: asyncio.Event) -> Starlette:
    class Endless(StreamingResponse):
        async def __call__(self, scope, receive, send) -> None:
            try:
                await super().__call__(scope, receive, send)
            finally:  # the response is over: the client went away (or was cut off)
                ended.set()

    async def chunks():
        while True:
            yield CHUNK

    async def endless(request: Request) -> StreamingResponse:
        return Endless(chunks(), media_type="application/octet-stream")

    return Starlette(routes=[Route("/endless", endless)])


async def _stalled_client(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    await asyncio.get_running_loop().sock_sendall(sock, b"GET /endless HTTP/1.1\r\nHost: t\r\n\r\n")
    return sock


def test_install_is_idempotent():
    install()
    install()
    assert hypercorn_run.TCPServer is GuardedTCPServer


@LOOPS
def test_a_client_that_stops_reading_is_aborted_after_the_send_timeout(run):
    stalls: list[float] = []

    async def go() -> float:
        ended = asyncio.Event()
        app = _streaming_app(ended)
        app.state.transport_guard = TransportGuard(1.0, on_stall=lambda: stalls.append(time.monotonic()))
        async with AppServer(app) as url:
            sock = await _stalled_client(url)
            began = time.monotonic()
            await asyncio.wait_for(ended.wait(), 30)  # the app saw the client go and stopped streaming
            sock.close()
            return time.monotonic() - began

    seconds = run(go())
    assert len(stalls) == 1
    assert 1.0 <= seconds < 15


@LOOPS
def test_cut_aborts_a_waiting_connection_at_once(run):
    async def go() -> tuple[float, int]:
        ended = asyncio.Event()
        app = _streaming_app(ended)
        guard = TransportGuard(600.0)
        app.state.transport_guard = guard
        async with AppServer(app) as url:
            sock = await _stalled_client(url)
            while not guard._waiting:  # its writes have filled the socket buffers
                await asyncio.sleep(0.05)
            began = time.monotonic()
            guard.cut()
            await asyncio.wait_for(ended.wait(), 10)
            sock.close()
            return time.monotonic() - began, len(guard._waiting)

    seconds, waiting = run(go())
    assert seconds < 2 and waiting == 0
