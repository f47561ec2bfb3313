"""Load generator for a running server: streaming ``POST /generate``, bounded concurrency.

Each request posts ``{"target_text", "max_generate_length", "temperature", "cfg_value",
"response_format": "pcm"}`` (plus ``min_generate_length`` when asked: a random-weight model runs to
``max_generate_length`` anyway) and reads the body as it streams: s16le mono samples at the rate of
the ``X-Sample-Rate`` header. TTFB is the time from sending the request to its first audio byte;
every received piece of the body is a chunk of ``bytes / 2 / rate`` seconds for the gap and
underrun figures. A 503 answer is counted as a rejection, apart from other errors.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx

from perf.drivers import request_text
from perf.metrics import StreamTrace

_BYTES_PER_SAMPLE = 2  # s16le mono


@dataclass(frozen=True)
class HttpLoad:
    """What each HTTP request asks for.

    Attributes:
        max_generate_length: Most patches per request (``max_generate_length``).
        min_generate_length: Sent when not ``None`` (fixes the length of a real model's output too).
        temperature: Initial-noise scale.
        cfg_value: Guidance scale.
        timeout_s: Longest wait for a whole request.
    """

    max_generate_length: int = 50
    min_generate_length: int | None = None
    temperature: float = 1.0
    cfg_value: float = 2.0
    timeout_s: float = 600.0

    def body(self, text: str) -> dict[str, Any]:
        """The JSON body of one request."""
        body: dict[str, Any] = {
            "target_text": text,
            "max_generate_length": self.max_generate_length,
            "temperature": self.temperature,
            "cfg_value": self.cfg_value,
            "response_format": "pcm",
        }
        if self.min_generate_length is not None:
            body["min_generate_length"] = self.min_generate_length
        return body


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
            async for data in resp.aiter_bytes():
                if data:
                    trace.add_chunk(time.perf_counter(), len(data) / _BYTES_PER_SAMPLE / rate)
    except httpx.HTTPError as exc:
        trace.error = f"{type(exc).__name__}: {exc}"
    if trace.error is None and not trace.arrivals:
        trace.error = "empty body"
    return trace


async def run_http(
    server: str,
    *,
    num_requests: int,
    concurrency: int,
    load: HttpLoad,
    tag: str = "",
    transport: httpx.AsyncBaseTransport | None = None,
) -> tuple[list[StreamTrace], float]:
    """Send ``num_requests`` streaming requests, at most ``concurrency`` at a time.

    Args:
        server: Base URL.
        num_requests: Requests to send.
        concurrency: Most requests in flight.
        load: What each request asks for.
        tag: Prefix of the request texts (keeps runs apart).
        transport: An httpx transport to use instead of the network (tests).

    Returns:
        Every request's trace and the wall time from the first send to the last byte.
    """
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


def http_level(
    server: str,
    *,
    num_requests: int,
    concurrency: int,
    load: HttpLoad,
    warmup: int = 0,
    tag: str = "",
    transport: httpx.AsyncBaseTransport | None = None,
) -> tuple[list[StreamTrace], float]:
    """:func:`run_http` after ``warmup`` discarded requests (sent at the same concurrency), synchronously."""
    kw = {"concurrency": concurrency, "load": load, "transport": transport}

    async def both() -> tuple[list[StreamTrace], float]:
        if warmup > 0:
            await run_http(server, num_requests=warmup, tag=f"w{tag}", **kw)
        return await run_http(server, num_requests=num_requests, tag=tag, **kw)

    return asyncio.run(both())
