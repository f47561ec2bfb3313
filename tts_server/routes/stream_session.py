"""``/v1/tts/stream``: a WebSocket session that takes text as it is written and speaks it at once.

The protocol (messages in :mod:`tts_server.http.stream_messages`, README "Streaming sessions"):
the client opens with ``start``, then sends ``text`` fragments, ``flush``, ``clear`` and ``close``;
the server answers ``started``, then streams binary audio frames in the session's format between
JSON events. The session itself (buffering, segments, continuation, slots) is
:class:`~tts_server.jobs.session.Session`; this module is its transport:

- a receive loop that validates each message (a bad one is an ``error`` event naming the field;
  the session goes on) and closes an idle session (nothing sent, nothing to speak) after
  ``--session-idle-timeout``;
- a send loop that encodes audio and writes events in order; while the client does not read, the
  writes wait, the session's unsent audio reaches its bound and its generation pauses; a client
  that reads nothing for ``--send-timeout`` is cut off by the transport;
- whichever ends first ends the other: a dropped socket aborts the session within one engine step.

Admission happens before the upgrade (:mod:`tts_server.http.admission`): a session is one
connection under the cap, and a refusal is a plain HTTP answer (401, 503 with ``Retry-After``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

import orjson
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from tts_server.audio.encoders import make_encoder
from tts_server.errors import ApiError
from tts_server.http.auth import client_key
from tts_server.http.stream_messages import (
    ClearMessage,
    CloseMessage,
    FlushMessage,
    StartedEvent,
    StartMessage,
    TextMessage,
    error_message,
    event_message,
    parse_client_message,
)
from tts_server.jobs.registry import CancelReason
from tts_server.jobs.session import Session
from tts_server.jobs.session_events import SegmentAudio, SessionFailed, SessionInputError, SessionProblem
from tts_server.jobs.session_spec import SessionSpec
from tts_server.routes.speech import InlineVoice, prepare_segments, resolve_voice
from tts_server.services import Services
from tts_server.text.incremental import BufferPolicy
from voxcpm_engine.types import GenerationParams

__all__ = ["PATH", "CloseCode", "stream_session_routes"]

log = logging.getLogger(__name__)

PATH = "/v1/tts/stream"
_DEFAULT_MIN_STEPS = 2
_SEND_TAIL_S = 5.0  # longest wait for a session's last events after it ended


class CloseCode:
    """WebSocket close codes of a session (RFC 6455 §7.4.1)."""

    NORMAL = 1000  # done, or the client closed
    GOING_AWAY = 1001  # the server is shutting down
    POLICY = 1008  # no valid start message
    INTERNAL = 1011  # the engine failed
    TRY_AGAIN = 1013  # overloaded (no inference slot in time) or the engine is down
    IDLE = 4408  # nothing sent and nothing to speak for --session-idle-timeout


_CLOSE_FOR = {
    SessionProblem.OVERLOADED: CloseCode.TRY_AGAIN,
    SessionProblem.SHUTDOWN: CloseCode.GOING_AWAY,
    SessionProblem.CANCELLED: CloseCode.NORMAL,
    SessionProblem.ENGINE_ERROR: CloseCode.INTERNAL,
    SessionProblem.IDLE_TIMEOUT: CloseCode.IDLE,
}


async def stream_session(websocket: WebSocket) -> None:
    """One session, from the ``start`` message to the close."""
    svc: Services = websocket.app.state.services
    await websocket.accept()
    try:
        start = await _start_message(websocket, svc)
        session = await _open(websocket, svc, start)
    except _Refused as refused:
        await _send_json(websocket, refused.event)
        await websocket.close(refused.code)
        return
    except WebSocketDisconnect:
        return
    started = StartedEvent(request_id=session.spec.request_id, sample_rate=svc.sample_rate, format=start.format)
    await _send_json(websocket, started.model_dump())
    sender = asyncio.create_task(_send_loop(websocket, session, start.format), name=f"send[{session.spec.request_id}]")
    try:
        code = await _receive_loop(websocket, svc, session, sender)
    except BaseException:
        sender.cancel()
        await session.abort(CancelReason.DISCONNECT)
        raise
    try:  # the session has ended or was aborted: its last events go out now
        sent = await asyncio.wait_for(sender, _SEND_TAIL_S)
    except Exception:  # the socket is gone or the client does not read: nobody to tell
        sent = CloseCode.NORMAL
    with contextlib.suppress(Exception):
        await websocket.close(code if code != CloseCode.NORMAL else sent)


async def _start_message(websocket: WebSocket, svc: Services) -> StartMessage:
    try:
        raw = await asyncio.wait_for(_receive_text(websocket), svc.config.session_idle_timeout)
    except TimeoutError:
        raise _Refused(SessionProblem.IDLE_TIMEOUT, "start: no start message in time", CloseCode.IDLE) from None
    try:
        message = parse_client_message(raw)
    except SessionInputError as exc:
        raise _Refused(exc.problem, exc.message, CloseCode.POLICY, exc.field) from None
    if not isinstance(message, StartMessage):
        raise _Refused(SessionProblem.BAD_MESSAGE, "type: the first message must be start", CloseCode.POLICY, "type")
    return message


async def _open(websocket: WebSocket, svc: Services, start: StartMessage) -> Session:
    """Resolve the voice and register the session (an :class:`ApiError` refuses it)."""
    try:
        inline = InlineVoice(start.prompt_audio, start.prompt_text, start.prompt_latents, start.ref_audio,
                             start.ref_latents)  # fmt: skip
        resolved = await resolve_voice(svc, start.voice, inline)
        headers = websocket.headers
        client = start.client_id or client_key(headers.get("x-client-id"), headers.get("authorization"))
        cfg = svc.config
        max_steps = start.max_generate_length or cfg.default_max_generate_length
        policy = BufferPolicy(max_chars=min(300, cfg.max_text_chars), first_clause_chars=start.first_clause_chars)
        # The continuation context (the previous segment's patches and text) takes at most half the
        # model context; every segment leaves room for it.
        per_patch = svc.model.samples_per_patch / svc.sample_rate
        quarter = cfg.max_model_len // 4
        context = min(round(cfg.session_context_seconds / per_patch), quarter) if start.continue_voice else 0
        context_chars = min(policy.max_chars, quarter)
        reserve = context + context_chars + 16 if context else 0  # + the prompt's special tokens
        spec = SessionSpec(
            request_id=start.request_id or uuid.uuid4().hex,
            client_id=client,
            voice=resolved.voice,
            lora=resolved.lora,
            params=GenerationParams(
                cfg_value=start.cfg_value,
                inference_timesteps=start.inference_timesteps,
                min_steps=min(_DEFAULT_MIN_STEPS, max_steps or _DEFAULT_MIN_STEPS),
                max_steps=max_steps,
                temperature=start.temperature,
                seed=start.seed,
            ),
            policy=policy,
            text_wait_s=cfg.session_text_wait if start.text_wait_ms is None else start.text_wait_ms / 1e3,
            max_session_chars=cfg.session_max_chars,
            max_pending_chars=cfg.max_text_chars,
            context_patches=context,
            context_chars=context_chars,
            buffer_seconds=cfg.stream_buffer_seconds,
        )

        async def prepare(text: str) -> tuple[str, ...]:
            return await prepare_segments(
                svc, text, field="text", normalize=start.normalize, voice=resolved.voice, max_steps=max_steps,
                language=start.language, reserve=reserve,
            )  # fmt: skip

        return Session.open(svc, spec, prepare)
    except ApiError as error:
        problem = SessionProblem.OVERLOADED if error.status == 503 else SessionProblem.BAD_MESSAGE
        raise _Refused(problem, error.message, CloseCode.POLICY, error.field) from None


async def _receive_loop(websocket: WebSocket, svc: Services, session: Session, sender: asyncio.Task[int]) -> int:
    """Client messages into the session until it closes, ends, idles out or the socket drops."""
    idle_s = svc.config.session_idle_timeout
    while True:
        receive = asyncio.ensure_future(websocket.receive())
        done, _ = await asyncio.wait({receive, sender}, timeout=idle_s, return_when=asyncio.FIRST_COMPLETED)
        if receive not in done:
            receive.cancel()  # hypercorn's receive is a queue get: cancelling it loses nothing
            if sender in done:
                return CloseCode.NORMAL
            if session.busy:
                continue
            await _send_json(websocket, error_message(
                SessionProblem.IDLE_TIMEOUT, f"nothing sent for {idle_s:g} s (--session-idle-timeout)", None, fatal=True
            ))  # fmt: skip
            await session.abort(CancelReason.DISCONNECT)
            return CloseCode.IDLE
        message = receive.result()
        if message["type"] == "websocket.disconnect":
            await session.abort(CancelReason.DISCONNECT)
            return CloseCode.NORMAL
        if message.get("text") is None:
            await _send_json(websocket, error_message(
                SessionProblem.BAD_MESSAGE, "message: binary frames are not accepted; send JSON text", None, fatal=False
            ))  # fmt: skip
            continue
        try:
            await _handle(session, parse_client_message(message["text"]))
        except SessionInputError as exc:
            await _send_json(websocket, error_message(exc.problem, exc.message, exc.field, fatal=False))


async def _handle(session: Session, message: Any) -> None:
    match message:
        case TextMessage(text=text):
            session.add_text(text)
        case FlushMessage():
            session.flush()
        case ClearMessage():
            await session.clear()
        case CloseMessage():
            session.close()
        case StartMessage():
            raise SessionInputError(SessionProblem.BAD_MESSAGE, "type: the session has started already", "type")


async def _send_loop(websocket: WebSocket, session: Session, fmt: str) -> int:
    """Session events out, audio encoded; returns the close code the session's end calls for."""
    encoder = make_encoder(fmt, session.svc.sample_rate)
    try:
        async for event in session.events():
            if isinstance(event, SegmentAudio):
                data = encoder.encode(event.samples)
                if data:
                    await websocket.send_bytes(data)
                continue
            message = event_message(event)
            if isinstance(event, SessionFailed):
                await _send_json(websocket, message)
                return _CLOSE_FOR.get(event.problem, CloseCode.INTERNAL)
            if message is not None and message["type"] == "done":
                tail = encoder.finish()
                if tail:
                    await websocket.send_bytes(tail)
            if message is not None:
                await _send_json(websocket, message)
        return CloseCode.NORMAL
    finally:
        encoder.close()


async def _receive_text(websocket: WebSocket) -> str:
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    if message.get("text") is None:
        raise _Refused(SessionProblem.BAD_MESSAGE, "message: the start message is JSON text", CloseCode.POLICY)
    return message["text"]


async def _send_json(websocket: WebSocket, message: dict[str, Any] | None) -> None:
    if message is not None:
        await websocket.send_text(orjson.dumps(message).decode())


class _Refused(Exception):
    def __init__(self, problem: SessionProblem, message: str, code: int, field: str | None = None) -> None:
        super().__init__(message)
        self.event = error_message(problem, message, field, fatal=True)
        self.code = code


def stream_session_routes() -> list[WebSocketRoute]:
    """The route of this module."""
    return [WebSocketRoute(PATH, stream_session)]
