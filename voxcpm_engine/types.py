"""The engine's vocabulary shared with its callers: request settings, voices, why a request is refused,
what an engine serves, how busy it is, and how far its start-up has got.

These cross the process boundary (the server builds them, the engine process uses them, or the
reverse) and are imported by the server's layers, so this module imports nothing of the engine and
no torch at run time (``Voice`` holds tensors the caller made; the annotation is all it needs).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "EngineLoad",
    "GenerationParams",
    "ModelInfo",
    "RequestField",
    "RequestRejected",
    "StartupPhase",
    "StartupProgress",
    "Voice",
]


class RequestField(enum.Enum):
    """The part of a request the engine refused (a caller names its own field after it)."""

    TEXT = "text"  # empty, or too long for the model with its prompt
    VOICE = "voice"  # prompt / reference material, or the LoRA voice it names
    PARAMS = "params"  # a sampling or length setting out of range


class RequestRejected(ValueError):
    """A request the engine refuses as given: the caller's fault, never the engine's.

    Attributes:
        field: Which part of the request is wrong.
    """

    def __init__(self, field: RequestField, message: str) -> None:
        super().__init__(message)
        self.field = field

    def __reduce__(self) -> tuple[type[RequestRejected], tuple[RequestField, str]]:
        return type(self), (self.field, str(self))  # pickles with its field (ValueError's own drops it)


@dataclass(frozen=True)
class GenerationParams:
    """Sampling and length settings of one request.

    Attributes:
        cfg_value: Classifier-free guidance scale (reference default 2.0).
        inference_timesteps: Euler steps of the flow sampler per patch (default 10).
        min_steps: Steps before the stop head may end the utterance (default 2).
        max_steps: Most patches to generate; ``None`` applies the reference's rule
            ``min(6 * target tokens + 10, 2000)``.
        temperature: Scale of the sampler's initial noise (1.0 = reference behaviour).
        seed: Seeds the request's own RNG; ``None`` draws a fresh seed.
        return_latents: Send the generated latent patches ``[A, P, D]`` (fp32) with the final
            output, to continue from them (a streaming session's next segment) without encoding
            the audio again.

    Raises:
        RequestRejected: (``PARAMS``) a setting out of its range.
    """

    cfg_value: float = 2.0
    inference_timesteps: int = 10
    min_steps: int = 2
    max_steps: int | None = None
    temperature: float = 1.0
    seed: int | None = None
    return_latents: bool = False

    def __post_init__(self) -> None:
        checks = [
            ("cfg_value", 0.0 <= self.cfg_value <= 20.0, "must be in [0, 20]"),
            ("inference_timesteps", 1 <= self.inference_timesteps <= 100, "must be in [1, 100]"),
            ("min_steps", 0 <= self.min_steps, "must be >= 0"),
            ("max_steps", self.max_steps is None or self.max_steps >= 1, "must be >= 1"),
            ("temperature", 0.0 <= self.temperature <= 10.0, "must be in [0, 10]"),
            ("seed", self.seed is None or 0 <= self.seed < 2**63, "must be in [0, 2**63)"),
        ]
        for name, ok, msg in checks:
            if not ok:
                raise RequestRejected(RequestField.PARAMS, f"{name} {msg}, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class Voice:
    """What a request sounds like; every field is optional (all empty = zero-shot).

    Attributes:
        prompt_text: Transcript of the continuation prompt (required with prompt audio/latents).
        prompt_latents: ``[A, P, 64]`` fp32 patches of the prompt audio (see
            :meth:`voxcpm_engine.single.synthesizer.Synthesizer.encode_prompt`).
        ref_latents: ``[R, P, 64]`` fp32 patches of a VoxCPM2 reference recording.
    """

    prompt_text: str | None = None
    prompt_latents: Tensor | None = None
    ref_latents: Tensor | None = None


@dataclass(frozen=True)
class ModelInfo:
    """What an engine process serves, as its READY message reports it (the server reads no config file).

    Attributes:
        architecture: ``voxcpm`` or ``voxcpm2``.
        version: 1 (VoxCPM-0.5B, VoxCPM1.5) or 2 (VoxCPM2).
        dtype: The LMs' dtype (``bfloat16``, ...).
        device: Where this engine runs.
        sample_rate: Rate of the audio chunks.
        samples_per_patch: Samples in each chunk (one patch).
        patch_size: Latent frames per patch ``P``.
        latent_dim: Latent channels ``D``.
        encode_sample_rate: Rate of the decoded samples a prompt encode takes.
        max_model_len: Positions one request may use (prompt + generated).
        max_num_seqs: Requests in one batch.
        max_loras: LoRA voices resident at once.
        kv_blocks: KV cache blocks.
        kernel_cache_dir: Where compiled kernels are kept (None without Triton).
        checkpoint: The checkpoint directory (a server path: not for clients).
    """

    architecture: str
    version: int
    dtype: str
    device: str
    sample_rate: int
    samples_per_patch: int
    patch_size: int
    latent_dim: int
    encode_sample_rate: int
    max_model_len: int
    max_num_seqs: int
    max_loras: int
    kv_blocks: int
    kernel_cache_dir: str | None
    checkpoint: str

    def public(self, devices: Sequence[str]) -> dict[str, Any]:
        """The description clients get (``/info``, ``/status``): no server paths, every device."""
        out = dataclasses.asdict(self)
        del out["checkpoint"], out["encode_sample_rate"]
        return {**out, "devices": list(devices)}


@dataclass(frozen=True)
class EngineLoad:
    """How busy an engine (or a group: the sums) is: what ``/status`` and ``/metrics`` report.

    Attributes:
        alive: Whether it serves (a group: any engine).
        running: Requests in the running batch.
        waiting: Requests queued inside the engine.
        steps: Steps run since start.
        kv_blocks_free: KV cache blocks free.
        kv_blocks_total: KV cache blocks.
        step_count: Steps the engine core timed since start (those that ran work).
        step_seconds: Their total time, in seconds (with ``step_count``: a mean over any interval).
        step_p99_s: p99 of the step time over each engine's last few thousand steps, in seconds
            (a group: the slowest engine's, since percentiles of different engines do not add up).
    """

    alive: bool = False
    running: int = 0
    waiting: int = 0
    steps: int = 0
    kv_blocks_free: int = 0
    kv_blocks_total: int = 0
    step_count: int = 0
    step_seconds: float = 0.0
    step_p99_s: float = 0.0

    @classmethod
    def from_stats(cls, stats: Mapping[str, Any]) -> EngineLoad:
        """The load in an engine client's ``stats()`` (missing figures, e.g. of a dead engine, are 0).

        The step time is each engine's ``step_ms`` summary (count, lifetime mean, window p99): at the
        top of one engine's stats, under ``engines`` in a group's.
        """
        counts = {f: int(stats.get(f, 0)) for f in ("running", "waiting", "steps", "kv_blocks_free", "kv_blocks_total")}
        timings = [s["step_ms"] for s in stats.get("engines", [stats]) if "step_ms" in s]
        return cls(
            alive=bool(stats.get("alive", False)),
            **counts,
            step_count=sum(int(t.get("count", 0)) for t in timings),
            # The lifetime mean times the count is the lifetime total (the summary keeps no sum).
            step_seconds=sum(float(t.get("mean", 0.0)) * int(t.get("count", 0)) for t in timings) / 1e3,
            step_p99_s=max((float(t.get("p99", 0.0)) for t in timings), default=0.0) / 1e3,
        )


class StartupPhase(enum.Enum):
    """What an engine is doing before it serves (in order)."""

    LOADING = "loading the checkpoint"
    DECODE_GRAPHS = "capturing decode-step CUDA graphs"
    PACKED_LM_GRAPHS = "capturing prefill CUDA graphs"
    VAE_GRAPHS = "capturing VAE CUDA graphs"
    WARM_UP = "running warm-up requests"


@dataclass(frozen=True, slots=True)
class StartupProgress:
    """Where one engine's start-up stands.

    Attributes:
        phase: The current phase.
        done: Units of the phase finished (graphs captured, warm-up batches run).
        total: Units of the phase (0 when it has no count, e.g. loading).
        elapsed_s: Seconds since the engine process started loading.
    """

    phase: StartupPhase
    done: int
    total: int
    elapsed_s: float

    def describe(self) -> str:
        """One line for ``/ready`` and the log, e.g. ``capturing prefill CUDA graphs (12/66)``."""
        count = f" ({self.done}/{self.total})" if self.total else ""
        return f"{self.phase.value}{count}, {self.elapsed_s:.0f} s in"
