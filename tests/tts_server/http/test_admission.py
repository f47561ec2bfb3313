"""The connection cap and auth middleware under a real hypercorn, in front of a small Starlette app.

No engine: the app's endpoints block on an event or stream until the client leaves, so the tests
control exactly how many requests are inside at once.
"""

import asyncio
import time

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from tests.reliability.raw_http import request_head
from tests.tts_server.serving import AppServer, LoopRunner
from tts_server.errors import ApiError, api_error_handler
from tts_server.http.admission import Admission, AdmissionMiddleware, _BodyDeadline
from tts_server.lifecycle import Lifecycle


class Probe:
    """What the app saw: requests inside now, the most at once, streams whose body was cancelled."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.inside = 0
        self.most = 0
        self.cancelled_bodies = 0


def make_app(admission: Admission, probe: Probe) -> Starlette:
    async def work(request: Request) -> JSONResponse:
        await request.body()
        probe.inside += 1
        probe.most = max(probe.most, probe.inside)
        try:
            await probe.gate.wait()
        finally:
            probe.inside -= 1
        return JSONResponse({"ok": True})

    async def stream(request: Request) -> StreamingResponse:
        async def body():
            try:
                while True:
                    yield b"x" * 1024
                    await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                probe.cancelled_bodies += 1
                raise

        return StreamingResponse(body())

    async def open_(request: Request) -> JSONResponse:
        return JSONResponse({"active": admission.active})

    routes = [
        Route("/generate", work, methods=["POST"]),
        Route("/v1/audio/speech", work, methods=["POST"]),
        Route("/stream", stream),
        Route("/health", open_),
        Route("/queue", open_),
        Route("/voices", open_, methods=["GET", "POST"]),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(AdmissionMiddleware, admission=admission)],
        exception_handlers={ApiError: api_error_handler},  # the body deadline's 408 and 503, as the server renders them
    )


@pytest.fixture
def served():
    """``(url, admission, probe, runner)`` for a cap of 3 and no keys."""
    runner = LoopRunner()
    lifecycle = Lifecycle()
    lifecycle.ready()
    rejected: list[str] = []
    admission = Admission(3, lifecycle, retry_after=2, on_reject=lambda reason, path: rejected.append(reason))
    admission.rejected = rejected  # type: ignore[attr-defined]
    probe = Probe()
    server = AppServer(make_app(admission, probe))
    url = runner.run(server.start())
    yield url, admission, probe, runner
    probe.gate.set()
    runner.run(server.stop())
    runner.close()


def test_surplus_arrivals_get_503_at_once_and_the_cap_is_never_exceeded(served):
    url, admission, probe, runner = served

    async def go():
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            tasks = [asyncio.create_task(client.post("/generate", json={"i": i})) for i in range(12)]
            t0 = time.monotonic()
            while sum(t.done() for t in tasks) < 9:
                await asyncio.sleep(0.005)
                assert time.monotonic() - t0 < 3.0
            refused_in = time.monotonic() - t0
            health = await client.get("/health")
            inside_then = probe.inside
            probe.gate.set()
            responses = await asyncio.gather(*tasks)
            return responses, refused_in, health, inside_then

    responses, refused_in, health, inside_then = runner.run(go())
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 3 + [503] * 9 and inside_then == 3 and probe.most == 3
    assert refused_in < 2.0  # refused without waiting for anything
    for r in responses:
        if r.status_code == 503:
            assert r.headers["retry-after"] == "2"
            assert r.json()["error"]["type"] == "overloaded" and "capacity" in r.json()["error"]["message"]
    assert health.status_code == 200 and health.json() == {"active": 3}  # probes bypass the cap
    assert admission.active == 0 and admission.rejected == ["connection_cap"] * 9


def test_a_refused_upload_still_reads_its_answer(served):
    url, admission, probe, runner = served

    async def go():
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            holders = [asyncio.create_task(client.post("/generate", json={})) for _ in range(3)]
            while probe.inside < 3:
                await asyncio.sleep(0.005)
            big = await client.post("/generate", content=b"{" + b" " * 200_000 + b"}")
            probe.gate.set()
            await asyncio.gather(*holders)
            return big

    assert runner.run(go()).status_code == 503


def test_slot_is_released_when_the_client_leaves_mid_stream(served):
    url, admission, probe, runner = served

    async def go():
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            async with client.stream("GET", "/stream") as response:
                async for _ in response.aiter_bytes():
                    break
                during = admission.active
            t0 = time.monotonic()
            while admission.active and time.monotonic() - t0 < 3:
                await asyncio.sleep(0.01)
            return during

    assert runner.run(go()) == 1
    assert admission.active == 0 and probe.cancelled_bodies == 1


def test_draining_and_dead_engine_refuse_work_but_not_probes(served):
    url, admission, probe, runner = served

    async def go():
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            admission.lifecycle.drain()
            draining = await client.post("/generate", json={})
            openai_shape = await client.post("/v1/audio/speech", json={})
            probe_ok = await client.get("/queue")
            return draining, openai_shape, probe_ok

    draining, openai_shape, probe_ok = runner.run(go())
    assert draining.status_code == 503 and "shutting down" in draining.json()["error"]["message"]
    error = openai_shape.json()["error"]
    assert openai_shape.status_code == 503 and error["type"] == "server_error" and error["code"] == "overloaded"
    assert probe_ok.status_code == 200
    assert admission.rejected == ["draining", "draining"]


def test_auth_rules_over_http():
    runner = LoopRunner()
    lifecycle = Lifecycle()
    lifecycle.ready()
    admission = Admission(5, lifecycle, api_key="user-key", admin_key="admin-key")
    probe = Probe()
    probe.gate.set()
    server = AppServer(make_app(admission, probe))
    url = runner.run(server.start())

    async def go():
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:

            async def call(method, path, key=None):
                headers = {"authorization": f"Bearer {key}"} if key else {}
                return (await client.request(method, path, headers=headers, json={})).status_code

            return {
                "health open": await call("GET", "/health"),
                "work anonymous": await call("POST", "/generate"),
                "work wrong": await call("POST", "/generate", "nope"),
                "work user": await call("POST", "/generate", "user-key"),
                "work admin": await call("POST", "/generate", "admin-key"),
                "list voices user": await call("GET", "/voices", "user-key"),
                "add voice user": await call("POST", "/voices", "user-key"),
                "add voice admin": await call("POST", "/voices", "admin-key"),
                "queue anonymous": await call("GET", "/queue"),
            }

    try:
        codes = runner.run(go())
    finally:
        runner.run(server.stop())
        runner.close()
    assert codes == {
        "health open": 200,
        "work anonymous": 401,
        "work wrong": 401,
        "work user": 200,
        "work admin": 200,
        "list voices user": 200,
        "add voice user": 403,
        "add voice admin": 200,
        "queue anonymous": 401,
    }


def test_a_body_that_does_not_come_is_408_and_one_that_is_cut_is_503(served):
    url, admission, _, runner = served
    admission.body_timeout = 0.5
    cuts: list[str] = []
    admission.on_cut = cuts.append
    host, port = url.removeprefix("http://").rsplit(":", 1)

    async def ask(body: bytes, cut_after_s: float | None = None) -> bytes:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(request_head("/generate", 50) + body)  # 50 bytes announced, fewer sent
        if cut_after_s is not None:
            await asyncio.sleep(cut_after_s)  # its wait for the body has begun
            admission.cut()
        answer = await asyncio.wait_for(reader.read(), 5)  # the server answers and closes
        writer.close()
        return answer

    late = runner.run(ask(b'{"a":'))  # part of the body, then nothing
    assert late.startswith(b"HTTP/1.1 408") and b"not complete 0.5 s after the request began" in late, late
    assert cuts == ["body_timeout"]
    cut = runner.run(ask(b"", cut_after_s=0.1))
    assert cut.startswith(b"HTTP/1.1 503") and b"the server is shutting down" in cut, cut
    refused = runner.run(ask(b""))  # once cut, a wait for a body ends at once
    assert refused.startswith(b"HTTP/1.1 503"), refused
    assert cuts == ["body_timeout", "shutdown", "shutdown"]


def test_a_body_already_received_is_taken_without_yielding_to_the_loop():
    # In a burst every yield lets all the other requests take a turn first; a body that is
    # already in the server's queue must not cost one.
    async def go() -> None:
        queue: asyncio.Queue = asyncio.Queue()
        queue.put_nowait({"type": "http.request", "body": b"{}", "more_body": False})
        deadline = _BodyDeadline(queue.get, Admission(1, Lifecycle()))
        step = deadline()
        with pytest.raises(StopIteration) as done:  # finished in its first step: no suspension
            step.send(None)
        assert done.value.value["body"] == b"{}"

    asyncio.run(go())
