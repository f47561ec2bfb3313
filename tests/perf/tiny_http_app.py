"""A tiny Starlette app on a real hypercorn (loopback) that answers like the server's ``/generate`` in the
shapes the benchmark's raw HTTP client must read; its fixtures are registered by ``tests/perf/conftest.py``."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest
from hypercorn.asyncio import serve
from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

RATE = 16000


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


N_SAMPLES = 8000  # 0.5 s at RATE per answer
_INDEX = re.compile(r"Request \D*(\d+)\.")


def _tiny_app(seen: list[tuple[str, int, str]]) -> Starlette:
    """Answers like the server's ``/generate`` in the shapes the raw client must read.

    ``/chunked``: a stream of N_SAMPLES s16 samples in odd-sized pieces, 50 ms apart (hypercorn sends
    it chunked), with two Server-Timing lines; ``/slow``: the same, 0.4 s apart. ``/length``: the
    same samples in one body with a Content-Length. ``/close``: that, plus ``Connection: close``.
    ``/mix``: by request index, a stream, a 503 and a 422 in turn. Every request is logged as
    (route, client port, text): one client port is one connection.
    """

    async def generate(request: Request) -> Response:
        route = request.path_params["route"]
        text = (await request.json())["target_text"]
        seen.append((route, request.client.port, text))
        pcm = np.arange(N_SAMPLES, dtype="<i2").tobytes()
        headers = {"X-Sample-Rate": str(RATE)}
        if route == "mix":
            kind = int(_INDEX.match(text)[1]) % 3
            if kind == 1:
                return JSONResponse({"error": "busy"}, status_code=503, headers={"Retry-After": "1"})
            if kind == 2:
                return JSONResponse({"error": "bad voice"}, status_code=422)
        if route in ("length", "close"):
            if route == "close":
                headers["Connection"] = "close"
            return Response(pcm, media_type="application/octet-stream", headers=headers)

        async def pieces() -> AsyncIterator[bytes]:
            # 3 bytes then 1: an odd byte waits for its other half, never counted as half a sample.
            for start, end in ((0, 3), (3, 4), (4, len(pcm))):
                yield pcm[start:end]
                await asyncio.sleep(0.4 if route == "slow" else 0.05)

        resp = StreamingResponse(pieces(), media_type="application/octet-stream", headers=headers)
        resp.raw_headers += [(b"server-timing", b"queue;dur=0.5"), (b"server-timing", b"total;dur=2")]
        return resp

    return Starlette(routes=[Route("/{route}/generate", generate, methods=["POST"])])


@pytest.fixture(scope="module")
def tiny_app_server():
    """The tiny app on hypercorn (its asyncio ``serve``, in a thread); yields (base URL, request log)."""
    seen: list[tuple[str, int, str]] = []
    config = Config()
    port = free_port()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    thread = threading.Thread(
        target=loop.run_until_complete, args=(serve(_tiny_app(seen), config, shutdown_trigger=stop.wait),)
    )
    thread.start()
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or not thread.is_alive():
                pytest.fail("hypercorn did not start")
            time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


@pytest.fixture
def app(tiny_app_server):
    """The tiny app's base URL and its request log, emptied for this test."""
    url, seen = tiny_app_server
    seen.clear()
    return url, seen
