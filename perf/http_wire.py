"""A minimal HTTP/1.1 client on raw ``asyncio`` streams, for one streaming ``POST /generate`` at a time.

One keep-alive connection per in-flight slot; each request leaves in one write and its body is read
as it comes with nothing between the socket and the trace but the chunked / ``Content-Length``
framing: a request costs one write and a piece of audio one read and a counter, so the client is
not what time to first audio measures (see :mod:`perf.http_client`).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from perf.metrics import StreamTrace
from perf.server_timing import _TOKEN, parse_server_timing

BYTES_PER_SAMPLE = 2  # s16le mono
_READ_SIZE = 1 << 16  # most bytes per read: a piece is whatever has arrived, up to this
_LINE_LIMIT = 1 << 16  # longest status, header or chunk-size line section (StreamReader's default limit)
_CONNECT_TIMEOUT_S = 30.0  # as the httpx path's connect timeout
_DETAIL_BYTES = 300  # of an error answer's body, kept in its trace
_STATUS_LINE = re.compile(r"HTTP/([0-9])\.([0-9]) ([0-9]{3})(?: .*)?")
_HEX = re.compile(rb"[0-9A-Fa-f]+")
_DIGITS = re.compile(r"[0-9]+")


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


class RemoteProtocolError(Exception):
    """The server's answer broke HTTP/1.1 framing, or the server hung up in the middle of it."""


@dataclass(frozen=True)
class Target:
    """Where the requests go, from the base URL.

    Attributes:
        host: Host name or address to connect to.
        port: TCP port.
        tls: Whether to speak TLS (``https``).
        path: Request target: the base URL's path + ``/generate``.
        host_header: The ``Host`` header's value.
    """

    host: str
    port: int
    tls: bool
    path: str
    host_header: str

    @classmethod
    def parse(cls, server: str) -> Target:
        """The target of base URL ``server`` (``http://host:port[/prefix]``; ``https`` too)."""
        url = urlsplit(server)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) base URL: {server!r}")
        tls = url.scheme == "https"
        port = url.port or (443 if tls else 80)
        host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
        host_header = host if url.port is None else f"{host}:{port}"
        return cls(url.hostname, port, tls, url.path.rstrip("/") + "/generate", host_header)

    def request(self, body: dict[str, Any]) -> bytes:
        """The whole request with a JSON ``body``, to go out in one write."""
        data = json.dumps(body, separators=(",", ":")).encode()
        head = (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host_header}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nAccept: */*\r\n\r\n"
        )
        return head.encode("ascii") + data


class Connection:
    """One HTTP/1.1 connection, kept alive across the requests of its slot."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, target: Target) -> Connection:
        """Connect to ``target`` (asyncio sets ``TCP_NODELAY``: a request is not held back by Nagle)."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(target.host, target.port, ssl=True if target.tls else None, limit=_LINE_LIMIT),
                _CONNECT_TIMEOUT_S,
            )
        except TimeoutError:
            raise TimeoutError(f"no connection to {target.host}:{target.port} in {_CONNECT_TIMEOUT_S:g} s") from None
        return cls(reader, writer)

    def usable(self) -> bool:
        """Still open both ways as far as this side has seen (the server may close an idle one)."""
        return not (self.writer.is_closing() or self.reader.at_eof())

    def close(self) -> None:
        """Close without waiting (the transport finishes on the event loop)."""
        self.writer.close()


class _Body:
    """Which of the bytes read are the body and when it ends: ``Content-Length``, or until close.

    Attributes:
        done: The whole body has been read.
        reusable: Once done, the connection can carry another request (the end was framed, and
            nothing came after it).
    """

    def __init__(self, length: int | None) -> None:
        self._left = length  # None: the body runs until the server closes
        self.done = length == 0
        self.reusable = length is not None

    def want(self) -> int:
        """Most bytes to read next: never past the end, so the next answer's bytes stay unread."""
        return _READ_SIZE if self._left is None else min(self._left, _READ_SIZE)

    def feed(self, data: bytes) -> list[memoryview]:
        """The body bytes in ``data`` (what one read brought)."""
        if self._left is not None:
            self._left -= len(data)  # want() kept the read within the body
            self.done = self._left == 0
        return [memoryview(data)]

    def eof(self) -> None:
        """The server closed the connection before :attr:`done`."""
        if self._left is not None:
            raise RemoteProtocolError(f"server closed the connection {self._left} bytes short of Content-Length")
        self.done = True


_SIZE, _DATA, _DATA_END, _TRAILER = range(4)


class _Chunked(_Body):
    """``Transfer-Encoding: chunked``, decoded from whatever each read brings.

    The framing (size lines, CRLFs, trailers) may be split anywhere across reads; only the chunk
    data is body. Decoding the bytes already read, rather than reading chunk by chunk, keeps one
    piece per read: chunks that arrived together are one arrival, as they are to a player.
    """

    def __init__(self) -> None:
        super().__init__(None)
        self.reusable = True
        self._state = _SIZE
        self._chunk_left = 0
        self._line = b""  # the start of a framing line that the last read cut off

    def want(self) -> int:
        """Any amount: the server sends nothing after the last chunk until the next request."""
        return _READ_SIZE

    def feed(self, data: bytes) -> list[memoryview]:
        """The chunk data in ``data``, as slices of it."""
        out: list[memoryview] = []
        view, pos, end = memoryview(data), 0, len(data)
        while pos < end and not self.done:
            if self._state == _DATA:
                take = min(self._chunk_left, end - pos)
                out.append(view[pos : pos + take])
                pos += take
                self._chunk_left -= take
                if not self._chunk_left:
                    self._state = _DATA_END
                continue
            nl = data.find(b"\n", pos)
            if nl < 0:
                self._line += data[pos:]
                if len(self._line) > _LINE_LIMIT:
                    raise RemoteProtocolError("chunk framing line too long")
                break
            line = (self._line + data[pos:nl]).rstrip(b"\r")
            self._line, pos = b"", nl + 1
            if self._state == _SIZE:
                size = line.split(b";", 1)[0].strip()  # a chunk extension follows ";"
                if not _HEX.fullmatch(size):
                    raise RemoteProtocolError(f"bad chunk size line {bytes(line[:40])!r}")
                self._chunk_left = int(size, 16)
                self._state = _DATA if self._chunk_left else _TRAILER
            elif self._state == _DATA_END:
                if line:
                    raise RemoteProtocolError("chunk data longer than its size")
                self._state = _SIZE
            elif not line:  # _TRAILER: trailer fields end at an empty line
                self.done = True
        if self.done and pos < end:
            self.reusable = False  # bytes after the last chunk: what they are is anyone's guess
        return out

    def eof(self) -> None:
        """A chunked body ends with its zero-size chunk, never with the connection."""
        raise RemoteProtocolError("server closed the connection in the middle of a chunked body")


def _body(status: int, headers: dict[str, list[str]]) -> _Body:
    """How an answer's body is framed (RFC 9112 section 6.3, for the answer to a POST)."""
    if status in (204, 304):
        return _Body(0)
    if codings := [c.strip().lower() for v in headers.get("transfer-encoding", ()) for c in v.split(",")]:
        # Transfer-Encoding wins over Content-Length; without chunked last, the body runs to the close.
        return _Chunked() if codings[-1] == "chunked" else _Body(None)
    lengths = {v.strip() for line in headers.get("content-length", ()) for v in line.split(",")}
    if not lengths:
        return _Body(None)
    if len(lengths) != 1 or not _DIGITS.fullmatch(length := lengths.pop()):
        raise RemoteProtocolError(f"bad Content-Length {headers['content-length']}")
    return _Body(int(length))


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, bool, dict[str, list[str]]]:
    """The status line and headers of the next final answer.

    Returns:
        The status, whether the server will keep the connection open after this answer (HTTP/1.1
        without ``Connection: close``, or 1.0 with ``keep-alive``), and the headers by lower-case
        name, a list of values per name in order.
    """
    while True:
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            where = "in the middle of the headers" if exc.partial else "without answering"
            raise RemoteProtocolError(f"server closed the connection {where}") from None
        status_line, *lines = raw[:-4].decode("latin-1").split("\r\n")
        match = _STATUS_LINE.fullmatch(status_line)
        if match is None:
            raise RemoteProtocolError(f"bad status line {status_line[:80]!r}")
        headers: dict[str, list[str]] = {}
        for line in lines:
            name, colon, value = line.partition(":")
            if not colon or not _TOKEN.fullmatch(name):
                raise RemoteProtocolError(f"bad header line {line[:80]!r}")
            headers.setdefault(name.lower(), []).append(value.strip())
        status = int(match[3])
        if 100 <= status < 200 and status != 101:
            continue  # an interim answer (100 Continue, 103 Early Hints): the final one follows
        tokens = {t.strip().lower() for v in headers.get("connection", ()) for t in v.split(",")}
        keep = "close" not in tokens and ((int(match[1]), int(match[2])) >= (1, 1) or "keep-alive" in tokens)
        return status, keep, headers


async def _exchange(conn: Connection, payload: bytes, trace: StreamTrace) -> bool:
    """Send one request on ``conn`` and read its answer into ``trace``.

    Returns:
        Whether ``conn`` can carry the next request (the answer allowed keep-alive and was read to
        its framed end).
    """
    reader = conn.reader
    trace.submitted = time.perf_counter()
    conn.writer.write(payload)  # one write, one segment: the whole request leaves at once
    await conn.writer.drain()
    status, keep, headers = await _read_head(reader)
    body = _body(status, headers)
    if status != 200:
        # Read to the end (a 503 too), so the connection serves the slot's next request.
        detail = bytearray()
        while not body.done:
            data = await reader.read(body.want())
            if not data:
                body.eof()
                break
            for piece in body.feed(data):
                detail += piece[: _DETAIL_BYTES - len(detail)]
        trace.error = "503" if status == 503 else f"HTTP {status}: {detail.decode('utf-8', 'replace')}"
        return keep and body.reusable
    try:
        rate = int(headers["x-sample-rate"][0])
    except (KeyError, ValueError):
        rate = 0
    if rate <= 0:
        trace.error = "no usable X-Sample-Rate header"
        return False  # its body is left unread: the connection cannot be reused
    # Several header lines are one list (RFC 9110 section 5.3), as httpx joins them.
    trace.server_timing = parse_server_timing(", ".join(headers.get("server-timing", ())))
    received = credited = 0
    while not body.done:
        data = await reader.read(body.want())
        at = time.perf_counter()
        if not data:
            body.eof()
            break
        if got := sum(len(piece) for piece in body.feed(data)):
            received += got
            # Whole samples only: an odd trailing byte counts with the piece that completes its sample.
            samples = received // BYTES_PER_SAMPLE
            trace.add_chunk(at, (samples - credited) / rate)
            credited = samples
    return keep and body.reusable


async def one_raw(
    conn: Connection | None, target: Target, load: HttpLoad, rid: str, payload: bytes
) -> tuple[StreamTrace, Connection | None]:
    """One request on a slot's connection (reconnecting first if it is gone).

    A connection opened here is opened before ``submitted`` is stamped: TTFB is the server's, not
    the TCP handshake's, as for the connections opened before the clock.

    Returns:
        The request's trace and the connection for the slot's next request (``None``: reconnect).
    """
    trace = StreamTrace(rid, time.perf_counter())
    try:
        if conn is None or not conn.usable():
            if conn is not None:
                conn.close()
            conn = None
            conn = await Connection.open(target)
        keep = await asyncio.wait_for(_exchange(conn, payload, trace), load.timeout_s)
    except TimeoutError as exc:  # an OSError on 3.11+: caught first to say which wait ran out
        trace.error = f"TimeoutError: {exc or f'no whole answer in {load.timeout_s:g} s'}"
        keep = False
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, RemoteProtocolError) as exc:
        trace.error = f"{type(exc).__name__}: {exc}"
        keep = False
    if not keep and conn is not None:
        conn.close()
        conn = None
    if trace.error is None and not trace.arrivals:
        trace.error = "empty body"
    return trace, conn
