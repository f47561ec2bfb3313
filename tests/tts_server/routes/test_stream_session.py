"""``/v1/tts/stream`` with the ``websockets`` client against a real hypercorn on loopback (tiny VoxCPM2 engine).

Random-weight models never stop on their own, so every segment is ``default_max_generate_length``
(3) patches long here.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

import jsonschema
import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from tests.tts_server.harness import serve, server_config
from tts_server.http.stream_messages import protocol_schema

_ids = itertools.count()
EVENT_SCHEMA = protocol_schema()["server_event"]


@pytest.fixture(scope="module")
def srv(loop_runner, shared_engine, tiny_v2):
    config = server_config(
        tiny_v2,
        session_text_wait=0.2,
        session_idle_timeout=3.0,
        max_concurrent_connections=6,
        max_body_bytes=100_000,
        session_max_chars=2_000,
    )
    with serve(loop_runner, shared_engine, config) as served:
        yield served


def ws_url(srv) -> str:
    return srv.url.replace("http://", "ws://") + "/v1/tts/stream"


class Transcript:
    """What a session received: JSON events in order, audio bytes, and when each arrived."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.audio = bytearray()
        self.first_audio_at: float | None = None
        self.order: list[str] = []  # event types, with "audio" for binary frames

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    async def read_until(self, ws: ClientConnection, kind: str, timeout: float = 30.0) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while True:
            message = await asyncio.wait_for(ws.recv(), max(0.01, end - time.monotonic()))
            if isinstance(message, bytes):
                self.audio += message
                self.first_audio_at = self.first_audio_at or time.monotonic()
                if not self.order or self.order[-1] != "audio":
                    self.order.append("audio")
                continue
            event = json.loads(message)
            jsonschema.validate(event, EVENT_SCHEMA)  # every event as docs/stream_protocol.schema.json says
            self.events.append(event)
            self.order.append(event["type"])
            if event["type"] == kind:
                return event


def start(**fields: Any) -> str:
    return json.dumps({"type": "start", "request_id": f"s-{next(_ids)}", "seed": 1, **fields})


async def begin(ws: ClientConnection, t: Transcript, **fields: Any) -> dict[str, Any]:
    """Send ``start`` and wait for ``started``."""
    await ws.send(start(**fields))
    return await t.read_until(ws, "started")


async def say(ws: ClientConnection, text: str) -> None:
    await ws.send(json.dumps({"type": "text", "text": text}))


async def send(ws: ClientConnection, kind: str) -> None:
    await ws.send(json.dumps({"type": kind}))


def test_a_session_speaks_sentences_as_they_complete_then_closes(srv):
    async def go():
        t = Transcript()
        async with connect(ws_url(srv)) as ws:
            started = await begin(ws, t)
            for token in ["Hello", " there", ".", " How", " are", " you", "?", " Fine"]:
                await say(ws, token)
            first = await t.read_until(ws, "segment_done")
            await send(ws, "close")
            done = await t.read_until(ws, "done")
            await ws.wait_closed()
            return t, started, first, done, ws.close_code

    t, started, first, done, code = srv.run(go())
    assert started["format"] == "pcm" and started["sample_rate"] == srv.app.state.services.sample_rate
    assert [e["text"] for e in t.of("segment_started")] == ["Hello there.", "How are you?", "Fine"]
    assert [e["continued"] for e in t.of("segment_started")] == [False, True, True]
    assert done["segments"] == 3 and code == 1000
    samples = len(t.audio) // 2
    assert samples == round(done["duration_s"] * started["sample_rate"])
    assert sum(e["duration_s"] for e in t.of("segment_done")) == pytest.approx(done["duration_s"], abs=1e-3)
    assert len(t.of("timing")) == 3 and all(
        e["ttfa_ms"] >= e["queued_ms"] + e["behind_ms"] and min(e["queued_ms"], e["behind_ms"]) >= 0
        for e in t.of("timing")
    )
    # events and audio interleave in order: each segment's start and timing come before its audio
    assert t.order[:4] == ["started", "segment_started", "timing", "audio"]
    pcm = np.frombuffer(bytes(t.audio), dtype="<i2")
    assert np.abs(pcm).max() > 0


def test_text_waits_for_a_pause_then_flush_speaks_the_rest(srv):
    async def go():
        t = Transcript()
        async with connect(ws_url(srv)) as ws:
            await begin(ws, t, text_wait_ms=10_000)
            await say(ws, "no boundary yet")
            with pytest.raises(TimeoutError):
                await t.read_until(ws, "segment_started", timeout=0.5)
            await send(ws, "flush")
            flushed = await t.read_until(ws, "flushed")
            await say(ws, "then a pause")
            await send(ws, "close")
            await t.read_until(ws, "done")
            return t, flushed

    t, _ = srv.run(go())
    assert [e["text"] for e in t.of("segment_started")] == ["no boundary yet", "then a pause"]
    assert t.order.index("flushed") > t.order.index("segment_done")


def test_the_wait_without_text_speaks_the_buffer(srv):
    async def go():
        t = Transcript()
        async with connect(ws_url(srv)) as ws:
            await begin(ws, t)  # the server's wait: 0.2 s
            await say(ws, "an unfinished thought")
            event = await t.read_until(ws, "segment_started", timeout=10)
            await send(ws, "close")
            await t.read_until(ws, "done")
            return event

    assert srv.run(go())["text"] == "an unfinished thought"


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"type": "text"}, "text"),
        ({"type": "shout", "text": "x"}, "type"),
        ({"type": "text", "text": 5}, "text"),
        ({"type": "start"}, "type"),
        ("not json", None),
    ],
)
def test_a_bad_message_is_an_error_event_and_the_session_goes_on(srv, message, field):
    async def go():
        t = Transcript()
        async with connect(ws_url(srv)) as ws:
            await begin(ws, t)
            await ws.send(message if isinstance(message, str) else json.dumps(message))
            error = await t.read_until(ws, "error")
            await ws.send(b"\x00\x01")
            binary = await t.read_until(ws, "error")
            await say(ws, "Still here.")
            await send(ws, "close")
            done = await t.read_until(ws, "done")
            return error, binary, done

    error, binary, done = srv.run(go())
    assert error["fatal"] is False and error["code"] == "bad_message" and error["field"] == field
    assert binary["fatal"] is False and "binary" in binary["message"]
    assert done["segments"] == 1


def test_text_before_start_is_refused_with_a_policy_close(srv):
    async def go():
        async with connect(ws_url(srv)) as ws:
            await say(ws, "hi")
            event = json.loads(await ws.recv())
            await ws.wait_closed()
            return event, ws.close_code

    event, code = srv.run(go())
    assert event["type"] == "error" and event["fatal"] and event["field"] == "type"
    assert code == 1008


def test_an_unknown_voice_is_refused_naming_the_field(srv):
    async def go():
        async with connect(ws_url(srv)) as ws:
            await ws.send(start(voice="nobody"))
            event = json.loads(await ws.recv())
            await ws.wait_closed()
            return event, ws.close_code

    event, code = srv.run(go())
    assert event["field"] == "voice" and code == 1008


def test_clear_stops_the_audio_and_drops_the_text(srv):
    async def go():
        t = Transcript()
        async with connect(ws_url(srv)) as ws:
            await begin(ws, t, max_generate_length=60)  # long enough to be in flight when cleared
            await say(ws, "A long first sentence. And a second, never spoken")
            await t.read_until(ws, "timing")
            await send(ws, "clear")
            cleared = await t.read_until(ws, "cleared")
            after = len(t.audio)
            await say(ws, "Fresh start.")
            await send(ws, "close")
            await t.read_until(ws, "done")
            return t, cleared, after

    t, cleared, after = srv.run(go())
    assert cleared["dropped_chars"] > 0
    started = t.of("segment_started")
    assert [e["text"] for e in started] == ["A long first sentence.", "Fresh start."]
    assert started[1]["continued"] is False  # the interrupted speech is not continued from
    assert [e["segment"] for e in t.of("segment_done")] == [1]  # the cleared segment never reports done
    assert t.order.index("cleared") < t.order.index("segment_started", t.order.index("cleared"))
    assert len(t.audio) > after  # the new text was spoken after the clear


def test_a_session_is_listed_and_cancellable_by_id(srv):
    async def go():
        t = Transcript()
        async with connect(ws_url(srv)) as ws, srv.client() as http:
            await begin(ws, t, request_id="agent-1")
            status = (await http.get("/status")).json()
            cancel = await http.post("/cancel", json={"request_id": "agent-1"})
            error = await t.read_until(ws, "error")
            await ws.wait_closed()
            return status, cancel.json(), error, ws.close_code

    status, cancel, error, code = srv.run(go())
    assert status["sessions"] == {"active": 1, "speaking": 0, "waiting_for_text": 1}
    assert status["connections"]["active"] >= 1  # the session is a connection under the cap
    assert cancel["status"] == "cancelled"
    assert error["code"] == "cancelled" and error["fatal"]
    assert code == 1000


def test_the_connection_cap_refuses_the_upgrade_with_503(srv):
    async def go():
        held = [await connect(ws_url(srv)) for _ in range(6)]
        try:
            with pytest.raises(InvalidStatus) as refused:
                await connect(ws_url(srv))
        finally:
            for ws in held:
                await ws.close()
        return refused.value.response

    response = srv.run(go())
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert json.loads(response.body)["error"]["type"] == "overloaded"


def test_an_idle_session_is_closed(srv):
    async def go():
        t = Transcript()
        async with connect(ws_url(srv)) as ws:
            await begin(ws, t)
            error = await t.read_until(ws, "error", timeout=10)
            await ws.wait_closed()
            return error, ws.close_code

    error, code = srv.run(go())
    assert error["code"] == "idle_timeout" and code == 4408


def test_a_dropped_socket_frees_the_slot(srv):
    svc = srv.app.state.services

    async def go():
        ws = await connect(ws_url(srv))
        await ws.send(start(max_generate_length=60))
        t = Transcript()
        await t.read_until(ws, "started")
        await say(ws, "Speak for a long while.")
        await send(ws, "flush")
        await t.read_until(ws, "timing")
        ws.transport.abort()
        end = time.monotonic() + 5
        while (svc.queue.active or len(svc.registry)) and time.monotonic() < end:
            await asyncio.sleep(0.01)
        return svc.queue.active, len(svc.registry)

    assert srv.run(go()) == (0, 0)


def test_an_oversize_frame_closes_with_1009_and_the_server_goes_on(srv):
    async def go():
        t = Transcript()
        async with connect(ws_url(srv), max_size=None) as ws:
            await begin(ws, t)
            await say(ws, "x" * 120_000)  # over --max-body-bytes
            await ws.wait_closed()
            code = ws.close_code
        async with connect(ws_url(srv)) as ws:  # the next session is served as usual
            await begin(ws, t)
            await say(ws, "Still fine.")
            await send(ws, "close")
            done = await t.read_until(ws, "done")
        return code, done

    code, done = srv.run(go())
    assert code == 1009 and done["segments"] == 1


def test_text_over_the_session_limit_is_refused_and_the_session_goes_on(srv):
    async def go():
        t = Transcript()
        async with connect(ws_url(srv)) as ws:
            await begin(ws, t)
            await say(ws, "Short one. ")
            await say(ws, "y " * 1_500)  # 3,000 > --session-max-chars 2,000
            error = await t.read_until(ws, "error")
            await send(ws, "close")
            done = await t.read_until(ws, "done")
            return error, done

    error, done = srv.run(go())
    assert error["code"] == "text_limit" and error["field"] == "text" and error["fatal"] is False
    assert done["segments"] == 1  # what was accepted is spoken


def test_a_flood_of_tiny_fragments_leaves_other_sessions_speaking(srv):
    async def flood():
        t = Transcript()
        async with connect(ws_url(srv)) as ws:
            await begin(ws, t)
            for _ in range(1_500):
                await say(ws, "a")
            await send(ws, "close")
            return await t.read_until(ws, "done")

    async def speaker():
        t = Transcript()
        async with connect(ws_url(srv)) as ws:
            await begin(ws, t)
            await say(ws, "I am heard meanwhile.")
            await send(ws, "close")
            return await t.read_until(ws, "done")

    async def go():
        return await asyncio.gather(flood(), speaker())

    flooded, spoken = srv.run(go())
    assert flooded["segments"] >= 1 and spoken["segments"] == 1


def test_the_api_key_applies_to_the_upgrade(loop_runner, shared_engine, tiny_v2):
    async def go(url):
        with pytest.raises(InvalidStatus) as refused:
            await connect(url)
        async with connect(url, additional_headers={"Authorization": "Bearer k-1"}) as ws:
            await ws.send(start())
            started = json.loads(await ws.recv())
        return refused.value.response, started

    with serve(loop_runner, shared_engine, server_config(tiny_v2, api_key="k-1")) as keyed:
        response, started = keyed.run(go(ws_url(keyed)))
    assert response.status_code == 401 and started["type"] == "started"


def test_the_drain_ends_a_session_with_going_away(srv):
    from tts_server.jobs.registry import CancelReason

    svc = srv.app.state.services

    async def go():
        t = Transcript()
        async with connect(ws_url(srv)) as ws:
            await begin(ws, t, max_generate_length=60)
            await say(ws, "Speaking when the server stops.")
            await send(ws, "flush")
            await t.read_until(ws, "timing")
            await svc.registry.cancel_all(CancelReason.SHUTDOWN)  # what the drain does once its grace is over
            error = await t.read_until(ws, "error")
            await ws.wait_closed()
            return error, ws.close_code

    error, code = srv.run(go())
    assert error["code"] == "shutdown" and error["fatal"] and code == 1001
