"""Tests of tts_server.jobs.failures: each queue or engine outcome's status, field, headers and metric."""

import pytest

from tests.tts_server.harness import serve, server_config
from tts_server.jobs import failures
from tts_server.jobs.registry import CancelReason, InflightRequest
from voxcpm_engine.proc.errors import EngineDeadError, EngineError, InvalidRequest, RequestCancelled, RequestFailed
from voxcpm_engine.types import RequestField


@pytest.fixture(scope="module")
def svc(loop_runner, shared_engine, tiny_v2):
    with serve(loop_runner, shared_engine, server_config(tiny_v2, retry_after=7)) as served:
        yield served.services


def rejections(svc, reason: str) -> float:
    return svc.metrics.rejections.labels(reason=reason)._value.get()


def test_unavailable_is_a_counted_503_with_retry_after(svc):
    before = rejections(svc, "queue_timeout")
    err = failures.unavailable(svc, "queue_timeout", "queue timeout: 0.3 s")
    assert (err.status, err.type, err.headers) == (503, "overloaded", {"Retry-After": "7"})
    assert rejections(svc, "queue_timeout") == before + 1


@pytest.mark.parametrize(
    ("reason", "status", "field"),
    [(None, 409, "request_id"), (CancelReason.CLIENT, 409, "request_id"), (CancelReason.DISCONNECT, 409, "request_id"),
     (CancelReason.SHUTDOWN, 503, None)],
)  # fmt: skip
def test_cancelled(svc, reason, status, field):
    err = failures.cancelled(svc, InflightRequest("r1", cancel_reason=reason))
    assert (err.status, err.field) == (status, field)
    assert "'r1'" in err.message


@pytest.mark.parametrize(
    ("exc", "status", "field"),
    [
        (InvalidRequest("r1: unknown voice", "unknown voice 'x'", RequestField.VOICE), 400, "voice"),
        (InvalidRequest("r1: too long", "text is too long", RequestField.TEXT), 400, "input"),
        (InvalidRequest("r1: bad", "max_steps: must be >= 1", RequestField.PARAMS), 400, "input"),
        (EngineDeadError("engine process 12 died"), 503, None),
        (RequestCancelled("r1 aborted"), 409, "request_id"),
        (RequestFailed("r1: step failed", "CUDA error"), 500, None),
        (EngineError("something else"), 500, None),
    ],
)
def test_from_engine(svc, exc, status, field):
    err = failures.from_engine(svc, exc, InflightRequest("r1"), "input")
    assert (err.status, err.field) == (status, field)
    if status == 400:
        assert err.message.startswith(f"{field}: ")
    if isinstance(exc, RequestFailed) and status == 500:
        assert err.message.endswith("CUDA error") and err.type == "engine_error"


def test_a_cancel_asked_wins_over_the_engine_error(svc):
    record = InflightRequest("r2", cancel_reason=CancelReason.CLIENT)
    err = failures.from_engine(svc, RequestFailed("r2: failed"), record, "input")
    assert (err.status, err.type) == (409, "cancelled")
