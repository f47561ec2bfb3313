"""Tests of voxcpm_engine.proc.stream: OutputRouter, RequestStream and the engine client's error classes."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from voxcpm_engine.proc.errors import EngineDeadError, EngineError, InvalidRequest, RequestCancelled, RequestFailed
from voxcpm_engine.proc.messages import Output
from voxcpm_engine.proc.stream import OutputRouter, RequestStream
from voxcpm_engine.sched.request import RequestStatus

RUNNING, STOPPED = int(RequestStatus.RUNNING), int(RequestStatus.FINISHED_STOPPED)


class Owner:
    """The client side a stream reports an early exit to (``AsyncEngine._abort_closed``): records the ids."""

    def __init__(self) -> None:
        self.aborted: list[str] = []

    def _abort_closed(self, request_id: str) -> None:
        self.aborted.append(request_id)


def _chunk(value: float) -> np.ndarray:
    return np.full(4, value, dtype=np.float32)


def _open(router: OutputRouter, owner: Owner, request_id: str) -> RequestStream:
    return RequestStream(request_id, router.open(request_id), owner)


async def _drain(stream: RequestStream) -> list[float]:
    return [float(c[0]) async for c in stream]


def test_error_classes_and_reason():
    assert issubclass(EngineDeadError, EngineError) and issubclass(RequestCancelled, EngineError)
    assert issubclass(InvalidRequest, RequestFailed) and issubclass(RequestFailed, EngineError)
    assert issubclass(EngineError, RuntimeError)
    assert RequestFailed("request 'a' failed: x").reason == "request 'a' failed: x"  # defaults to the message
    err = InvalidRequest("request 'a' failed: bad text", "bad text")
    assert str(err) == "request 'a' failed: bad text" and err.reason == "bad text"


def test_chunks_arrive_in_order_and_the_final_one_ends_the_stream():
    async def go():
        router, owner = OutputRouter(), Owner()
        stream = _open(router, owner, "a")
        assert router.has("a") and router.unfinished == 1
        router.route([Output("a", _chunk(1), RUNNING, times=(1.0, 2.0, 3.0, 4.0, 5.0))])
        router.route([Output("ghost", _chunk(9), RUNNING)])  # unknown ids are dropped
        router.route([Output("a", _chunk(2), RUNNING), Output("a", _chunk(3), STOPPED)])
        assert not router.has("a") and router.unfinished == 0  # the final output was routed
        assert await _drain(stream) == [1.0, 2.0, 3.0]
        assert stream.status == RequestStatus.FINISHED_STOPPED and stream.engine_times == (1.0, 2.0, 3.0, 4.0, 5.0)
        assert await _drain(stream) == []  # stays ended
        stream.close()
        assert owner.aborted == []  # it had ended: nothing to abort

    asyncio.run(go())


def test_a_final_output_without_audio_ends_the_stream():
    async def go():
        router = OutputRouter()
        stream = _open(router, Owner(), "a")
        router.route([Output("a", _chunk(1), RUNNING), Output("a", None, int(RequestStatus.FINISHED_LENGTH))])
        assert await _drain(stream) == [1.0]
        assert stream.status == RequestStatus.FINISHED_LENGTH

    asyncio.run(go())


@pytest.mark.parametrize(
    ("output", "error", "reason"),
    [
        (Output("a", None, int(RequestStatus.CANCELLED)), RequestCancelled, None),
        (Output("a", None, int(RequestStatus.FAILED), error="unknown voice 'x'", invalid=True), InvalidRequest, "x'"),
        (Output("a", None, int(RequestStatus.FAILED), error="boom"), RequestFailed, "boom"),
        (Output("a", None, int(RequestStatus.FAILED)), RequestFailed, "engine error"),
    ],
)
def test_cancelled_and_failed_requests_raise(output, error, reason):
    async def go():
        router = OutputRouter()
        stream = _open(router, Owner(), "a")
        router.route([Output("a", _chunk(1), RUNNING), output])
        assert await stream.__anext__() is not None
        with pytest.raises(error) as info:
            await stream.__anext__()
        assert type(info.value) is error and "'a'" in str(info.value)
        if reason is not None:
            assert info.value.reason.endswith(reason)
        assert stream.status == RequestStatus(output.status)
        assert await _drain(stream) == []

    asyncio.run(go())


def test_leaving_early_aborts_once_and_a_reused_id_never_gets_the_old_final_output():
    async def go():
        router, owner = OutputRouter(), Owner()
        old = _open(router, owner, "a")
        router.route([Output("a", _chunk(1), RUNNING)])
        async with old:
            assert float((await old.__anext__())[0]) == 1.0
        assert old.closed and owner.aborted == ["a"] and not router.has("a")
        old.close()
        assert owner.aborted == ["a"]  # once
        new = _open(router, owner, "a")  # the id reused right after the abort
        assert router.has("a") and router.unfinished == 2
        router.route([Output("a", None, int(RequestStatus.CANCELLED))])  # the old request's last word
        router.route([Output("a", _chunk(5), RUNNING), Output("a", _chunk(6), STOPPED)])
        assert await _drain(new) == [5.0, 6.0] and router.unfinished == 0
        assert await _drain(old) == []

    asyncio.run(go())


def test_cancelling_a_waiting_consumer_closes_and_aborts():
    async def go():
        router, owner = OutputRouter(), Owner()
        stream = _open(router, owner, "a")
        task = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert stream.closed and owner.aborted == ["a"]
        router.route([Output("a", _chunk(1), STOPPED)])  # dropped: nobody listens
        assert router.unfinished == 0

    asyncio.run(go())


def test_fail_all_ends_every_open_stream_with_engine_dead():
    async def go():
        router, owner = OutputRouter(), Owner()
        a, b = _open(router, owner, "a"), _open(router, owner, "b")
        router.route([Output("a", _chunk(1), RUNNING)])
        router.fail_all("engine process exited with code -9")
        assert router.unfinished == 0 and not router.has("a") and not router.has("b")
        assert float((await a.__anext__())[0]) == 1.0  # what came before the death is still delivered
        for stream in (a, b):
            with pytest.raises(EngineDeadError, match="exited with code -9"):
                await stream.__anext__()
        assert a.status is None and b.status is None

    asyncio.run(go())
