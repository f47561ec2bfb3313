"""Errors of an engine client: the engine is gone or did not start; a request failed, was refused or cancelled."""

from __future__ import annotations

from voxcpm_engine.types import RequestField

__all__ = [
    "EngineDeadError",
    "EngineError",
    "EngineStartError",
    "InvalidRequest",
    "RequestCancelled",
    "RequestFailed",
]


class EngineError(RuntimeError):
    """Base of the engine client's errors."""


class EngineDeadError(EngineError):
    """The engine process is gone (crash, kill, shutdown); nothing sent to it will complete."""


class RequestFailed(EngineError):
    """The engine failed the request.

    Attributes:
        reason: The engine's message alone (for an HTTP error body), without the request id.
    """

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason if reason is not None else message


class InvalidRequest(RequestFailed):
    """The engine rejected the request at admission (bad input, unknown voice, over a limit).

    Attributes:
        field: The part of the request at fault (None: the engine did not say, e.g. a duplicate id).
    """

    def __init__(self, message: str, reason: str | None = None, field: RequestField | None = None) -> None:
        super().__init__(message, reason)
        self.field = field


class RequestCancelled(EngineError):
    """The request was aborted (``abort``, its deadline, or engine shutdown)."""


class EngineStartError(EngineError):
    """The engine process could not load its model (the message is the loader's) or died before READY."""
