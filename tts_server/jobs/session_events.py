"""What a streaming session reports to its transport, and the errors it refuses input with.

The session (:mod:`tts_server.jobs.session`) knows nothing of WebSockets: it produces these
events in order, and the route turns each into a JSON message or an encoded binary frame.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from tts_server.errors import ApiError

__all__ = [
    "Cleared",
    "Flushed",
    "SegmentAudio",
    "SegmentDone",
    "SegmentStarted",
    "SegmentTiming",
    "SessionEnded",
    "SessionEvent",
    "SessionFailed",
    "SessionInputError",
    "SessionProblem",
    "SessionWarning",
]


class SessionProblem(enum.Enum):
    """Why a session refused input or stopped (the ``code`` of an error event)."""

    BAD_MESSAGE = "bad_message"  # not a message of the protocol, or a field out of range
    TEXT_LIMIT = "text_limit"  # more text than one session may send
    BUFFER_FULL = "buffer_full"  # more unspoken text buffered than allowed
    CLOSED = "closed"  # text after close
    SEGMENT_FAILED = "segment_failed"  # one piece of text could not be spoken; the session goes on
    IDLE_TIMEOUT = "idle_timeout"
    OVERLOADED = "overloaded"  # no inference slot in time
    SHUTDOWN = "shutdown"  # the server is stopping: its drain ended the session
    CANCELLED = "cancelled"  # POST /cancel
    ENGINE_ERROR = "engine_error"


class SessionInputError(Exception):
    """Input the session refuses; the session itself goes on.

    Attributes:
        problem: What kind of refusal.
        message: For a person, naming the field at fault.
        field: The message field at fault, if one is.
    """

    def __init__(self, problem: SessionProblem, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.problem = problem
        self.message = message
        self.field = field


@dataclass(frozen=True)
class SegmentStarted:
    """A segment was submitted to the engine.

    Attributes:
        index: Segment number in the session (0, 1, ...).
        text: What is spoken (cleaned, and normalized when asked).
        continued: Whether it continues from the previous segment's audio (same voice across the join).
    """

    index: int
    text: str
    continued: bool


@dataclass(frozen=True)
class SegmentAudio:
    """Samples of a segment (float32, mono, at the model's rate)."""

    index: int
    samples: np.ndarray


@dataclass(frozen=True)
class SegmentTiming:
    """A segment's first audio is here (its audio follows this event).

    Attributes:
        index: Segment number.
        ttfa_ms: From its text being ready (a boundary, flush, close or wait) to its first audio.
        queued_ms: Of that, the wait for an inference slot.
        behind_ms: Of that, the wait for its turn in the session: the previous segment's end (a
            segment goes on from its latents) and the text's preparation.
    """

    index: int
    ttfa_ms: float
    queued_ms: float
    behind_ms: float


@dataclass(frozen=True)
class SegmentDone:
    """A segment's audio is complete.

    Attributes:
        index: Segment number.
        seconds: Its audio duration.
    """

    index: int
    seconds: float


@dataclass(frozen=True)
class Flushed:
    """Everything sent before the flush has been spoken (its audio precedes this event)."""


@dataclass(frozen=True)
class Cleared:
    """Buffered text dropped and audio in flight stopped; no audio of earlier text follows.

    Attributes:
        dropped_chars: Characters of text that were never spoken.
    """

    dropped_chars: int


@dataclass(frozen=True)
class SessionWarning:
    """A problem the session survived (one segment failed, input refused)."""

    problem: SessionProblem
    message: str
    field: str | None = None


@dataclass(frozen=True)
class SessionFailed:
    """The session cannot go on; it ends after this event."""

    problem: SessionProblem
    error: ApiError


@dataclass(frozen=True)
class SessionEnded:
    """Everything was spoken after close; the last event of a session that ended well.

    Attributes:
        segments: Segments spoken.
        seconds: Audio seconds in all.
    """

    segments: int
    seconds: float


SessionEvent = (
    SegmentStarted
    | SegmentTiming
    | SegmentAudio
    | SegmentDone
    | Flushed
    | Cleared
    | SessionWarning
    | SessionFailed
    | SessionEnded
)
