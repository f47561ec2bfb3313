"""Messages between the engine client (server process) and the engine-core process, and IPC timing.

Every message is a small frozen dataclass, pickled with the plain pickler (not multiprocessing's
``ForkingPickler``: once torch is imported that one ships tensors through shared-memory file
descriptors, which ``send_bytes`` cannot carry). Audio travels as float32 numpy arrays.

Time stamps use ``time.monotonic()``: on Linux (and macOS) it reads a system-wide clock
(``CLOCK_MONOTONIC``), so a stamp taken in the engine process can be compared with one taken in the
server process on the same host. ``perf_counter`` carries no such promise.
"""

from __future__ import annotations

import enum
import pickle
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from voxcpm_engine.types import GenerationParams, ModelInfo, RequestField, StartupProgress, Voice


def dumps(message: object) -> bytes:
    """Serialize one message (protocol 5: numpy audio is copied once, in band).

    Out-of-band buffers (audio written straight from the engine's array, one frame per chunk)
    measured no faster on the CPU box (~0.25 ms per 30 KB message either way, noise ±30%), so the
    simpler one-frame form stays.
    """
    return pickle.dumps(message, protocol=5)


def loads(data: bytes) -> Any:
    """Inverse of :func:`dumps`."""
    return pickle.loads(data)


def send_message(conn: Connection, message: object) -> None:
    """Send one message as one frame."""
    conn.send_bytes(dumps(message))


def recv_message(conn: Connection) -> Any:
    """Receive one message (blocks; ``EOFError`` when the peer is gone)."""
    return loads(conn.recv_bytes())


class MessageSender:
    """Sends one side's messages from a background thread, in the order they were queued.

    The engine core's step messages carry every row's audio (3.5-3.8 MB at batch 128 on the GPU):
    pickling and writing one took the step loop ~4 ms, in series with the next step. Here the loop
    only queues the message; the thread serializes and writes it (the write releases the GIL)
    while the loop runs the next step. Every message of the connection goes through the one
    thread, so a call's reply never overtakes (or interleaves with) a step message.

    At most ``max_pending`` messages wait: past that, :meth:`send` blocks, so a client that stops
    reading still holds the loop back instead of letting audio pile up in memory.

    Args:
        conn: The connection to write to (only this sender may write to it).
        max_pending: Messages queued and not yet written before :meth:`send` blocks.
        name: The thread's name.
        pack: Applied to each message on the thread before it is written (the audio ring's).
    """

    def __init__(
        self,
        conn: Connection,
        max_pending: int = 2,
        name: str = "message-sender",
        pack: Callable[[object], object] | None = None,
    ) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.conn = conn
        self._pack = pack
        self.send_time = RollingStats()  # seconds to serialize and write one message (sender thread)
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def send(self, message: object) -> None:
        """Queue a message (blocks while ``max_pending`` wait).

        Raises:
            RuntimeError: The sender was closed.
            Exception: The error of an earlier message, raised again (``BrokenPipeError`` when the
                reader is gone; whatever pickling raised for a value it cannot serialize): once one
                message failed, neither this one nor any later one is sent.
        """
        if self._closed:
            raise RuntimeError("send() on a closed MessageSender")
        self._raise_error()
        self._queue.put(message)

    def close(self) -> None:
        """Write everything queued, then stop the thread; raises the first write error, if any."""
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
            self._thread.join()
        self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while (message := self._queue.get()) is not _STOP:
            if self._error is not None:
                continue  # the pipe is broken: drain, so a blocked send() returns and sees the error
            t0 = time.perf_counter()
            try:
                send_message(self.conn, message if self._pack is None else self._pack(message))
            except BaseException as exc:  # handed to the loop's thread by the next send()/close()
                self._error = exc
                continue
            self.send_time.add(time.perf_counter() - t0)


_STOP = object()  # ends the sender thread, after every message queued before it


# --- client → core ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AddRequest:
    """Queue a request (``Engine.add_request``); a rejection comes back as a FAILED output."""

    request_id: str
    text: str
    voice: Voice | None = None
    params: GenerationParams | None = None
    deadline_s: float | None = None
    lora: str | None = None


@dataclass(frozen=True, slots=True)
class AbortRequest:
    """Cancel a request; its CANCELLED output comes with the next step (nothing if it already ended)."""

    request_id: str


class Method(enum.Enum):
    """What a :class:`Call` asks the engine process to do (its ``args``)."""

    REGISTER_VOICE = "register_voice"  # name, LoRA directory
    UNREGISTER_VOICE = "unregister_voice"  # name
    STATS = "stats"  # (none)
    ENCODE_PROMPT = "encode_prompt"  # decoded mono float32 samples, their rate, reference (never a file's bytes)


class ErrorKind(enum.Enum):
    """How the client re-raises a failed call: the built-in type the in-process ``Engine`` raised."""

    VALUE = "ValueError"
    KEY = "KeyError"
    OTHER = "Error"  # anything else: the engine's fault, raised as an EngineError

    @classmethod
    def of(cls, exc: BaseException) -> ErrorKind:
        """The kind of ``exc``."""
        return cls.KEY if isinstance(exc, KeyError) else cls.VALUE if isinstance(exc, ValueError) else cls.OTHER


@dataclass(frozen=True, slots=True)
class Call:
    """A call answered by :class:`Reply` with the same ``call_id``.

    Attributes:
        call_id: Chosen by the client, unique among its open calls.
        method: What to do.
        args: Positional arguments of the method (see :class:`Method`).
    """

    call_id: int
    method: Method
    args: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class Shutdown:
    """Cancel everything in flight, send the final outputs, exit 0."""


# --- core → client ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RingSpec:
    """A shared-memory audio ring (:mod:`voxcpm_engine.proc.audio_ring`) as the client finds it.

    Attributes:
        path: The file under ``/dev/shm`` (the client maps it, then removes the name).
        slots: Steps of audio it holds.
        slot_samples: Float32 samples per slot (the batch cap times a patch's samples).
    """

    path: str
    slots: int
    slot_samples: int


@dataclass(frozen=True, slots=True)
class RingSpan:
    """Where one step message's audio is in the ring: its ring sequence number (slot ``seq % slots``)
    and each output's sample count, in order (0: that output has no audio)."""

    seq: int
    lengths: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Ready:
    """The engine is loaded and serving.

    Attributes:
        pid: The engine process.
        info: What it serves.
        audio_ring: Where the step audio will be (None: in the step messages themselves).
    """

    pid: int
    info: ModelInfo
    audio_ring: RingSpec | None = None


@dataclass(frozen=True, slots=True)
class Starting:
    """Start-up progress, sent any number of times before :class:`Ready` (or :class:`StartFailed`)."""

    progress: StartupProgress


@dataclass(frozen=True, slots=True)
class StartFailed:
    """Loading failed; the process exits non-zero after sending this."""

    message: str


@dataclass(frozen=True, slots=True)
class Output:
    """One request's output of one step (see ``voxcpm_engine.engine.StepOutput``).

    Attributes:
        request_id: The request.
        audio: Float32 chunk, or None (a request that ended without a new chunk).
        status: ``RequestStatus`` value after the step (a plain int keeps the pickle small).
        error: Why a FAILED request failed.
        invalid: The request was rejected at admission as invalid (``ValueError``/``KeyError``).
        field: For a :class:`~voxcpm_engine.types.RequestRejected`, the part of the request at fault.
        times: On a request's first audio only: ``FirstAudioTimes.as_tuple()`` (added, queued,
            scheduled, first patch, first audio; ``time.monotonic()`` of the engine process).
        latents: On a finished request's last output, when it asked: its generated patches
            ``[A, P, D]`` float32.
    """

    request_id: str
    audio: np.ndarray | None
    status: int
    error: str | None = None
    invalid: bool = False
    field: RequestField | None = None
    times: tuple[float, ...] | None = None
    latents: np.ndarray | None = None


@dataclass(frozen=True, slots=True)
class StepOutputs:
    """Every output of one engine step (plus admission failures since the previous one).

    Attributes:
        seq: Message counter of the core.
        sent_at: ``time.monotonic()`` in the core just before this message was serialized.
        outputs: One entry per request that produced something.
        ring: Where the outputs' audio is, when it travels in shared memory (their ``audio`` is
            None here until the client's reader puts it back).
    """

    seq: int
    sent_at: float
    outputs: list[Output] = field(default_factory=list)
    ring: RingSpan | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """Answer to a :class:`Call`: ``value`` on success, else ``error`` and its ``error_kind``."""

    call_id: int
    value: Any = None
    error: str | None = None
    error_kind: ErrorKind | None = None


@dataclass(frozen=True, slots=True)
class Fatal:
    """The step loop died; the core has failed every in-flight request and exits non-zero."""

    message: str
    traceback: str


# --- timing ------------------------------------------------------------------------------------


class RollingStats:
    """Mean and percentiles over the newest ``window`` samples, plus lifetime count and mean.

    Args:
        window: Samples kept for percentiles (a bounded deque: constant memory in a long-lived server).
    """

    def __init__(self, window: int = 4096) -> None:
        self._recent: deque[float] = deque(maxlen=window)
        self.count = 0
        self.total = 0.0

    def add(self, value: float) -> None:
        """Record one sample."""
        self._recent.append(value)
        self.count += 1
        self.total += value

    def summary(self, scale: float = 1.0) -> dict[str, float | int]:
        """``count``, lifetime ``mean`` and ``p50``/``p99``/``max`` of the window, each times ``scale``."""
        snapshot = list(self._recent)  # one C-level copy: another thread may be appending
        if not snapshot:
            return {"count": 0}
        recent = np.asarray(snapshot, dtype=np.float64) * scale
        p50, p99 = np.percentile(recent, [50, 99])
        return {
            "count": self.count,
            "mean": self.total / self.count * scale,
            "p50": float(p50),
            "p99": float(p99),
            "max": float(recent.max()),
        }


class ClientIpcStats:
    """The client's per-step-message figures (see ``AsyncEngine.stats``)."""

    def __init__(self) -> None:
        self.latency = RollingStats()  # engine about to send -> outputs in the request queues
        self.handoff = RollingStats()  # reader thread has the message -> dispatched on the event loop
        self.receive = RollingStats()  # reader thread reading and unpickling (thread-written)
        self.outputs = RollingStats()  # outputs per message

    def summary(self, core: dict[str, Any]) -> dict[str, Any]:
        """Client figures in µs, merged with the core's ``queue_us``, ``send_us`` and ``audio_bytes``."""
        return {
            "latency_us": self.latency.summary(1e6),
            "handoff_us": self.handoff.summary(1e6),
            "queue_us": core.get("queue_us", {"count": 0}),
            "send_us": core.get("send_us", {"count": 0}),
            "receive_us": self.receive.summary(1e6),
            "audio_bytes": core.get("audio_bytes", {"count": 0}),
            "outputs_per_message": self.outputs.summary(),
        }
