"""OpenAI's error shape for the ``/v1/...`` routes: ``{"error": {"message", "type", "param", "code"}}``.

The OpenAI client libraries read ``error.message``; this server's ``field`` is kept alongside so
clients of both APIs find what they expect. Used by the OpenAI route, the admission middleware
and the app's error handlers for every response under ``/v1/``.
"""

from __future__ import annotations

from tts_server.errors import ApiError, JSONResponse, error_response

__all__ = ["error_response_for", "openai_error_body", "openai_error_response"]


def openai_error_body(error: ApiError) -> dict[str, dict[str, str | None]]:
    """OpenAI's error document for an :class:`ApiError` (``type`` is OpenAI's kind, ``code`` ours)."""
    kind = "invalid_request_error" if error.status < 500 else "server_error"
    body = {"message": error.message, "type": kind, "param": error.field, "code": error.type, "field": error.field}
    return {"error": body}


def openai_error_response(error: ApiError) -> JSONResponse:
    """Render an :class:`ApiError` in OpenAI's shape."""
    return JSONResponse(openai_error_body(error), status_code=error.status, headers=error.headers)


def error_response_for(path: str, error: ApiError) -> JSONResponse:
    """OpenAI's shape under ``/v1/``, this API's everywhere else."""
    return openai_error_response(error) if path.startswith("/v1/") else error_response(error)
