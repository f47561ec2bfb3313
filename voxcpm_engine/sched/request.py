"""A request inside the engine: its inputs, sampling settings and lifecycle state."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch
from torch import Tensor

from voxcpm_engine.frontend import Prefill
from voxcpm_engine.model.sampler import NoiseStream


class RequestStatus(enum.IntEnum):
    """Lifecycle of a request in the engine; everything above RUNNING is final."""

    WAITING = 0
    RUNNING = 1
    FINISHED_STOPPED = 2  # the stop head ended it
    FINISHED_LENGTH = 3  # max_steps reached
    CANCELLED = 4  # abort() or deadline
    FAILED = 5  # engine error

    @property
    def is_finished(self) -> bool:
        """Whether the request has left the engine for good."""
        return self > RequestStatus.RUNNING


@dataclass(frozen=True)
class SamplingParams:
    """Per-request generation settings (validated by the caller's layer: ``GenerationParams``)."""

    cfg_value: float = 2.0
    inference_timesteps: int = 10
    min_steps: int = 2
    max_steps: int = 2000
    temperature: float = 1.0
    return_latents: bool = False  # the final output carries the generated patches


@dataclass
class FirstAudioTimes:
    """When a request reached each stage on its way to its first audio (``time.monotonic()``).

    ``time.monotonic()`` is the system-wide monotonic clock on Linux, so the server process can
    place these next to its own stamps.

    Attributes:
        added: ``add_request`` began (the request reached the engine).
        queued: ``add_request`` ended (text tokenized, prompt laid out, its VAE state warmed).
        scheduled: The first step that ran any of its positions was launched.
        first_patch: Its first latent patch was on the host (the step's results synchronised).
        first_audio: Its first audio chunk was decoded and on the host.
    """

    added: float
    queued: float = 0.0
    scheduled: float = 0.0
    first_patch: float = 0.0
    first_audio: float = 0.0

    def as_tuple(self) -> tuple[float, float, float, float, float]:
        """The five stamps in stage order (the wire form)."""
        return (self.added, self.queued, self.scheduled, self.first_patch, self.first_audio)


@dataclass(eq=False)
class Request:
    """One utterance in flight.

    The sequence the LMs see is the prompt (``prefill``) followed by one position per generated
    patch. ``num_computed`` positions have their K/V in the cache; the rest are fed by the next
    steps (a prefill chunk, or the newest patch when decoding).

    Attributes:
        request_id: Caller's id, unique among unfinished requests.
        prefill: The prompt's position tracks.
        params: Sampling settings.
        generator: The request's own RNG (its noise does not depend on the batch).
        arrival: Monotonic admission order, for FIFO scheduling and preemption.
        status: Lifecycle state.
        patches: Generated latent patches ``[P, D]`` (model dtype, model device).
        block_table: KV block ids, one per ``block_size`` positions.
        num_computed: Positions whose K/V is cached.
        num_cached: Of those, positions that came from the prefix cache at admission.
        embed: LM-width embedding of the newest patch, fed at the next decode step.
        lm_hidden: Base-LM state conditioning the next patch (and its stop decision).
        residual_hidden: Residual-LM state conditioning the next patch.
        prompt_hashes: Content hashes of the full prompt blocks (prefix caching), computed once.
        lora_name: Named LoRA voice, or None.
        lora_slot: Adapter slot (0 = none), taken at first admission and held until the request
            ends (also while preempted), so it finishes with the weights it started with.
        cache_salt: Prefix-cache key material besides the content (the adapter version).
        noise: The sampler noise drawn from ``generator`` (made at the first sample).
        times: When it reached each stage up to its first audio (None: made outside ``Engine``).
    """

    request_id: str
    prefill: Prefill
    params: SamplingParams
    generator: torch.Generator
    arrival: int
    status: RequestStatus = RequestStatus.WAITING
    patches: list[Tensor] = field(default_factory=list)
    block_table: list[int] = field(default_factory=list)
    num_computed: int = 0
    num_cached: int = 0
    embed: Tensor | None = None
    lm_hidden: Tensor | None = None
    residual_hidden: Tensor | None = None
    prompt_hashes: list[bytes] | None = None
    lora_name: str | None = None
    lora_slot: int = 0
    cache_salt: bytes = b""
    noise: NoiseStream | None = None
    times: FirstAudioTimes | None = None

    @property
    def prompt_len(self) -> int:
        """Positions of the prompt."""
        return len(self.prefill)

    @property
    def num_positions(self) -> int:
        """Positions the LMs must have seen before the next patch can be sampled."""
        return self.prompt_len + len(self.patches)

    @property
    def num_pending(self) -> int:
        """Positions still to feed before the next patch can be sampled (1 when decoding)."""
        return self.num_positions - self.num_computed

    def reset_for_recompute(self) -> None:
        """Drop cache-dependent state after a preemption; the patches made so far are kept and re-fed."""
        self.block_table = []
        self.num_computed = 0
        self.num_cached = 0
        self.embed = None
        self.lm_hidden = None
        self.residual_hidden = None
