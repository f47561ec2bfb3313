"""Tests of tts_server.audio.responses: a job's audio streamed, as one file, or as server-sent events, over HTTP.

A served app (real hypercorn, the shared tiny engine) gets one extra route that starts a job and answers
with this module's responses, so their headers, bodies and endings are checked as a client sees them.
"""

import asyncio
import base64
import itertools
import struct

import httpx
import orjson
import pytest
from starlette.requests import Request

from tests.tts_server.harness import serve, server_config
from tts_server.audio.responses import audio_response, sse_response
from tts_server.jobs.job import Job, JobSpec
from tts_server.jobs.registry import CancelReason
from tts_server.metrics import Outcome
from voxcpm_engine.single.synthesizer import GenerationParams

LONG = 200  # steps: never ends within a test unless cut off
_ids = itertools.count()


async def job_route(request: Request):
    q = request.query_params
    svc = request.app.state.services
    steps = int(q.get("steps", "2"))
    spec = JobSpec(q["rid"], "client", "generate", ("Hello there.",), None, None,
                   GenerationParams(min_steps=steps, max_steps=steps, seed=3))  # fmt: skip
    job = await Job.start(svc, spec, request.receive)
    if q.get("sse"):
        return sse_response(job, q["fmt"], lambda j: {"samples": j.samples}, headers={"X-Extra": "sse"})
    return await audio_response(job, q["fmt"], stream=q.get("stream") == "1", headers={"X-Extra": "1"})


@pytest.fixture(scope="module")
def srv(loop_runner, shared_engine, tiny_v2):
    with serve(loop_runner, shared_engine, server_config(tiny_v2, max_num_seqs=2)) as served:
        served.app.add_route("/job", job_route, methods=["GET"])
        yield served


@pytest.fixture(autouse=True)
def _idle_after(srv):
    yield
    srv.settled()


def rid() -> str:
    return f"resp-{next(_ids)}"


def spp(srv) -> int:
    return int(srv.services.model_info["samples_per_patch"])


def stage_count(srv, stage: str) -> float:
    for line in srv.app.state.metrics.render().decode().splitlines():
        if line.startswith(f'tts_request_stage_seconds_count{{stage="{stage}"}}'):
            return float(line.split()[-1])
    return 0.0


def get(srv, **params) -> httpx.Response:
    async def go():
        async with srv.client() as client:
            return await client.get("/job", params=params)

    return srv.run(go())


def test_a_streamed_response_sends_its_headers_then_the_audio_as_made(srv):
    sends = stage_count(srv, "send")
    request_id = rid()

    async def go():
        async with srv.client() as client:
            async with client.stream("GET", "/job", params={"rid": request_id, "fmt": "pcm", "stream": "1",
                                                            "steps": "3"}) as response:  # fmt: skip
                chunks = [chunk async for chunk in response.aiter_raw()]
            return response, chunks

    response, chunks = srv.run(go())
    h = response.headers
    assert response.status_code == 200 and h["transfer-encoding"] == "chunked" and "content-length" not in h
    assert (h["x-request-id"], h["x-sample-rate"], h["x-queue-status"]) == (request_id, "48000", "0")
    assert (h["cache-control"], h["x-accel-buffering"], h["x-extra"]) == ("no-store", "no", "1")
    assert h["content-disposition"] == 'inline; filename="speech.pcm"' and h["content-type"].startswith("audio/pcm")
    assert "queue;dur=" in h["server-timing"] and "total;dur=" in h["server-timing"]
    assert len(chunks) >= 2 and sum(map(len, chunks)) == 3 * spp(srv) * 2
    assert stage_count(srv, "send") == sends + 1  # the first byte's time is recorded once it is sent


def test_a_whole_file_has_exact_headers_and_length(srv):
    request_id = rid()
    response = get(srv, rid=request_id, fmt="wav", steps="2")
    data, h = response.content, response.headers
    assert response.status_code == 200 and int(h["content-length"]) == len(data)
    assert h["content-disposition"] == 'inline; filename="speech.wav"' and h["x-extra"] == "1"
    assert h["x-request-id"] == request_id and h["x-sample-rate"] == "48000"
    assert data[:4] == b"RIFF" and struct.unpack_from("<I", data, 40)[0] == len(data) - 44 == 2 * 2 * spp(srv)
    assert "complete;dur=" in h["server-timing"]  # the encoding is part of a whole file's timing
    mp3 = get(srv, rid=rid(), fmt="mp3", steps="2")
    assert mp3.headers["content-disposition"] == 'inline; filename="speech.mp3"'
    assert mp3.headers["x-sample-rate"] == "48000" and mp3.content[:2] == b"\xff\xfb"


def test_server_sent_events_carry_the_audio_then_done_with_usage(srv):
    response = get(srv, rid=rid(), fmt="pcm", sse="1", steps="2")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-extra"] == "sse" and "content-disposition" not in response.headers
    events = [orjson.loads(part[6:]) for part in response.text.split("\n\n") if part.startswith("data: ")]
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1) and len(events) >= 2
    pcm = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert events[-1] == {"type": "speech.audio.done", "usage": {"samples": 2 * spp(srv)}} and len(pcm) == 4 * spp(srv)


async def _cut_after_first_bytes(srv, request_id: str, **params):
    """Stream a long job, cut it off as the drain's grace end does once bytes arrived; returns what the client got."""
    async with srv.client() as client:
        params = {"rid": request_id, "steps": str(LONG), **params}
        async with client.stream("GET", "/job", params=params) as response:
            chunks = response.aiter_raw()
            received = [await anext(chunks)]
            await srv.services.registry.cancel(request_id, CancelReason.SHUTDOWN)
            try:
                async for chunk in chunks:
                    received.append(chunk)
            except httpx.RemoteProtocolError as exc:
                return response, received, exc
        return response, received, None


def test_a_stream_cut_off_breaks_off_the_transfer(srv):
    cancelled = srv.services.metrics.requests.labels(endpoint="generate", outcome=Outcome.CANCELLED.value)
    before = cancelled._value.get()
    response, received, error = srv.run(_cut_after_first_bytes(srv, rid(), fmt="pcm", stream="1"))
    assert response.status_code == 200 and received
    assert error is not None  # no final chunk: the client can tell the audio is incomplete
    assert sum(map(len, received)) < LONG * spp(srv) * 2
    assert srv.settled() and cancelled._value.get() == before + 1


def test_an_event_stream_cut_off_ends_with_an_error_event(srv):
    response, received, error = srv.run(_cut_after_first_bytes(srv, rid(), fmt="pcm", sse="1"))
    assert error is None  # an event stream ends normally, saying why in its last event
    events = [orjson.loads(p[6:]) for p in b"".join(received).decode().split("\n\n") if p.startswith("data: ")]
    assert events[-1] == {"type": "error", "error": {"message": "the server shut down before the audio was complete",
                                                      "type": "shutdown"}}  # fmt: skip
    assert all(e["type"] == "speech.audio.delta" for e in events[:-1])


def test_a_client_that_leaves_mid_stream_frees_the_job(srv):
    svc = srv.services
    request_id = rid()

    async def go():
        async with srv.client() as client:
            params = {"rid": request_id, "fmt": "pcm", "stream": "1", "steps": str(LONG)}
            async with client.stream("GET", "/job", params=params) as response:
                await anext(response.aiter_raw())
                held = svc.queue.active
        for _ in range(500):  # the response's end closes the job once the server sees the disconnect
            if svc.registry.get(request_id) is None and svc.queue.active == 0:
                break
            await asyncio.sleep(0.01)
        return held, svc.registry.get(request_id), svc.queue.active

    held, record, active = srv.run(go())
    assert (held, record, active) == (1, None, 0)


async def _started_stream(srv, receive):
    """A long job's streamed response, made outside a route so the test drives its ASGI channels."""
    spec = JobSpec(rid(), "client", "generate", ("Hello there.",), None, None,
                   GenerationParams(min_steps=LONG, max_steps=LONG, seed=3))  # fmt: skip
    job = await Job.start(srv.services, spec, receive)
    return await audio_response(job, "pcm", stream=True)


def test_a_disconnect_ends_the_stream_quietly_and_leaves_the_task_uncancelled(srv):
    async def go():
        gone = asyncio.Event()
        sent = []

        async def receive():
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)
            if len(sent) == 3:  # the headers and two chunks, then the client leaves
                gone.set()

        response = await _started_stream(srv, receive)
        await response._stream_until_disconnect(receive, send)
        registered = srv.services.registry.get(response.job.spec.request_id)
        return sent, asyncio.current_task().cancelling(), response.job.record, registered

    sent, cancelling, record, registered = srv.run(go())
    assert sent[0]["type"] == "http.response.start"
    assert all(m["more_body"] for m in sent[1:]) and len(sent) < LONG  # no final chunk: it stopped at once
    assert cancelling == 0  # the disconnect's cancellation was taken back: the handler goes on normally
    assert record.cancel_reason is CancelReason.DISCONNECT and registered is None  # the job ended, slot freed


def test_a_cancellation_from_elsewhere_still_propagates(srv):
    async def go():
        never = asyncio.Event()
        first_body = asyncio.Event()

        async def receive():
            await never.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            if message["type"] == "http.response.body":
                first_body.set()

        response = await _started_stream(srv, receive)
        task = asyncio.create_task(response._stream_until_disconnect(receive, send))
        await first_body.wait()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            outcome = "cancelled"
        else:
            outcome = "returned"
        response.job.close(Outcome.CANCELLED)
        return outcome

    assert srv.run(go()) == "cancelled"
