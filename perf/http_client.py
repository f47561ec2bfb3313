"""Load generator for a running server: streaming ``POST /generate``, bounded concurrency.

Each request posts ``{"target_text", "max_generate_length", "temperature", "cfg_value",
"response_format": "pcm"}`` (plus ``min_generate_length`` when asked: a random-weight model runs to
``max_generate_length`` anyway) and reads the body as it streams: s16le mono samples at the rate of
the ``X-Sample-Rate`` header. TTFB is the time from sending the request to its first audio byte;
every received piece of the body is a chunk of ``bytes / 2 / rate`` seconds for the gap and
underrun figures. A 503 answer is counted as a rejection, apart from other errors. The server's
``Server-Timing`` header (its own milliseconds per stage, see :func:`parse_server_timing`) is kept
on each answered request's trace.

Two clients send the requests. Against a real server (no ``transport``) a minimal HTTP/1.1
client on raw ``asyncio`` streams (:mod:`perf.http_wire`): one keep-alive connection per in-flight
slot, opened before the clock starts; each request leaves in one write and its body is read as it
comes with nothing between the socket and the trace but the chunked / ``Content-Length`` framing;
the slots are spread over worker processes that start together on a barrier
(:mod:`perf.http_workers`). One event loop sending 128 requests through httpx (about 1 ms of
Python each) and then reading 128 fast streams measures itself, not the server; here a request
costs one write and a piece one read and a counter. With an httpx ``transport`` (tests) the
requests go through ``httpx.AsyncClient``.
"""

from __future__ import annotations

import asyncio
import time

import httpx

from perf.http_wire import BYTES_PER_SAMPLE, HttpLoad, RemoteProtocolError
from perf.http_workers import run_raw, run_raw_open
from perf.metrics import StreamTrace, poisson_arrivals
from perf.server_timing import parse_server_timing

__all__ = ["HttpLoad", "RemoteProtocolError", "http_level", "open_level", "parse_server_timing", "run_http"]


async def _one(client: httpx.AsyncClient, load: HttpLoad, rid: str, text: str) -> StreamTrace:
    trace = StreamTrace(rid, time.perf_counter())
    try:
        async with client.stream("POST", "/generate", json=load.body(text)) as resp:
            if resp.status_code == 503:
                await resp.aread()
                trace.error = "503"
                return trace
            if resp.status_code != 200:
                detail = (await resp.aread())[:300].decode("utf-8", "replace")
                trace.error = f"HTTP {resp.status_code}: {detail}"
                return trace
            try:
                rate = int(resp.headers["X-Sample-Rate"])
            except (KeyError, ValueError):
                trace.error = "no usable X-Sample-Rate header"
                return trace
            # httpx joins repeated header lines with ", ", which is how the list continues anyway.
            trace.server_timing = parse_server_timing(resp.headers.get("server-timing"))
            async for data in resp.aiter_bytes():
                if data:
                    trace.add_chunk(time.perf_counter(), len(data) / BYTES_PER_SAMPLE / rate)
    except httpx.HTTPError as exc:
        trace.error = f"{type(exc).__name__}: {exc}"
    if trace.error is None and not trace.arrivals:
        trace.error = "empty body"
    return trace


async def _run_httpx(
    server: str,
    *,
    num_requests: int,
    concurrency: int,
    load: HttpLoad,
    tag: str,
    transport: httpx.AsyncBaseTransport | None,
) -> tuple[list[StreamTrace], float]:
    """The httpx client: one ``AsyncClient``, a semaphore of ``concurrency`` (see :func:`run_http`)."""
    from perf.drivers import request_text  # here: perf.drivers imports torch, which a worker need not load

    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    timeout = httpx.Timeout(load.timeout_s, connect=30.0)

    client = httpx.AsyncClient(base_url=server.rstrip("/"), timeout=timeout, limits=limits, transport=transport)
    async with client:

        async def bounded(i: int) -> StreamTrace:
            async with sem:
                return await _one(client, load, f"{tag}h{i}", request_text(i, tag))

        start = time.perf_counter()
        traces = await asyncio.gather(*(bounded(i) for i in range(num_requests)))
    ends = [t.arrivals[-1] for t in traces if t.arrivals]
    wall = (max(ends) if ends else time.perf_counter()) - start
    return list(traces), wall


async def run_http(
    server: str,
    *,
    num_requests: int,
    concurrency: int,
    load: HttpLoad,
    tag: str = "",
    transport: httpx.AsyncBaseTransport | None = None,
    workers: int | None = None,
) -> tuple[list[StreamTrace], float]:
    """Send ``num_requests`` streaming requests, at most ``concurrency`` at a time.

    Without ``transport`` the raw client sends them (see the module docstring): ``concurrency``
    connections, opened first, split over ``workers`` processes that start together; with one
    worker it runs here, on this event loop. The processes are started by ``multiprocessing``
    (forkserver, else spawn), which imports the main module in them: a script that calls this with
    more than one worker must keep its own work under ``if __name__ == "__main__":``.

    Args:
        server: Base URL.
        num_requests: Requests to send.
        concurrency: Most requests in flight.
        load: What each request asks for.
        tag: Prefix of the request texts (keeps runs apart).
        transport: An httpx transport to use instead of the network (tests): the httpx client.
        workers: Load-generator processes (default ``min(concurrency, CPUs // 2, 8)``, at least 1;
            never more than the requests in flight). Ignored with ``transport``.

    Returns:
        Every request's trace (in request order) and the wall time from the start (the first send)
        to the last byte.

    Raises:
        ValueError: ``concurrency`` or ``workers`` below 1, or ``server`` not an http(s) URL.
        RuntimeError: A worker process failed.
    """
    if transport is not None:
        return await _run_httpx(
            server, num_requests=num_requests, concurrency=concurrency, load=load, tag=tag, transport=transport
        )
    if num_requests < 1:
        return [], 0.0
    return (await run_raw(server, load, [(num_requests, tag)], concurrency, workers))[0]


def http_level(
    server: str,
    *,
    num_requests: int,
    concurrency: int,
    load: HttpLoad,
    warmup: int = 0,
    tag: str = "",
    transport: httpx.AsyncBaseTransport | None = None,
    workers: int | None = None,
) -> tuple[list[StreamTrace], float]:
    """:func:`run_http` after ``warmup`` discarded requests (sent at the same concurrency), synchronously.

    With the raw client the warm-up and the level run in the same worker processes, which start
    once, and the level reuses the warm-up's connections.
    """
    if transport is not None:
        kw = {"concurrency": concurrency, "load": load, "transport": transport}

        async def both() -> tuple[list[StreamTrace], float]:
            if warmup > 0:
                await run_http(server, num_requests=warmup, tag=f"w{tag}", **kw)
            return await run_http(server, num_requests=num_requests, tag=tag, **kw)

        return asyncio.run(both())
    runs = [(warmup, f"w{tag}")] if warmup > 0 else []
    if num_requests < 1:
        if runs:
            asyncio.run(run_raw(server, load, runs, concurrency, workers))
        return [], 0.0
    return asyncio.run(run_raw(server, load, [*runs, (num_requests, tag)], concurrency, workers))[-1]


def open_level(
    server: str,
    *,
    rate: float,
    duration_s: float,
    load: HttpLoad,
    seed: int = 0,
    tag: str = "",
    workers: int | None = None,
) -> tuple[list[StreamTrace], float]:
    """Poisson arrivals at ``rate`` per second for ``duration_s`` with the raw client, synchronously.

    The same arrival times as the in-process open loop for the same ``seed``
    (:func:`perf.metrics.poisson_arrivals`); every request's TTFB counts from its scheduled arrival.

    Returns:
        Every request's trace (in arrival order) and the wall time from the start to the last byte.
    """
    offsets = poisson_arrivals(rate, duration_s, seed)
    return asyncio.run(run_raw_open(server, load, offsets, tag, workers))
