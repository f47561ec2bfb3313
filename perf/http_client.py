"""Load generator for a running server: streaming ``POST /generate``, bounded concurrency.

Each request posts ``{"target_text", "max_generate_length", "temperature", "cfg_value",
"response_format": "pcm"}`` (plus ``min_generate_length`` when asked: a random-weight model runs to
``max_generate_length`` anyway) and reads the body as it streams: s16le mono samples at the rate of
the ``X-Sample-Rate`` header. TTFB is the time from sending the request to its first audio byte;
every received piece of the body is a chunk of ``bytes / 2 / rate`` seconds for the gap and
underrun figures. A 503 answer is counted as a rejection, apart from other errors. The server's
``Server-Timing`` header (its own milliseconds per stage, see :func:`parse_server_timing`) is kept
on each answered request's trace.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from perf.drivers import request_text
from perf.metrics import StreamTrace

_BYTES_PER_SAMPLE = 2  # s16le mono
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token: a metric or parameter name
# A plain decimal: float() alone would also take "nan", "inf" and "1_0", none of which is a duration.
_DURATION = re.compile(r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _split(value: str, sep: str) -> Iterator[str]:
    """``value`` split at ``sep`` outside double-quoted strings (a ``desc`` may hold commas and semicolons)."""
    start, quoted, escaped = 0, False, False
    for i, ch in enumerate(value):
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            yield value[start:i]
            start = i + 1
    yield value[start:]


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def parse_server_timing(value: str | None) -> dict[str, float]:
    """The stage durations of a ``Server-Timing`` header (W3C Server Timing), in milliseconds.

    The header is a comma-separated list of metrics ``name;dur=<ms>;desc=...``; several header
    lines are the same list joined with commas. Names are case-folded. A metric is skipped when it
    is malformed (its name is not a token) or carries no usable duration (no ``dur``, or one that is
    not a non-negative decimal): a stage without a duration says nothing about where time went.
    Of a repeated metric or ``dur`` the first counts, as the spec says for parameters.

    Args:
        value: The header's value (``None`` or empty: no header).

    Returns:
        ``{name: milliseconds}`` in the header's order; empty without a usable metric.
    """
    out: dict[str, float] = {}
    if not value:
        return out
    for metric in _split(value, ","):
        name, *params = (part.strip() for part in _split(metric, ";"))
        if not _TOKEN.fullmatch(name) or name.lower() in out:
            continue
        dur = None
        for param in params:
            key, eq, raw = param.partition("=")
            if eq and key.strip().lower() == "dur":
                dur = _unquote(raw.strip())
                break
        if dur is None or not _DURATION.fullmatch(dur) or not math.isfinite(ms := float(dur)):
            continue
        out[name.lower()] = ms
    return out


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
            # httpx joins repeated header lines with ", ", which is how the list continues anyway.
            trace.server_timing = parse_server_timing(resp.headers.get("server-timing"))
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
