"""The messages of ``/v1/tts/stream``: what a client sends (validated) and the events it receives.

Client → server, JSON text frames, each with a ``type``:

- ``start`` (first, once): the session's voice, format and sampling settings (:class:`StartMessage`);
- ``text``: a fragment of any size, single tokens included (:class:`TextMessage`);
- ``flush``: speak what is buffered now; ``clear``: barge-in; ``close``: finish, then end.

Server → client: binary frames of audio in the session's format, and JSON text frames:
``started``, ``segment_started``, ``timing``, ``segment_done``, ``flushed``, ``cleared``,
``error`` and ``done`` (:func:`event_message`). ``docs/stream_protocol.schema.json`` is the
machine-readable form of both directions; a test keeps it equal to these models.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from tts_server.http.bodies import REQUEST_ID_PATTERN
from tts_server.jobs.session_events import (
    Cleared,
    Flushed,
    SegmentDone,
    SegmentStarted,
    SegmentTiming,
    SessionEnded,
    SessionEvent,
    SessionFailed,
    SessionInputError,
    SessionProblem,
    SessionWarning,
)

__all__ = [
    "ClearMessage",
    "ServerEvent",
    "ClientMessage",
    "CloseMessage",
    "FlushMessage",
    "StartMessage",
    "TextMessage",
    "error_message",
    "event_message",
    "parse_client_message",
    "protocol_schema",
]

StreamFormat = Literal["pcm", "wav", "mp3", "opus"]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class StartMessage(_Message):
    """Opens the session: voice, audio format and sampling settings."""

    type: Literal["start"]
    voice: str | None = Field(None, max_length=64, description="A registered voice; omitted: zero-shot.")
    prompt_audio: str | None = Field(None, description="Base64 audio of a continuation prompt (with prompt_text).")
    prompt_text: str | None = Field(None, min_length=1, description="Transcript of the prompt audio/latents.")
    prompt_latents: dict[str, Any] | None = Field(None, description="Prompt latents (see /encode_latents).")
    ref_audio: str | None = Field(None, description="Base64 audio of a reference voice (VoxCPM2 only).")
    ref_latents: dict[str, Any] | None = Field(None, description="Reference latents (VoxCPM2 only).")
    format: StreamFormat = Field("pcm", description="Audio of the binary frames; pcm is s16le mono.")
    temperature: float = Field(1.0, ge=0.0, le=10.0, description="Scale of the sampler's initial noise.")
    cfg_value: float = Field(2.0, ge=0.0, le=20.0, description="Classifier-free guidance scale.")
    inference_timesteps: int = Field(10, ge=1, le=100, description="Flow sampler steps per patch.")
    max_generate_length: int | None = Field(None, ge=1, le=100_000, description="Most patches per segment.")
    seed: int | None = Field(None, ge=0, lt=2**63, description="Seed: segment k uses seed + k.")
    normalize: bool = Field(False, description="Normalize numbers, dates, symbols and markdown before speaking.")
    language: Literal["en", "zh"] | None = Field(None, description="Normalization language; default: detected.")
    request_id: str | None = Field(None, pattern=REQUEST_ID_PATTERN, description="Id for /cancel; default: new.")
    client_id: str | None = Field(None, min_length=1, max_length=128, description="Fair-queue client.")
    text_wait_ms: int | None = Field(
        None, ge=0, le=10_000, description="Speak buffered text after this long without a fragment."
    )
    first_clause_chars: int = Field(
        24, ge=0, le=1000, description="The first segment may end at a clause once this long (0: sentences only)."
    )
    continue_voice: bool = Field(True, description="Continue each segment from the previous one's audio.")


class TextMessage(_Message):
    """A fragment of text (any size; spaces and newlines are kept until the piece is spoken)."""

    type: Literal["text"]
    text: str = Field(max_length=65_536)


class FlushMessage(_Message):
    """Speak what is buffered now; ``flushed`` follows its audio."""

    type: Literal["flush"]


class ClearMessage(_Message):
    """Barge-in: drop buffered text and stop the audio in flight; ``cleared`` follows."""

    type: Literal["clear"]


class CloseMessage(_Message):
    """Speak what is buffered, then ``done`` and a normal close."""

    type: Literal["close"]


ClientMessage = Annotated[
    StartMessage | TextMessage | FlushMessage | ClearMessage | CloseMessage, Field(discriminator="type")
]
_CLIENT_MESSAGE: TypeAdapter[ClientMessage] = TypeAdapter(ClientMessage)


def parse_client_message(raw: str) -> ClientMessage:
    """One client text frame as its message.

    Raises:
        SessionInputError: Not JSON, no known ``type``, or a field out of range (the message names it).
    """
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise SessionInputError(SessionProblem.BAD_MESSAGE, f"message: not JSON ({exc})") from None
    if not isinstance(data, dict) or "type" not in data:
        raise SessionInputError(SessionProblem.BAD_MESSAGE, "type: every message is a JSON object with a type", "type")
    try:
        return _CLIENT_MESSAGE.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = first["loc"][1:] if first["loc"][:1] == (data.get("type"),) else first["loc"]  # (tag, field...)
        where = "type" if first["type"] == "union_tag_invalid" else ".".join(map(str, loc)) or "type"
        raise SessionInputError(SessionProblem.BAD_MESSAGE, f"{where}: {first['msg']}", where) from None


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StartedEvent(_Event):
    """The session is open; audio frames follow in ``format`` at ``sample_rate``."""

    type: Literal["started"] = "started"
    request_id: str = Field(description="The session's id for /cancel and /queue.")
    sample_rate: int = Field(description="Hz of the audio (pcm: s16le mono; the codecs may resample).")
    format: StreamFormat
    channels: Literal[1] = 1


class SegmentStartedEvent(_Event):
    """A segment went to the engine."""

    type: Literal["segment_started"] = "segment_started"
    segment: int = Field(description="Segment number in the session (0, 1, ...).")
    text: str = Field(description="What is spoken (cleaned, normalized when asked).")
    continued: bool = Field(description="Whether it continues from the previous segment's audio.")


class TimingEvent(_Event):
    """A segment's first audio is here; its audio frames follow."""

    type: Literal["timing"] = "timing"
    segment: int
    ttfa_ms: float = Field(description="From its text being ready (boundary, flush, close or wait) to first audio.")
    queued_ms: float = Field(description="Of that, the wait for an inference slot.")
    behind_ms: float = Field(
        description="Of that, the wait for its turn in the session (the previous segment's end, text preparation)."
    )


class SegmentDoneEvent(_Event):
    """A segment's audio is complete."""

    type: Literal["segment_done"] = "segment_done"
    segment: int
    duration_s: float


class FlushedEvent(_Event):
    """Everything sent before the flush has been spoken."""

    type: Literal["flushed"] = "flushed"


class ClearedEvent(_Event):
    """Buffered text dropped, audio in flight stopped: no audio of earlier text follows."""

    type: Literal["cleared"] = "cleared"
    dropped_chars: int = Field(description="Characters of text that were never spoken.")


class ErrorEvent(_Event):
    """A refused message or a failure; ``fatal``: the session ends and the socket closes."""

    type: Literal["error"] = "error"
    code: Literal[tuple(p.value for p in SessionProblem)]  # type: ignore[valid-type]
    message: str
    field: str | None = Field(None, description="The message field at fault, if one is.")
    fatal: bool


class DoneEvent(_Event):
    """Everything was spoken after close; a normal close (1000) follows."""

    type: Literal["done"] = "done"
    segments: int
    duration_s: float


ServerEvent = Annotated[
    StartedEvent
    | SegmentStartedEvent
    | TimingEvent
    | SegmentDoneEvent
    | FlushedEvent
    | ClearedEvent
    | ErrorEvent
    | DoneEvent,
    Field(discriminator="type"),
]


def error_message(problem: SessionProblem, message: str, field: str | None, *, fatal: bool) -> dict[str, Any]:
    """An ``error`` event."""
    return ErrorEvent(code=problem.value, message=message, field=field, fatal=fatal).model_dump()


def event_message(event: SessionEvent) -> dict[str, Any] | None:
    """The JSON event of a session event (None for audio, which travels as binary frames)."""
    match event:
        case SegmentStarted(index=k, text=text, continued=continued):
            out: _Event = SegmentStartedEvent(segment=k, text=text, continued=continued)
        case SegmentTiming(index=k, ttfa_ms=ttfa, queued_ms=queued, behind_ms=behind):
            out = TimingEvent(segment=k, ttfa_ms=ttfa, queued_ms=queued, behind_ms=behind)
        case SegmentDone(index=k, seconds=seconds):
            out = SegmentDoneEvent(segment=k, duration_s=seconds)
        case Flushed():
            out = FlushedEvent()
        case Cleared(dropped_chars=dropped):
            out = ClearedEvent(dropped_chars=dropped)
        case SessionWarning(problem=problem, message=message, field=field):
            return error_message(problem, message, field, fatal=False)
        case SessionFailed(problem=problem, error=error):
            return error_message(problem, error.message, error.field, fatal=True)
        case SessionEnded(segments=n, seconds=seconds):
            out = DoneEvent(segments=n, duration_s=seconds)
        case _:
            return None
    return out.model_dump()


def protocol_schema() -> dict[str, Any]:
    """The protocol as JSON Schema: ``client_message`` and ``server_event`` (``docs/stream_protocol.schema.json``)."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "VoxCPM /v1/tts/stream session messages",
        "description": (
            "JSON text frames of a /v1/tts/stream WebSocket session. Audio travels as binary frames in the "
            "session's format (pcm: s16le mono at the started event's sample_rate)."
        ),
        "client_message": TypeAdapter(ClientMessage).json_schema(),
        "server_event": TypeAdapter(ServerEvent).json_schema(),
    }


if __name__ == "__main__":  # python -m tts_server.http.stream_messages > docs/stream_protocol.schema.json
    print(orjson.dumps(protocol_schema(), option=orjson.OPT_INDENT_2).decode())
