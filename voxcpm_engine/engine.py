"""The batched engine, in process: requests in, one audio chunk per running request per step out.

``Engine`` ties the front end (text and voice preparation, shared with single-request
generation), the scheduler, the model runner and a batched streaming VAE decode together. It is
synchronous and single-threaded; the engine process of the server drives it in a loop.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.profiler import record_function

from voxcpm_engine.config.engine_config import EngineConfig
from voxcpm_engine.io.checkpoint import LoadedCheckpoint, load_checkpoint
from voxcpm_engine.lora.layers import enable_lora
from voxcpm_engine.lora.registry import AdapterRegistry
from voxcpm_engine.model.audio_vae import StreamingDecoderState
from voxcpm_engine.sched.block_manager import BlockManager
from voxcpm_engine.sched.request import FirstAudioTimes, Request, RequestStatus, SamplingParams
from voxcpm_engine.sched.scheduler import Scheduler
from voxcpm_engine.single.synthesizer import Synthesizer
from voxcpm_engine.startup import ProgressClock, capture_step_graphs
from voxcpm_engine.types import GenerationParams, RequestField, RequestRejected, StartupPhase, Voice
from voxcpm_engine.worker.host_copies import copies_done, to_host
from voxcpm_engine.worker.paged_kv import default_kv_blocks
from voxcpm_engine.worker.runner import ModelRunner, SampledBatch
from voxcpm_engine.worker.vae_stream import VaeStreams


@dataclass
class StepOutput:
    """What one step produced for one request.

    Attributes:
        request_id: The request.
        audio: Float32 samples of the newest patch (``samples_per_patch`` of them), or None when the
            request ended without a new patch (cancelled, failed).
        status: The request's state after this step.
        times: On the request's first audio only: where its time to first audio went.
        error: Why a FAILED request failed.
        latents: On a finished request's last output, when it asked (``return_latents``): every
            latent patch it generated, ``[A, P, D]`` float32.
    """

    request_id: str
    audio: np.ndarray | None
    status: RequestStatus
    times: FirstAudioTimes | None = None
    error: str | None = None
    latents: np.ndarray | None = None

    @property
    def finished(self) -> bool:
        """Whether this is the request's last output."""
        return self.status.is_finished


class Engine:
    """Continuous batching over a paged KV cache for one model on one device.

    Args:
        checkpoint: A loaded checkpoint.
        config: Engine limits.
        attention_backend: Force a kernel backend (default: best for the device).
        progress: Told each CUDA graph captured (start-up progress of the engine process).
    """

    def __init__(
        self,
        checkpoint: LoadedCheckpoint,
        config: EngineConfig | None = None,
        attention_backend: str | None = None,
        progress: ProgressClock | None = None,
    ) -> None:
        self.config = config or EngineConfig()
        self.config.validate_for(checkpoint.config)
        self.frontend = Synthesizer(checkpoint)
        self.model_config = checkpoint.config
        self.vae = checkpoint.vae
        num_blocks = self.config.num_kv_blocks or default_kv_blocks(checkpoint, self.config)
        self.blocks = BlockManager(num_blocks, self.config.block_size, self.config.enable_prefix_caching)
        fused = self.config.fused_kernels
        if fused or (fused is None and checkpoint.device.type == "cuda"):
            checkpoint.model.use_fused_kernels()
            checkpoint.vae.use_fused_kernels(units=self.config.vae_unit_kernels)
        checkpoint.vae.tf32_convs = self.config.vae_tf32
        # Before VaeStreams sizes its buffers; folds bf16 weights from the fp32 ones (encodes stay fp32).
        checkpoint.vae.set_decode_dtype(getattr(torch, self.config.vae_dtype))
        self.adapters: AdapterRegistry | None = None
        if self.config.max_loras:
            slots = enable_lora(checkpoint.model, self.config.max_loras + 1, self.config.max_lora_rank)
            if checkpoint.model.feat_decoder.fused:
                slots.use_kernels()
            self.adapters = AdapterRegistry(slots, checkpoint.config)
        self.scheduler = Scheduler(self.config, self.blocks, self.adapters)
        self.runner = ModelRunner(
            checkpoint.model, num_blocks, self.config.block_size, attention_backend, self.adapters is not None
        )
        # The torch reference attention syncs with the host (it loops over sequences): not capturable.
        graphs = checkpoint.device.type == "cuda" and not self.config.enforce_eager
        if graphs and attention_backend != "torch":
            capture_step_graphs(self.runner, self.config, progress)
        self.requests: dict[str, Request] = {}
        async_scheduling = self.config.async_scheduling
        self.async_scheduling = self.runner.graphs is not None if async_scheduling is None else async_scheduling
        self._inflight: SampledBatch | None = None  # a step launched by the previous call (async scheduling)
        # Causal VAE decoder state: one row per request in a long-lived slot state, so a step gathers
        # and writes back only its rows. A request's state waits in _warm (its prompt-context warm-up,
        # or None for a stream that starts from zeros) until its first chunk takes a slot.
        self._vae_streams = VaeStreams(
            self.vae,
            self.model_config.patch_size,
            self.config.max_num_seqs,
            capture=graphs,
            side_stream=self.config.vae_overlap,
            on_capture=progress.phase(StartupPhase.VAE_GRAPHS) if progress else None,
        )
        self._warm: dict[str, StreamingDecoderState | None] = {}
        self._deadlines: dict[str, float] = {}
        self._ended: list[StepOutput] = []
        self._arrivals = itertools.count()
        self.steps = 0
        self._step_times: deque[float] = deque(maxlen=64)  # recent step ends, for steps per second

    @classmethod
    def from_dir(
        cls, path: str | Path, config: EngineConfig | None = None, device: str | torch.device | None = None
    ) -> Engine:
        """Load a checkpoint directory (default device: CUDA if available, else CPU)."""
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(load_checkpoint(path, device=device), config)

    @property
    def sample_rate(self) -> int:
        """Rate of the audio chunks."""
        return self.model_config.sample_rate

    def add_request(
        self,
        request_id: str,
        text: str,
        voice: Voice | None = None,
        params: GenerationParams | None = None,
        deadline_s: float | None = None,
        lora: str | None = None,
    ) -> None:
        """Queue a request.

        Args:
            request_id: Unique among unfinished requests.
            text: Text to speak.
            voice: Prompt / reference material (see :meth:`Synthesizer.make_voice`).
            params: Sampling settings and seed.
            deadline_s: Cancel the request if it has not finished this many seconds from now.
            lora: Name of a registered LoRA voice.

        Raises:
            RequestRejected: Its ``field`` names what is wrong: the text (empty, or a request that
                can never fit the limits), the voice (unknown LoRA voice, bad prompt material) or a
                setting.
            ValueError: Duplicate id (the caller's own bookkeeping).
        """
        times = FirstAudioTimes(added=time.monotonic())
        if request_id in self.requests:
            raise ValueError(f"request_id {request_id!r} is already in flight")
        if lora is not None and (self.adapters is None or lora not in self.adapters.names()):
            raise RequestRejected(RequestField.VOICE, f"unknown voice {lora!r}")
        voice, params = voice or Voice(), params or GenerationParams()
        prefill, max_steps = self.frontend.prepare(text, voice, params)
        need = len(prefill) + max_steps
        if need > self.config.max_model_len:
            raise RequestRejected(
                RequestField.TEXT,
                f"request needs {len(prefill)} prompt + {max_steps} generated positions, "
                f"more than max_model_len {self.config.max_model_len}",
            )
        if self.config.blocks_for(need) > self.blocks.num_blocks:
            raise RequestRejected(
                RequestField.TEXT, f"request needs more KV blocks than the engine has ({self.blocks.num_blocks})"
            )
        gen = torch.Generator(device=self.runner.model.device)
        gen.manual_seed(secrets.randbits(63) if params.seed is None else params.seed)
        sampling = SamplingParams(
            cfg_value=params.cfg_value,
            inference_timesteps=params.inference_timesteps,
            min_steps=params.min_steps,
            max_steps=max_steps,
            temperature=params.temperature,
            return_latents=params.return_latents,
        )
        request = Request(request_id, prefill, sampling, gen, arrival=next(self._arrivals), lora_name=lora, times=times)
        state = None  # a fresh stream starts from a zero slot: nothing to allocate or copy per request
        if prefill.context_patches.shape[0]:
            state = self.vae.new_stream_state(1)
            self.vae.decode_stream(self._frames(prefill.context_patches[None]), state)  # warm-up, output discarded
        times.queued = time.monotonic()
        self.requests[request_id] = request
        self._warm[request_id] = state
        if deadline_s is not None:
            self._deadlines[request_id] = time.monotonic() + deadline_s
        self.scheduler.add(request)

    def abort(self, request_id: str, status: RequestStatus = RequestStatus.CANCELLED) -> bool:
        """End a request in any state; its resources are freed now, its final output comes with the next step.

        Returns:
            False when no such unfinished request exists.
        """
        request = self.requests.get(request_id)
        if request is None:
            return False
        self._end(request, status)
        self._ended.append(StepOutput(request_id, None, status))
        return True

    def has_unfinished(self) -> bool:
        """Whether any request is waiting or running (or has an undelivered final output)."""
        return bool(self.requests or self._ended)

    def _end(self, request: Request, status: RequestStatus) -> None:
        self.scheduler.finish(request, status)
        del self.requests[request.request_id]
        self._warm.pop(request.request_id, None)
        self._vae_streams.release(request.request_id)
        self._deadlines.pop(request.request_id, None)

    def _frames(self, patches: Tensor) -> Tensor:
        """``[B, N, P, D]`` patches → ``[B, D, N*P]`` VAE frames (fp32)."""
        b = patches.shape[0]
        return patches.float().reshape(b, -1, self.model_config.feat_dim).transpose(1, 2).to(self.runner.model.device)

    def step(self) -> list[StepOutput]:
        """Run one engine step and return every output it produced (at most one per request).

        With asynchronous scheduling (``EngineConfig.async_scheduling``) a step also schedules and
        launches the next decode step before it copies its own audio out, so the GPU runs that
        step while the host finishes this one and the caller handles its outputs; the next call
        then starts from the step in flight. Requests added meanwhile join the step after it.
        """
        now = time.monotonic()
        for request_id, deadline in list(self._deadlines.items()):
            if now >= deadline:
                self.abort(request_id)
        outputs, self._ended = self._ended, []
        sampled, self._inflight = self._inflight, None
        if sampled is not None:
            sampled = self._still_running(sampled)
        if sampled is None:  # nothing in flight, or only rows aborted since: schedule now
            sampled = self._launch(outputs)
        if sampled is None:
            return outputs
        with record_function("engine.vae"), self._vae_streams.on_stream(sampled.patches):
            ids = [r.request_id for r in sampled.requests]
            for request_id in ids:
                if not self._vae_streams.has(request_id):  # its first chunk: the warmed-up state takes a slot
                    self._vae_streams.admit(request_id, self._warm.pop(request_id))
            audio = to_host(self._vae_streams.decode(ids, self._frames(sampled.patches[:, None])))
            side = self._vae_streams.stream is not None  # then `copied` below does not cover the audio's copy
            audio_copied = copies_done(sampled.patches.device) if side else None
        # The VAE decode is queued right behind the sampler: the stop flags come back while it runs.
        stops = sampled.stop_list()
        patched = time.monotonic()  # the stop flags came back: this step's patches are done
        statuses = []
        latents: dict[int, Tensor] = {}  # row → host copy of a finished request's patches (asked for)
        for row_index, request in enumerate(sampled.requests):
            request.patches.append(sampled.patches[row_index])
            i = len(request.patches) - 1
            status = RequestStatus.RUNNING
            if stops[row_index] and i > request.params.min_steps:
                status = RequestStatus.FINISHED_STOPPED
            elif len(request.patches) >= request.params.max_steps:
                status = RequestStatus.FINISHED_LENGTH
            if status.is_finished:
                if request.params.return_latents:
                    latents[row_index] = to_host(torch.stack(request.patches))
                self._end(request, status)  # its slots are reused only by work queued after this step's
            statuses.append(status)
        copied = copies_done(sampled.patches.device)  # before the next step is queued behind them
        if self.async_scheduling and not self.scheduler.waiting:
            self._inflight = self._launch(outputs)
        with record_function("engine.audio_to_host"):
            for event in (audio_copied, copied):  # not the next step's work, queued behind the copies
                if event is not None:
                    event.synchronize()
            audio = audio.numpy()
        decoded = time.monotonic()
        for row_index, (request, status) in enumerate(zip(sampled.requests, statuses, strict=True)):
            times = request.times
            if times is not None and not times.first_audio:
                times.first_patch, times.first_audio = patched, decoded
            else:
                times = None
            host = latents.get(row_index)
            patches = host.numpy() if host is not None else None
            outputs.append(StepOutput(request.request_id, audio[row_index], status, times, latents=patches))
        return outputs

    def _launch(self, outputs: list[StepOutput]) -> SampledBatch | None:
        """Schedule a step and run it up to its new patches (queued on the GPU, not waited for)."""
        with record_function("engine.schedule"):
            plan = self.scheduler.schedule()
        for request, why in plan.failed:  # e.g. its voice was unregistered while it waited
            self._end(request, RequestStatus.FAILED)
            outputs.append(StepOutput(request.request_id, None, RequestStatus.FAILED, error=why))
        if not plan.rows:
            return None
        launched = time.monotonic()
        sampled = self.runner.step(plan.rows)
        self.steps += 1
        self._step_times.append(time.monotonic())
        for row in plan.rows:
            times = row.request.times
            if times is not None and not times.scheduled:
                times.scheduled = launched
            row.request.num_computed += row.count
            if row.start < row.request.prompt_len <= row.request.num_computed:  # prompt just completed
                self.blocks.commit_prompt_blocks(row.request)
        return sampled

    def _still_running(self, sampled: SampledBatch) -> SampledBatch | None:
        """The rows of a step in flight whose requests were not aborted since it was launched."""
        keep = [i for i, r in enumerate(sampled.requests) if self.requests.get(r.request_id) is r]
        if len(keep) == len(sampled):
            return sampled
        return sampled.select(keep) if keep else None

    def register_voice(self, name: str, path: str | Path) -> int:
        """Register (or replace) a named LoRA voice from an adapter directory; returns its version.

        Raises:
            ValueError: The engine has no LoRA slots (``max_loras=0``) or the adapter is invalid.
        """
        if self.adapters is None:
            raise ValueError("this engine serves no LoRA voices (EngineConfig.max_loras = 0)")
        return self.adapters.register(name, path)

    def unregister_voice(self, name: str) -> None:
        """Remove a LoRA voice; running requests finish with it, waiting ones fail.

        Raises:
            KeyError: No such voice.
        """
        if self.adapters is None:
            raise KeyError(f"adapter {name!r} is not registered")
        self.adapters.unregister(name)

    def stats(self) -> dict[str, Any]:
        """Counts for monitoring."""
        return {
            "running": len(self.scheduler.running),
            "waiting": len(self.scheduler.waiting),
            "kv_blocks_total": self.blocks.num_blocks,
            "kv_blocks_free": self.blocks.num_free,
            "steps": self.steps,
            "graph_steps": self.runner.graph_steps,
            "steps_per_s": self._steps_per_s(),
            "adapters": self.adapters.stats() if self.adapters is not None else None,
        }

    def _steps_per_s(self) -> float:
        """Rate over the recent steps; 0 when idle for more than a second or too few steps."""
        times = self._step_times
        if len(times) < 2 or time.monotonic() - times[-1] > 1.0:
            return 0.0
        return (len(times) - 1) / max(times[-1] - times[0], 1e-9)

    def check_invariants(self) -> None:
        """Assert block accounting over every unfinished request (cheap; tests call it after each step)."""
        self.blocks.check(list(self.requests.values()))
        if self.adapters is not None:
            self.adapters.check_invariants()
            held = sum(1 for r in self.requests.values() if r.lora_slot)
            refs = self.adapters.stats()["in_use"]
            assert held == refs, f"{refs} adapter references for {held} requests holding a slot"
        held = {r for r in self.requests if self._vae_streams.has(r)}
        assert not set(self._warm) & held, "a request has two VAE states"
        assert set(self._warm) | held == set(self.requests), "VAE stream state leaked or missing"
        assert self._vae_streams.num_held == len(held), "VAE slot held by a finished request"
        assert self._vae_streams.num_held + self._vae_streams.num_free == self._vae_streams.num_slots, "VAE slot leaked"

    def generate(self, requests: dict[str, tuple[str, Voice | None, GenerationParams | None]]) -> dict[str, np.ndarray]:
        """Run a set of requests to completion together; returns each one's concatenated audio."""
        chunks: dict[str, list[np.ndarray]] = {rid: [] for rid in requests}
        for rid, (text, voice, params) in requests.items():
            self.add_request(rid, text, voice, params)
        while self.has_unfinished():
            for out in self.step():
                if out.audio is not None:
                    chunks[out.request_id].append(out.audio)
        return {rid: np.concatenate(c) if c else np.zeros(0, np.float32) for rid, c in chunks.items()}
