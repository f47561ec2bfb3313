"""``AsyncEngine``: the asyncio face of one engine-core process, for the HTTP server.

The engine runs in a spawned process (``voxcpm_engine.proc.core``); this side never runs model code. Two
daemon threads keep the event loop free of blocking pipe I/O (:mod:`voxcpm_engine.proc.pipe_threads`): a reader
that hands each message to the loop, and a writer that sends what the loop queued. On the loop,
outputs are routed to one ``asyncio.Queue`` per request.

Process death (crash, SIGKILL, OOM killer) is seen by the reader as the sentinel or EOF firing,
at once; every open stream and call then raises :class:`EngineDeadError`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import numpy as np

from voxcpm_engine.config.engine_config import EngineConfig
from voxcpm_engine.io.prompt_audio import AudioLimits, check_samples, load_audio
from voxcpm_engine.proc.engine_client import EngineClient
from voxcpm_engine.proc.errors import EngineDeadError, EngineError, EngineStartError
from voxcpm_engine.proc.messages import (
    AbortRequest,
    AddRequest,
    Call,
    ClientIpcStats,
    ErrorKind,
    Fatal,
    Method,
    Ready,
    Reply,
    Shutdown,
    StartFailed,
    StepOutputs,
    dumps,
)
from voxcpm_engine.proc.pipe_threads import start_pipe_threads
from voxcpm_engine.proc.spawn import reap, spawn_engine_core, wait_until_started
from voxcpm_engine.proc.stream import OutputRouter, RequestStream
from voxcpm_engine.types import GenerationParams, ModelInfo, StartupProgress, Voice

__all__ = ["AsyncEngine"]

log = logging.getLogger(__name__)

_REPLY_ERRORS: dict[ErrorKind | None, type[Exception]] = {ErrorKind.VALUE: ValueError, ErrorKind.KEY: KeyError}


class AsyncEngine(EngineClient):
    """One engine-core process on one device, driven from an asyncio event loop.

    Args:
        checkpoint_dir: Checkpoint directory in the official layout.
        engine_config: Engine limits (default ``EngineConfig()``).
        device: Torch device of the engine process (``"cpu"``, ``"cuda:1"``, ...).
        dtype: Override of the checkpoint's model dtype.
        num_threads: ``torch.set_num_threads`` in the engine process (None: torch's default).
        start_timeout_s: Longest wait for READY (loading a full-size checkpoint takes a while).
    """

    def __init__(
        self,
        checkpoint_dir: str | Path,
        engine_config: EngineConfig | None = None,
        device: str = "cpu",
        *,
        dtype: str | None = None,
        num_threads: int | None = None,
        start_timeout_s: float = 600.0,
    ) -> None:
        self.checkpoint_dir = str(checkpoint_dir)
        self.engine_config = engine_config or EngineConfig()
        self.device = device
        self.dtype = dtype
        self.num_threads = num_threads
        self.start_timeout_s = start_timeout_s
        self.ready: Ready | None = None
        self.startup: StartupProgress | None = None  # the engine process's last start-up report
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._alive = False
        self._exited: asyncio.Event | None = None
        self._stopping = False
        self._death: str | None = None
        self._router = OutputRouter()
        self._calls: dict[int, asyncio.Future[Reply]] = {}
        self._call_ids = itertools.count()
        self._last_core: dict[str, Any] = {}
        self._ipc = ClientIpcStats()

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Spawn the engine process and wait until its model is loaded.

        Raises:
            EngineStartError: Loading failed (with the engine's message), the process died, or no
                READY within ``start_timeout_s``.
        """
        if self._process is not None:
            raise RuntimeError("AsyncEngine.start() called twice")
        self._loop = asyncio.get_running_loop()
        self._exited = asyncio.Event()
        self._process, self._conn = spawn_engine_core(
            self.checkpoint_dir, self.engine_config, self.device, self.dtype, self.num_threads
        )
        try:
            first = await asyncio.to_thread(
                wait_until_started, self._process, self._conn, self.start_timeout_s, self._started_some
            )
        except BaseException:  # e.g. the server is cancelled during start-up: leave no orphan behind
            self._process.kill()
            self._exited.set()
            raise
        if not isinstance(first, Ready):
            self._exited.set()
            await asyncio.to_thread(reap, self._process, 5.0)
            self._conn.close()
            where = f"engine on {self.device} ({self.checkpoint_dir})"
            if isinstance(first, StartFailed):
                raise EngineStartError(f"{where} failed to load: {first.message}")
            raise EngineStartError(f"{where} failed to start: {first}")
        self.ready = first
        try:
            self._threads = start_pipe_threads(self._conn, self._process, self._loop, self._outbox,
                dispatch=self._dispatch, on_exit=self._on_exit, receive=self._ipc.receive, label=self.device,
                ring=first.audio_ring,
            )  # fmt: skip
        except OSError as exc:  # the engine's audio ring cannot be mapped here
            self._exited.set()
            self._conn.close()  # EOF: the engine process exits
            await asyncio.to_thread(reap, self._process, 5.0)
            raise EngineStartError(f"engine on {self.device}: its audio ring: {exc}") from exc
        self._alive = True

    def _started_some(self, progress: StartupProgress) -> None:
        # Called on start()'s worker thread; a plain attribute swap, read by the event loop.
        previous, self.startup = self.startup, progress
        if previous is None or previous.phase is not progress.phase:
            log.info("engine %s: %s", self.device, progress.describe())

    def startup_progress(self) -> list[tuple[str, StartupProgress]]:
        """``(device, last start-up report)``; empty before the first report (and for an engine started elsewhere)."""
        return [(self.device, self.startup)] if self.startup is not None else []

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Shut the engine down: open requests end as cancelled; terminate/kill if it does not exit in time."""
        if self._process is None or self._exited is None:
            return
        self._stopping = True
        if self._alive:
            self._outbox.put(dumps(Shutdown()))
            try:
                await asyncio.wait_for(self._exited.wait(), timeout_s)
            except TimeoutError:
                log.warning("engine %s did not stop within %.0f s; terminating it", self.pid, timeout_s)
        await asyncio.to_thread(reap, self._process, 0.0 if not self._exited.is_set() else 5.0)
        for thread in self._threads:
            await asyncio.to_thread(thread.join, 2.0)
        if self._conn is not None:
            self._conn.close()

    # --- properties ---------------------------------------------------------------------------

    @property
    def engines(self) -> list[AsyncEngine]:
        """Itself: one engine process."""
        return [self]

    @property
    def is_alive(self) -> bool:
        """Whether the engine process is serving."""
        return self._alive

    @property
    def pid(self) -> int | None:
        """The engine process's id."""
        return self._process.pid if self._process is not None else None

    @property
    def model_info(self) -> ModelInfo:
        """What the engine serves, from its READY message (known after :meth:`start`)."""
        if self.ready is None:
            raise RuntimeError("the engine has not started")
        return self.ready.info

    @property
    def sample_rate(self) -> int:
        """Rate of the audio chunks (known after :meth:`start`)."""
        return self.model_info.sample_rate

    @property
    def samples_per_patch(self) -> int:
        """Samples in each chunk (known after :meth:`start`)."""
        return self.model_info.samples_per_patch

    @property
    def num_unfinished(self) -> int:
        """Requests sent to this engine whose final output has not arrived (the load measure for routing)."""
        return self._router.unfinished

    def has_request(self, request_id: str) -> bool:
        """Whether a stream of this id is open here."""
        return self._router.has(request_id)

    # --- requests -----------------------------------------------------------------------------

    def generate(
        self,
        request_id: str,
        text: str,
        *,
        voice: Voice | None = None,
        params: GenerationParams | None = None,
        lora: str | None = None,
        deadline_s: float | None = None,
    ) -> RequestStream:
        """Submit a request now; iterate the returned stream for its float32 chunks.

        The stream ends normally when the request finishes (stop head or length); it raises
        ``RequestCancelled`` (abort, deadline, shutdown), ``RequestFailed`` (``InvalidRequest`` for a
        rejected request; the engine's message) or :class:`EngineDeadError`. Leaving it early
        (``break``, ``aclose()``, task cancellation, garbage collection) aborts the request.

        Raises:
            EngineDeadError: The engine is not running.
            ValueError: A stream of this id is still open (a closed one may still be ending: fine).
        """
        if self.has_request(request_id):
            raise ValueError(f"request_id {request_id!r} is already in flight")
        self._send(AddRequest(request_id, text, voice, params, deadline_s, lora))
        return RequestStream(request_id, self._router.open(request_id), self)

    async def abort(self, request_id: str) -> bool:
        """Cancel a request; its stream raises ``RequestCancelled``. False if no such open stream."""
        if not self._alive or not self.has_request(request_id):
            return False
        self._send(AbortRequest(request_id))
        return True

    def _abort_closed(self, request_id: str) -> None:
        """A stream was left early (maybe from ``__del__``, maybe in another thread): tell the engine."""
        if self._alive:
            try:
                self._outbox.put(dumps(AbortRequest(request_id)))
            except Exception:  # interpreter shutdown; the engine goes away with us
                pass

    # --- calls --------------------------------------------------------------------------------

    async def _call(self, method: Method, *args: Any, timeout_s: float = 30.0) -> Any:
        if not self._alive or self._loop is None:
            raise EngineDeadError(self._death or f"engine on {self.device} is not running")
        call_id = next(self._call_ids)
        future: asyncio.Future[Reply] = self._loop.create_future()
        self._calls[call_id] = future
        try:
            self._send(Call(call_id, method, args))
            reply = await asyncio.wait_for(future, timeout_s)
        finally:
            self._calls.pop(call_id, None)
        if reply.error is not None:
            raise _REPLY_ERRORS.get(reply.error_kind, EngineError)(reply.error)
        return reply.value

    async def register_voice(self, name: str, path: str | Path) -> int:
        """Register (or replace) a LoRA voice from an adapter directory; returns its version.

        Raises:
            ValueError: No LoRA slots, or an invalid adapter (the engine's message).
            EngineDeadError: The engine is not running.
        """
        return await self._call(Method.REGISTER_VOICE, name, str(path))

    async def unregister_voice(self, name: str) -> None:
        """Remove a LoRA voice (running requests finish with it; waiting ones fail).

        Raises:
            KeyError: No such voice.
        """
        await self._call(Method.UNREGISTER_VOICE, name)

    @property
    def encode_sample_rate(self) -> int:
        """Rate of the samples :meth:`encode_prompt` sends (the model's, from READY; known after :meth:`start`).

        The engine checks the rate each call carries against its model, so a mismatch fails loudly
        instead of encoding audio at the wrong speed.
        """
        return self.model_info.encode_sample_rate

    async def encode_prompt(
        self,
        audio: np.ndarray | bytes,
        *,
        reference: bool = False,
        limits: AudioLimits | None = None,
        timeout_s: float = 60.0,
    ) -> Any:
        """Encode prompt (or VoxCPM2 reference) audio into latent patches ``[T, P, 64]`` (fp32, CPU).

        ``audio`` is decoded samples (mono float32 at :attr:`encode_sample_rate`, as
        :func:`voxcpm_engine.io.prompt_audio.load_audio` returns them) or the bytes of a file, which are decoded,
        downmixed and resampled here, in a worker thread of this process, under ``limits`` (None:
        none, for trusted audio). The engine process only runs the VAE encoder, between two steps:
        running streams wait for that encode, never for a decode. The latents equal
        ``Synthesizer.encode_prompt`` of the same file in process, bit for bit.

        Raises:
            AudioLimitError: ``audio`` is a file over ``limits``.
            ValueError: Undecodable or empty audio, samples that are not 1-D finite float32, or
                ``reference`` on a VoxCPM1 model.
            EngineDeadError: The engine is not running.
        """
        if isinstance(audio, np.ndarray):
            samples = check_samples(audio)
        else:
            samples = await asyncio.to_thread(load_audio, audio, self.encode_sample_rate, limits=limits)
        return await self._call(Method.ENCODE_PROMPT, samples, self.encode_sample_rate, reference, timeout_s=timeout_s)

    async def stats(self) -> dict[str, Any]:
        """Engine counts (when alive) plus ``alive``, ``pid``, ``device``, ``unfinished`` and ``ipc``.

        ``ipc`` holds per-step-message figures, each with count, mean, p50, p99, max:
        ``latency_us`` (engine about to send → outputs in the request queues here: everything the
        pipe adds to a chunk's delay), which covers ``queue_us`` (the engine loop handing the
        message to its sender thread: the only part on the engine's critical path), ``send_us``
        (the sender thread pickling and writing it, overlapped with the next step), ``receive_us``
        (reader thread reading and unpickling it) and ``handoff_us`` (read → dispatched on the event
        loop); plus ``audio_bytes`` and ``outputs_per_message``.
        """
        out: dict[str, Any] = {"alive": self._alive, "pid": self.pid, "device": self.device}
        if self._alive:
            try:
                out.update(await self._call(Method.STATS))
                self._last_core = out.pop("core")
            except EngineDeadError:
                out["alive"] = False
        core = self._last_core  # after a death: the engine's figures as last seen
        if self._death is not None:
            out["error"] = self._death
        out["unfinished"] = self._router.unfinished
        out["ipc"] = self._ipc.summary(core)
        if "step_ms" in core:
            out["step_ms"] = core["step_ms"]
        return out

    # --- plumbing -----------------------------------------------------------------------------

    def _send(self, message: object) -> None:
        if not self._alive:
            raise EngineDeadError(self._death or f"engine on {self.device} is not running")
        self._outbox.put(dumps(message))  # pickled here, so a bad argument raises to the caller

    def _dispatch(self, message: object, received: float) -> None:
        if isinstance(message, StepOutputs):
            self._router.route(message.outputs)
            now = time.monotonic()
            self._ipc.latency.add(now - message.sent_at)
            self._ipc.handoff.add(now - received)
            self._ipc.outputs.add(len(message.outputs))
        elif isinstance(message, Reply):
            future = self._calls.get(message.call_id)
            if future is not None and not future.done():
                future.set_result(message)
        elif isinstance(message, Fatal):
            self._death = f"engine on {self.device}: {message.message}"
            log.error("engine %s failed:\n%s", self.pid, message.traceback)
        else:
            log.warning("unexpected message from the engine: %r", type(message).__name__)

    def _on_exit(self) -> None:
        """The engine process is gone (or unreachable): fail everything still open, once."""
        assert self._exited is not None and self._process is not None
        if self._exited.is_set():
            return
        self._alive = False
        self._outbox.put(None)
        if self._death is None:
            how = "stopped" if self._stopping else f"died (exit code {self._process.exitcode})"
            self._death = f"engine process {self.pid} on {self.device} {how}"
        if not self._stopping:
            log.error("%s", self._death)
        self._router.fail_all(self._death)
        for future in self._calls.values():
            if not future.done():
                future.set_exception(EngineDeadError(self._death))
        self._exited.set()
