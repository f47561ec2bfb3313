"""Request bodies for every JSON endpoint: content type, size limit, pydantic validation, base64.

Every failure becomes an :class:`ApiError` naming the field: 415 for a wrong content type, 413 for
a body over the limit (refused from ``Content-Length`` before reading, or as soon as the streamed
bytes pass it; the rest is read and dropped, up to 1 MiB and 1 s, so that the answer is not lost
to a connection reset), 400 for invalid JSON or a body the model rejects.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.types import Receive

from tts_server.errors import ApiError

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "REQUEST_ID_PATTERN",
    "body_limit",
    "decode_base64",
    "discard_body",
    "parse_body",
    "read_body",
    "validation_error",
]

DEFAULT_MAX_BODY_BYTES = 25 * 1024 * 1024
# Ids travel back in a header and into logs: keep them to safe, printable characters.
REQUEST_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@+=/-]{0,127}$"
_UTF8_BOM = b"\xef\xbb\xbf"
_DISCARD_LIMIT = 1 << 20  # bytes of a refused request's body read before answering
_DISCARD_TIMEOUT_S = 1.0  # ...and for how long: a refused client gets no more of our time

M = TypeVar("M", bound=BaseModel)


def body_limit(request: Request, max_bytes: int | None = None) -> int:
    """The body limit in force: ``max_bytes``, else ``app.state.max_body_bytes``, else the default."""
    if max_bytes is not None:
        return max_bytes
    configured = getattr(request.app.state, "max_body_bytes", None)
    return int(configured) if configured is not None else DEFAULT_MAX_BODY_BYTES


def _too_large(size: int | str, limit: int) -> ApiError:
    return ApiError(413, f"request body of {size} bytes exceeds the limit of {limit} bytes", type="too_large")


async def discard_body(receive: Receive, limit: int = _DISCARD_LIMIT) -> None:
    """Read (and drop) the rest of a refused request's body before answering without it.

    A server that closes a connection with unread request bytes in its socket makes the kernel
    send a reset, which can destroy the error response before the client reads it. At most
    ``limit`` bytes and one second are spent: a larger or slower body is left unread (that client
    may see a reset instead).
    """

    async def drop() -> None:
        seen = 0
        while seen <= limit:
            message = await receive()
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    try:
        await asyncio.wait_for(drop(), _DISCARD_TIMEOUT_S)
    except TimeoutError:
        pass  # a slow body is not waited for: the client gets its answer (and the connection closes)


async def read_body(request: Request, *, max_bytes: int | None = None) -> bytes:
    """Read the whole body, refusing more than the limit without buffering it.

    Raises:
        ApiError: 413 when ``Content-Length`` or the bytes actually received exceed the limit; 400
            for a malformed ``Content-Length``.
    """
    limit = body_limit(request, max_bytes)
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise ApiError(400, f"invalid Content-Length header {declared!r}")
        if int(declared) > limit:
            await discard_body(request.receive)
            raise _too_large(int(declared), limit)
    body = bytearray()
    # Counted while streaming: a chunked body has no Content-Length, and a client may send more
    # than it declared.
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            await discard_body(request.receive)
            raise _too_large(f"more than {limit}", limit)
    return bytes(body)


def _location(loc: tuple[int | str, ...]) -> str | None:
    return ".".join(str(part) for part in loc) if loc else None


def validation_error(exc: ValidationError) -> ApiError:
    """A 400 :class:`ApiError` for the first problem pydantic found (its field path and message)."""
    errors = exc.errors(include_url=False)
    if not errors:  # pydantic always reports at least one; keep its text if not
        return ApiError(400, str(exc))
    first = errors[0]
    kind, field = first["type"], _location(tuple(first["loc"]))
    if kind == "json_invalid":
        return ApiError(400, f"request body is not valid JSON: {first['ctx'].get('error', first['msg'])}")
    if kind in ("model_type", "model_attributes_type", "dict_type") and field is None:
        return ApiError(400, "request body must be a JSON object")
    if kind == "extra_forbidden":
        message = f"{field}: unknown field"
    elif kind == "missing":
        message = f"{field}: required"
    else:
        message = f"{field}: {first['msg']}" if field else first["msg"]
    more = len(errors) - 1
    if more:
        message += f" (and {more} more problem{'s' if more > 1 else ''})"
    return ApiError(400, message, field=field)


async def parse_body(request: Request, model: type[M], *, max_bytes: int | None = None) -> M:
    """Read a JSON body and validate it with a pydantic model (declare ``extra="forbid"`` on it).

    Args:
        request: The incoming request.
        model: The pydantic model of the body.
        max_bytes: Body limit for this endpoint (default: see :func:`body_limit`).

    Returns:
        The validated model.

    Raises:
        ApiError: 415 unless the content type is JSON (``application/json`` or ``*+json``) and the
            body is not compressed (``Content-Encoding``); 413 over the limit; 400 for an empty or
            invalid body, naming the field (``items.0.name``). A leading UTF-8 BOM is ignored.
    """
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise ApiError(
            415,
            f"Content-Encoding {encoding!r} is not supported: send the body uncompressed",
            field="Content-Encoding",
            type="unsupported_media_type",
        )
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        shown = f"got {content_type!r}" if content_type else "none given"
        raise ApiError(415, f"Content-Type must be application/json ({shown})", type="unsupported_media_type")
    body = await read_body(request, max_bytes=max_bytes)
    body = body.removeprefix(_UTF8_BOM)  # RFC 8259 lets a parser ignore it; Windows tools write one
    if not body.strip():
        raise ApiError(400, "request body is empty; expected a JSON object")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise validation_error(exc) from exc


def decode_base64(value: Any, field: str, *, allow_empty: bool = False) -> bytes:
    """Decode a base64 field (standard alphabet; a ``data:...;base64,`` prefix and whitespace are allowed).

    Raises:
        ApiError: 400 naming ``field`` when the value is not a string, not base64, or empty.
    """
    if not isinstance(value, str):
        raise ApiError(400, f"{field}: must be a base64 string, got {type(value).__name__}", field=field)
    text = value
    if text.startswith("data:"):
        header, sep, rest = text.partition(",")
        if not sep or not header.endswith(";base64"):
            raise ApiError(400, f"{field}: a data URI must be ';base64,' encoded", field=field)
        text = rest
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        # MIME-style line breaks are the one leniency; the stripped copy is made only on this path.
        stripped = "".join(text.split())
        try:
            if len(stripped) == len(text):
                raise
            data = base64.b64decode(stripped, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, f"{field}: not valid base64 ({exc})", field=field) from exc
    if not data and not allow_empty:
        raise ApiError(400, f"{field}: is empty", field=field)
    return data
