"""The engine-core process: one ``Engine`` on one device, driven by a step loop over a pipe.

The loop (``EngineCore.run``): apply every pending control message, run one step when there is
work, queue one message per step with all its outputs for the sender thread (which pickles and
writes it while the loop runs the next step); when idle, block on the pipe. Control
messages are applied only between steps, so the engine is never touched mid-step and needs no
locks. The process is started with ``multiprocessing.get_context("spawn")`` (never fork: the
parent may hold CUDA state and threads) with :func:`run_engine_core` as its target, by
:mod:`voxcpm_engine.proc.spawn` (the parent's side).
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voxcpm_engine.config.engine_config import EngineConfig
from voxcpm_engine.proc.audio_ring import AudioRing
from voxcpm_engine.proc.messages import (
    AbortRequest,
    AddRequest,
    Call,
    ErrorKind,
    Fatal,
    MessageSender,
    Method,
    Output,
    Ready,
    Reply,
    RollingStats,
    Shutdown,
    StartFailed,
    Starting,
    StepOutputs,
    recv_message,
    send_message,
)
from voxcpm_engine.sched.request import RequestStatus
from voxcpm_engine.startup import ProgressClock, freeze_heap, warm_up, warm_up_plan
from voxcpm_engine.types import ModelInfo, RequestRejected, StartupPhase

if TYPE_CHECKING:  # the server process imports this module for spawn_engine_core: keep it light
    from voxcpm_engine.engine import Engine, StepOutput

ENGINE_IGNORED_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
IDLE_POLL_S = 0.1  # how long an idle core blocks on the pipe before looking around again
STALL_POLL_S = 0.005  # pause after a step that could run nothing, so a stuck queue does not spin a core


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def error_message(exc: BaseException) -> str:
    """The message alone (a KeyError's ``str`` would add quotes)."""
    return str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)


class EngineCore:
    """The step loop around one engine.

    Args:
        engine: A loaded engine.
        conn: The process's end of the duplex pipe to the client.
        ring: Where step audio goes instead of the pipe (None: in the step messages).
    """

    def __init__(self, engine: Engine, conn: Connection, ring: AudioRing | None = None) -> None:
        self.engine = engine
        self.conn = conn
        pack = ring.pack if ring is not None else None
        self.sender = MessageSender(conn, name="engine-core-sender", pack=pack)  # the only writer to conn
        self._pending: list[Output] = []  # admission failures, sent with the next message
        self._seq = 0
        self._stop = False
        self._queue_time = RollingStats()
        self._step_time = RollingStats()
        self._bytes = RollingStats()
        self._encodes: deque[Call] = deque()  # prompt encodes waiting for their turn (see _run_encodes)
        self._handlers: dict[Method, Callable[..., Any]] = {
            Method.REGISTER_VOICE: engine.register_voice,
            Method.UNREGISTER_VOICE: engine.unregister_voice,
            Method.STATS: self.stats,
            Method.ENCODE_PROMPT: self._encode_prompt,
        }

    def send_outputs(self, outputs: list[Output]) -> None:
        """Queue one step message for the sender (time stamp, queueing time and audio bytes recorded)."""
        self._seq += 1
        message = StepOutputs(self._seq, time.monotonic(), outputs)
        t0 = time.perf_counter()
        self.sender.send(message)
        self._queue_time.add(time.perf_counter() - t0)
        self._bytes.add(sum(o.audio.nbytes for o in outputs if o.audio is not None))

    def close(self) -> None:
        """Write every queued message and stop the sender (raises its write error, if any)."""
        self.sender.close()

    # --- control messages ----------------------------------------------------------------

    def drain(self, timeout: float) -> None:
        """Apply every control message already in the pipe, waiting up to ``timeout`` for the first.

        Then run the prompt encodes whose turn it is (:meth:`_run_encodes`).
        """
        if self._encodes:
            timeout = 0.0  # waiting encodes are work to do now, not a reason to sleep on the pipe
        while not self._stop and self.conn.poll(timeout):
            timeout = 0.0
            try:
                message = recv_message(self.conn)
            except EOFError:  # the client is gone: nobody left to stream to
                self._stop = True
                return
            self.handle(message)
        self._run_encodes()

    def _run_encodes(self) -> None:
        """Run waiting ``encode_prompt`` calls: all of them while idle, one per pass of the loop (one
        step) while requests run.

        A prompt encode is a VAE pass over up to the server's longest prompt (~0.26 s for 30 s on
        one CPU thread with the tiny test model) that every running stream waits for; taking turns
        with the steps bounds a stream's stall to one encode however many prompts arrive at once,
        instead of their sum.
        """
        while self._encodes and not self._stop:
            self.sender.send(self.call(self._encodes.popleft()))
            if self.engine.has_unfinished():
                return

    def handle(self, message: object) -> None:
        """Apply one control message."""
        if isinstance(message, AddRequest):
            try:
                self.engine.add_request(
                    message.request_id,
                    message.text,
                    voice=message.voice,
                    params=message.params,
                    deadline_s=message.deadline_s,
                    lora=message.lora,
                )
            except Exception as exc:  # a bad request fails alone; the engine keeps serving
                invalid = isinstance(exc, ValueError | KeyError)  # the caller's fault: the message is for them
                error = error_message(exc) if invalid else _describe(exc)
                field = exc.field if isinstance(exc, RequestRejected) else None
                self._pending.append(Output(message.request_id, None, int(RequestStatus.FAILED), error, invalid, field))
        elif isinstance(message, AbortRequest):
            self.engine.abort(message.request_id)
        elif isinstance(message, Call) and message.method is Method.ENCODE_PROMPT:
            self._encodes.append(message)  # run by _run_encodes, in turn with the steps
        elif isinstance(message, Call):
            self.sender.send(self.call(message))
        elif isinstance(message, Shutdown):
            self._stop = True
        else:
            raise TypeError(f"unknown control message {type(message).__name__}")

    def call(self, call: Call) -> Reply:
        """Run a method call; its exception becomes the reply's error."""
        try:
            value = self._handlers[call.method](*call.args)
        except Exception as exc:
            return Reply(call.call_id, error=error_message(exc), error_kind=ErrorKind.of(exc))
        return Reply(call.call_id, value=value)

    def _encode_prompt(self, samples: Any, sample_rate: int, reference: bool) -> Any:
        # Decoded samples only (encode_prompt checks them): the client decodes, downmixes and
        # resamples files in the server process. A file decoded here would stall every running
        # stream for as long as its decode takes (a small FLAC can hold minutes of 8-channel 655 kHz
        # audio).
        import numpy as np  # loaded in this process anyway; the module stays light for the server

        frontend = self.engine.frontend
        if sample_rate != frontend.config.encode_sample_rate:
            raise ValueError(
                f"prompt samples must be at the encoder's {frontend.config.encode_sample_rate} Hz, got {sample_rate!r}"
            )
        if not isinstance(samples, np.ndarray):
            raise ValueError(f"prompt samples must be a numpy array, got {type(samples).__name__}")
        return frontend.encode_prompt(samples, reference=reference)

    def stats(self) -> dict[str, Any]:
        """Engine counts plus the core's own figures.

        ``core`` holds the step time and, per step message, ``queue_us`` (the loop handing it to the
        sender: the part on the step loop's critical path), ``send_us`` (the sender thread pickling
        and writing it, overlapped with the next step) and ``audio_bytes``.
        """
        return {
            **self.engine.stats(),
            "core": {
                "messages": self._seq,
                "queue_us": self._queue_time.summary(1e6),
                "send_us": self.sender.send_time.summary(1e6),
                "step_ms": self._step_time.summary(1e3),
                "audio_bytes": self._bytes.summary(),
            },
        }

    # --- the loop --------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until shutdown or until the client goes away."""
        engine = self.engine
        while not self._stop:
            self.drain(0.0 if engine.has_unfinished() else IDLE_POLL_S)
            if self._stop:
                break
            outputs: list[Output] = self._pending
            self._pending = []
            if engine.has_unfinished():
                steps = engine.steps
                t0 = time.perf_counter()
                produced = engine.step()
                if engine.steps != steps:
                    self._step_time.add(time.perf_counter() - t0)
                outputs.extend(_output(o) for o in produced)
                if not produced and engine.steps == steps:
                    time.sleep(STALL_POLL_S)
            if outputs:
                self.send_outputs(outputs)
        self.shutdown()

    def shutdown(self) -> None:
        """Cancel what is left and send its final outputs (best effort: the client may be gone)."""
        for request_id in list(self.engine.requests):
            self.engine.abort(request_id)
        outputs = self._pending + ([_output(o) for o in self.engine.step()] if self.engine.has_unfinished() else [])
        self._pending = []
        if outputs:
            try:
                self.send_outputs(outputs)
            except OSError:
                pass

    def fail_all(self, reason: str) -> None:
        """After a fatal error: send FAILED with ``reason`` for every in-flight request (the process then exits)."""
        failed = self._pending + [Output(rid, None, int(RequestStatus.FAILED), reason) for rid in self.engine.requests]
        self._pending = []
        if failed:
            self.send_outputs(failed)


def _output(out: StepOutput) -> Output:
    times = out.times.as_tuple() if out.times is not None else None
    return Output(out.request_id, out.audio, int(out.status), out.error, times=times, latents=out.latents)


def model_info(engine: Engine, device: str, checkpoint_dir: str) -> ModelInfo:
    """What the READY message says about the model."""
    cfg = engine.model_config
    return ModelInfo(
        architecture=cfg.architecture,
        version=cfg.version,
        dtype=str(next(engine.runner.model.parameters()).dtype).removeprefix("torch."),
        device=device,
        sample_rate=engine.sample_rate,
        samples_per_patch=cfg.samples_per_patch,
        patch_size=cfg.patch_size,
        latent_dim=cfg.feat_dim,
        encode_sample_rate=cfg.encode_sample_rate,
        max_model_len=engine.config.max_model_len,
        max_num_seqs=engine.config.max_num_seqs,
        max_loras=engine.config.max_loras,
        kv_blocks=engine.blocks.num_blocks,
        kernel_cache_dir=_kernel_cache_dir(),
        checkpoint=checkpoint_dir,
    )


def _kernel_cache_dir() -> str | None:
    """Where this process's Triton keeps compiled kernels (``None`` without Triton)."""
    try:
        from triton import knobs
    except ImportError:
        return None
    return str(knobs.cache.dir)


def run_engine_core(
    conn: Connection,
    checkpoint_dir: str,
    engine_config: EngineConfig | None = None,
    device: str = "cpu",
    dtype: str | None = None,
    num_threads: int | None = None,
) -> None:
    """Entry point of the engine-core process: load, say READY, serve; exit non-zero on failure.

    Args:
        conn: The child's end of a duplex ``multiprocessing.Pipe``.
        checkpoint_dir: Checkpoint directory in the official layout.
        engine_config: Engine limits (default ``EngineConfig()``).
        device: Torch device of the engine.
        dtype: Override of the checkpoint's model dtype (e.g. ``"float32"``).
        num_threads: ``torch.set_num_threads`` for this process (None: torch's default).
    """
    import torch

    from voxcpm_engine.engine import Engine
    from voxcpm_engine.io.checkpoint import load_checkpoint

    # Signals are the server's: Ctrl-C, ``kill -TERM -PGID`` and systemd's KillMode=control-group
    # reach this process too, and must not end its streams before the server's drain is over. It
    # stops when the client says so (Shutdown) or goes away (EOF on the pipe, e.g. after a SIGKILL).
    for signum in ENGINE_IGNORED_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, ENGINE_IGNORED_SIGNALS)  # blocked by spawn_engine_core
    try:
        if engine_config is not None and engine_config.kernel_cache_dir:
            # Read by Triton when it compiles or looks up a kernel: before the first one.
            os.environ["TRITON_CACHE_DIR"] = str(Path(engine_config.kernel_cache_dir).expanduser().resolve())
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        if torch.device(device).type == "cuda" and torch.device(device).index is not None:
            torch.cuda.set_device(device)  # Triton launches and bare allocations use the current device
        progress = ProgressClock(lambda p: send_message(conn, Starting(p)))
        progress(StartupPhase.LOADING)
        engine = Engine(load_checkpoint(checkpoint_dir, device=device, dtype=dtype), engine_config, progress=progress)
        if engine.config.warm_up or (engine.config.warm_up is None and engine.runner.model.device.type == "cuda"):
            progress(StartupPhase.WARM_UP, 0, len(warm_up_plan(engine)))
            warm_up(engine, progress.phase(StartupPhase.WARM_UP))
        freeze_heap()  # start-up's objects out of every later collection: no full GC on a request's path
        info = model_info(engine, device, checkpoint_dir)
        ring = _audio_ring(engine)
        ready = Ready(os.getpid(), info, ring.spec if ring is not None else None)
    except BaseException as exc:  # whatever went wrong, the client must hear why, not just see an exit code
        try:
            send_message(conn, StartFailed(_describe(exc)))
        finally:
            conn.close()
        sys.exit(1)
    try:
        send_message(conn, ready)
        code = serve(EngineCore(engine, conn, ring))
    finally:
        if ring is not None:
            ring.remove()
    conn.close()
    sys.exit(code)


def _audio_ring(engine: Engine) -> AudioRing | None:
    """The shared-memory ring for this engine's step audio, or None (configured off, or no ``/dev/shm``)."""
    slots = engine.config.audio_ring_slots
    if not slots:
        return None
    try:
        return AudioRing.create(slots, engine.config.max_num_seqs * engine.model_config.samples_per_patch)
    except OSError as exc:  # e.g. a container with a tiny /dev/shm: the pipe carries the audio
        print(f"engine core: no shared-memory audio ring ({exc}); audio goes through the pipe", file=sys.stderr)
        return None


def serve(core: EngineCore) -> int:
    """Run the loop; on any exception fail every in-flight request, send :class:`Fatal` and return 1.

    Returns:
        The process's exit code: 0 after a shutdown or when the client went away, 1 after a failure.
    """
    try:
        core.run()
    except BaseException as exc:
        reason = f"engine core failed: {_describe(exc)}"
        print(traceback.format_exc(), file=sys.stderr, flush=True)
        # Best effort: the pipe may be what broke; the traceback above and the exit code still tell.
        try:
            core.fail_all(reason)
            core.sender.send(Fatal(reason, traceback.format_exc()))
        except Exception:
            pass
        try:
            core.close()
        except Exception:
            pass
        return 1
    try:
        core.close()
    except OSError:  # the client left before the last outputs were written: nobody to tell
        pass
    return 0
