"""One error shape for every endpoint: ``{"error": {"type", "message", "field"}}`` with a 4xx/5xx status.

Handlers raise :class:`ApiError`; the app's exception handler renders it. Messages name the
offending field so a client can fix its request without reading server logs.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from starlette.requests import Request
from starlette.responses import Response


class ApiError(Exception):
    """An error the client gets as JSON.

    Args:
        status: HTTP status code.
        message: What went wrong, for a person; names the field when one is at fault.
        field: The request field at fault (dotted path), if any.
        type: Short machine-readable kind (``invalid_request``, ``not_found``, ``overloaded``...).
        headers: Extra response headers (e.g. ``Retry-After``).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        field: str | None = None,
        type: str = "invalid_request",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.type = type
        self.headers = dict(headers or {})

    def body(self) -> dict[str, dict[str, str | None]]:
        """The JSON document sent to the client."""
        return {"error": {"type": self.type, "message": self.message, "field": self.field}}


class JSONResponse(Response):
    """A JSON response serialized with orjson (numpy scalars and dataclasses included)."""

    media_type = "application/json"

    def render(self, content: object) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def error_response(error: ApiError) -> JSONResponse:
    """Render an :class:`ApiError`."""
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def api_error_handler(request: Request, exc: Exception) -> Response:
    """Starlette exception handler for :class:`ApiError`."""
    assert isinstance(exc, ApiError)
    return error_response(exc)
