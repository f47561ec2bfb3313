"""How a job's failures reach the client: queue and engine outcomes mapped to :class:`ApiError`.

503 (with ``Retry-After``, counted as a rejection) when the server cannot serve now: a queue
timeout, a dead engine, a shutdown. 409 for a request cancelled by ``/cancel`` or the client. 400
naming the field for input the engine refused. 500 for anything else the engine reports.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from tts_server.errors import ApiError
from tts_server.jobs.registry import CancelReason, InflightRequest
from voxcpm_engine.proc.errors import EngineDeadError, EngineError, InvalidRequest, RequestCancelled
from voxcpm_engine.types import RequestField

if TYPE_CHECKING:  # the bundle of shared objects is built above the jobs layer
    from tts_server.services import Services

__all__ = ["cancelled", "from_engine", "unavailable"]

log = logging.getLogger(__name__)


def unavailable(svc: Services, reason: str, message: str) -> ApiError:
    """A 503 the client may retry (``reason`` labels the rejection metric)."""
    svc.metrics.rejected(reason)
    retry = {"Retry-After": str(svc.config.retry_after)}
    return ApiError(503, message, type="overloaded", headers=retry)


def cancelled(svc: Services, record: InflightRequest) -> ApiError:
    """A cancelled request: 409, or 503 when the server's shutdown stopped it."""
    reason = record.cancel_reason or CancelReason.CLIENT
    if reason is CancelReason.SHUTDOWN:
        return unavailable(svc, "shutdown", f"request {record.request_id!r} stopped: {reason.value}")
    message = f"request {record.request_id!r} was cancelled ({reason.value})"
    return ApiError(409, message, field="request_id", type="cancelled")


def from_engine(svc: Services, exc: EngineError, record: InflightRequest, text_field: str) -> ApiError:
    """An engine failure of the request; ``text_field`` is the request's text field, named for rejected text."""
    if isinstance(exc, RequestCancelled) or record.cancelled:
        return cancelled(svc, record)
    if isinstance(exc, EngineDeadError):
        return unavailable(svc, "engine_dead", f"the engine is not running: {exc}")
    if isinstance(exc, InvalidRequest):
        field = "voice" if exc.field is RequestField.VOICE else text_field
        return ApiError(400, f"{field}: {exc.reason}", field=field)
    log.error("request %s failed in the engine: %s", record.request_id, exc)
    return ApiError(500, f"the engine failed the request: {getattr(exc, 'reason', exc)}", type="engine_error")
