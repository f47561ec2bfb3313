"""Raw-socket HTTP/1.1 clients for misbehaviour a well-behaved client library cannot express.

A client that never reads (a tiny receive buffer and no ``recv``), one that sends its headers and
then no body (or a byte now and then), one that leaves in the middle of its upload.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from typing import Any


def connect(url: str, *, rcvbuf: int | None = None) -> socket.socket:
    """A TCP connection to the server at ``url`` (``rcvbuf``: a receive buffer this small, set before connecting)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect((host, int(port)))
    return sock


def request_head(path: str, length: int, headers: dict[str, str] | None = None) -> bytes:
    """A POST request's head with a JSON body of ``length`` bytes announced."""
    lines = [f"POST {path} HTTP/1.1", "Host: test", "Content-Type: application/json", f"Content-Length: {length}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def post_json(sock: socket.socket, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    """Send a whole JSON POST request (and read nothing)."""
    data = json.dumps(body).encode()
    sock.sendall(request_head(path, len(data), headers) + data)


@dataclass
class RawResponse:
    """What came back on a raw connection."""

    status: int | None  # None: nothing arrived
    head: str
    body: bytes
    reset: bool  # the server reset the connection


def read_response(sock: socket.socket, timeout_s: float) -> RawResponse:
    """Read until the server closes the connection, it resets it, or ``timeout_s`` passes."""
    sock.settimeout(0.2)
    data = bytearray()
    reset = False
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            if b"\r\n\r\n" in data and _complete(bytes(data)):
                break
            continue
        except ConnectionResetError:
            reset = True
            break
        if not chunk:
            break
        data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    text = head.decode("latin-1")
    status = int(text.split(" ", 2)[1]) if text.startswith("HTTP/1.1 ") else None
    return RawResponse(status, text, body, reset)


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.decode("latin-1").lower().splitlines():
        if line.startswith("content-length:"):
            return len(body) >= int(line.split(":", 1)[1])
    return False
