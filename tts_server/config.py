"""``ServerConfig``: every server setting, validated once.

Each setting is one dataclass field whose metadata holds its help text and parser; the
command-line flag (``--max-num-seqs``, :func:`flag_of`) and the environment variable
(``TTS_MAX_NUM_SEQS``, :func:`env_of`) are derived from the field name.
:mod:`tts_server.config_sources` reads them (command line, then environment, then the default).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from functools import cached_property
from typing import Any

from tts_server.config_checks import LOG_LEVELS, setting_checks
from tts_server.config_parsers import bool_value, int_tuple, optional_int, optional_str
from tts_server.jobs.pacing import PacingConfig
from voxcpm_engine.config.engine_config import EngineConfig

__all__ = ["ConfigError", "ServerConfig", "env_of", "flag_of"]

ENV_PREFIX = "TTS_"
GPU_MAX_NUM_SEQS = 128
"""Default ``max_num_seqs`` on CUDA: VoxCPM1.5 makes 98% of its 256-stream audio per second at 128 on an H200."""
CPU_MAX_NUM_SEQS = 16
"""Default ``max_num_seqs`` on the CPU."""
GPU_MAX_NUM_BATCHED_TOKENS = 4096
"""Default ``max_num_batched_tokens`` on CUDA: 256 prompts of ~30 positions prefill in 2 steps, not 8 (at 1024),
and a full 4,096-position prefill adds milliseconds to a step whose audio lasts 160 ms."""
CPU_MAX_NUM_BATCHED_TOKENS = 1024
"""Default ``max_num_batched_tokens`` on the CPU, where a prefill position costs far more of a step."""


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the flag."""


def _setting(default: Any, help: str, *, parse: Callable[[str], Any] | None = None, secret: bool = False) -> Any:
    metadata = {"help": help, "parse": parse, "secret": secret}
    if default is MISSING:
        return field(metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class ServerConfig:
    """All settings of one server process (validated once, in ``__post_init__``)."""

    model: str = _setting(MISSING, "Checkpoint directory (official VoxCPM layout). Required.")
    device: str = _setting(
        "auto",
        "Torch device of the engine: `auto` (cuda if available, else cpu), `cpu`, `cuda`, `cuda:N`, "
        "or a comma list (`cuda:0,cuda:1`) for one engine process per device.",
    )
    dtype: str | None = _setting(
        None, "Model dtype override (`bfloat16`, `float16`, `float32`); default: the checkpoint's.", parse=optional_str
    )
    max_num_seqs: int | None = _setting(
        None,
        f"Requests in one engine's running batch (inference slots per device); default: {GPU_MAX_NUM_SEQS} on a GPU "
        f"(where an H100/H200's audio per second levels off), {CPU_MAX_NUM_SEQS} on the CPU.",
        parse=optional_int,
    )
    max_num_batched_tokens: int | None = _setting(
        None,
        "Most LM positions one engine step may process (bounds how long a prefill stalls streams); default: "
        f"{GPU_MAX_NUM_BATCHED_TOKENS} on a GPU, {CPU_MAX_NUM_BATCHED_TOKENS} on the CPU (never below the slots).",
        parse=optional_int,
    )
    max_model_len: int = _setting(
        2048,
        "Most positions (prompt + generated patches) per engine request; longer input is split into segments.",
        parse=int,
    )
    num_kv_blocks: int | None = _setting(
        None,
        "KV blocks per LM stack; default: derived (CPU: full batch at max length; GPU: from memory).",
        parse=optional_int,
    )
    gpu_memory_utilization: float = _setting(0.85, "Share of GPU memory the engine may use.", parse=float)
    max_loras: int = _setting(
        0,
        "LoRA adapter slots on the device; 0 disables LoRA voices (prompt and reference voices still work).",
        parse=int,
    )
    max_lora_rank: int = _setting(32, "Largest LoRA rank a voice adapter may have.", parse=int)
    enforce_eager: bool = _setting(
        False, "On CUDA, never use CUDA graphs (every engine step runs eagerly).", parse=bool_value
    )
    cuda_graph_timesteps: tuple[int, ...] = _setting(
        (10,),
        "Comma list of inference_timesteps values whose decode steps run as CUDA graphs; requests with other "
        "values run eagerly (slower).",
        parse=int_tuple,
    )
    fused_kernels: bool = _setting(
        True,
        "On CUDA, run the transformer stacks and the sampler with fused Triton kernels (off: op-by-op torch).",
        parse=bool_value,
    )
    vae_tf32: bool = _setting(
        True,
        "On CUDA, run the AudioVAE's convolutions in TF32 like PyTorch's default (faster at large batches); "
        "off: true fp32, bit-stable between streamed and whole decodes.",
        parse=bool_value,
    )
    vae_dtype: str = _setting(
        "float32",
        "Dtype of the streaming AudioVAE decode: `float32`, or `bfloat16` (half the memory traffic; fp32 "
        "accumulation, audio handed out in fp32; prompt encoding stays fp32).",
    )
    vae_overlap: bool = _setting(
        True,
        "On CUDA, run each step's AudioVAE decode on a CUDA stream of its own, beside the next step's LMs and "
        "sampler instead of behind them (same audio; 0.5-1% more audio per second at 256-512 streams on an H100).",
        parse=bool_value,
    )
    vae_units: str = _setting(
        "auto",
        "With the fused kernels on CUDA, how the AudioVAE decoder's residual units run: `auto` (`gemm` with a "
        "bfloat16 VAE, `passes` with a float32 one: the faster of the two for each dtype on an H100), `passes` "
        "(depthwise kernel, cuBLAS GEMM, bias + residual kernel), `gemm` (a Triton GEMM with bias, residual and the "
        "next Snake in its epilogue: six passes over the activations instead of eight), or `one-kernel` (each streamed "
        "unit of 16-256 channels as one kernel; measured slower than `passes` on an H100, -16% audio per second "
        "at 256 streams: for kernel work, not for serving).",
    )
    async_scheduling: bool = _setting(
        True,
        "With CUDA graphs, launch each decode step before the previous step's audio is copied out, so the "
        "host's per-step work overlaps the GPU's (arrivals join one step later); off: strictly one step at a time.",
        parse=bool_value,
    )
    packed_lm_graphs: bool = _setting(
        True,
        "With CUDA graphs, also capture both LMs of prefill and mixed steps per padded token and sequence count "
        "(a new request's first step without hundreds of launches; costs start-up time); off: those LMs op by op.",
        parse=bool_value,
    )
    warm_up: bool = _setting(
        True,
        "On CUDA, run throw-away requests of every batch shape (prefill with and without a voice prompt, each "
        "decode batch-size bucket, the VAE; again with LoRA rows when --max-loras > 0) before /ready says 200, so "
        "no first request pays a kernel compile.",
        parse=bool_value,
    )
    kernel_cache_dir: str | None = _setting(
        None,
        "Directory of the compiled GPU kernels (Triton's cache). Keep it across restarts (a volume in a "
        "container): a server that finds its kernels there starts in a fraction of the time. Default: Triton's "
        "own (TRITON_CACHE_DIR, else ~/.triton/cache).",
        parse=optional_str,
    )
    audio_ring_slots: int = _setting(
        4,
        "Steps of audio each engine process hands over in shared memory (/dev/shm) instead of the pipe; 0: the "
        "pipe. Each slot holds a step of every stream (14.5 MB for 4 slots at 128 VoxCPM1.5 streams); without "
        "room in /dev/shm the engine uses the pipe.",
        parse=int,
    )
    engine_threads: int | None = _setting(
        None, "torch CPU threads in each engine process; default: torch's choice.", parse=optional_int
    )
    max_concurrent_connections: int | None = _setting(
        None,
        "Level 1 cap on concurrent work requests; over it a request gets 503 at once. "
        "Default: 2 x total inference slots (max-num-seqs x devices).",
        parse=optional_int,
    )
    queue_timeout: float = _setting(
        60.0, "Seconds a request may wait in the inference queue before it gets 503.", parse=float
    )
    fair_queue: bool = _setting(
        False,
        "Round-robin the queue between clients (X-Client-Id header, else the API key), FIFO within each.",
        parse=bool_value,
    )
    voices_dir: str | None = _setting(
        "voices",
        "Directory of stored voices (one folder per voice; created if missing). Empty: voices live in memory only "
        "and are lost at restart.",
        parse=optional_str,
    )
    host: str = _setting("0.0.0.0", "Address to listen on.")
    port: int = _setting(8000, "TCP port to listen on.", parse=int)
    event_loop: str = _setting(
        "asyncio",
        "The server's event loop: `asyncio` (the standard library's) or `uvloop` (libuv: a burst's requests "
        "reach the app sooner, but time to first audio was no better at 1-128 concurrent requests).",
        parse=str.lower,
    )
    api_key: str | None = _setting(
        None, "If set, work endpoints need `Authorization: Bearer <key>`.", parse=optional_str, secret=True
    )
    admin_key: str | None = _setting(
        None,
        "Key for voice management (POST/PUT/DELETE /voices, /add_prompt, /remove_prompt); if unset, the API key "
        "(or nothing, when that is unset too) guards them.",
        parse=optional_str,
        secret=True,
    )
    log_level: str = _setting("info", f"Log level: {', '.join(LOG_LEVELS)}.", parse=str.lower)
    max_body_bytes: int = _setting(
        16 * 1024 * 1024, "Largest request body in bytes (prompt audio travels base64-encoded).", parse=int
    )
    max_voice_body_bytes: int = _setting(
        256 * 1024 * 1024,
        "Largest body of voice uploads (/voices, /add_prompt, /encode_latents; LoRA weights).",
        parse=int,
    )
    max_prompt_seconds: float = _setting(
        30.0, "Longest prompt or reference audio, in seconds, accepted for encoding.", parse=float
    )
    max_text_chars: int = _setting(4096, "Longest input text in characters (OpenAI's limit is 4096).", parse=int)
    shutdown_grace: float = _setting(
        20.0,
        "Seconds in-flight requests get to finish after SIGTERM before they are cancelled (keep it ~10 s under "
        "the supervisor's kill timeout, e.g. Kubernetes' 30 s terminationGracePeriodSeconds).",
        parse=float,
    )
    send_timeout: float = _setting(
        20.0,
        "Seconds a response write may make no progress (the client stopped reading) before the connection is "
        "aborted: its request is cancelled and its inference slot and connection place are released.",
        parse=float,
    )
    body_timeout: float = _setting(
        30.0,
        "Seconds from a work request's arrival by which its whole body must have arrived; else it gets 408 and "
        "the connection is closed (a slow or missing body cannot hold a connection place).",
        parse=float,
    )
    stream_buffer_seconds: float = _setting(
        30.0,
        "Seconds of audio a streaming response may hold made but unsent for a slow reader; at the bound its "
        "generation waits for the client (the inference slot is released as soon as generation ends).",
        parse=float,
    )
    stream_write_seconds: float = _setting(
        0.5,
        "Once a streaming response or /v1/tts/stream session has sent --stream-lead-seconds more audio than can "
        "have played, it writes when this much audio is waiting instead of every engine step's chunk (fewer "
        "writes for the event loop); 0 writes every chunk at once.",
        parse=float,
    )
    stream_lead_seconds: float = _setting(
        1.0,
        "Sent but unplayed audio (counting playback from the first write) below which a streaming response or "
        "session writes every chunk at once.",
        parse=float,
    )
    session_idle_timeout: float = _setting(
        60.0,
        "Seconds a /v1/tts/stream session may send nothing while it has nothing to speak before it is closed.",
        parse=float,
    )
    session_text_wait: float = _setting(
        0.3,
        "Seconds without a new text fragment after which a session speaks the text it buffered so far "
        "(a session's start message may set its own, up to 10 s).",
        parse=float,
    )
    session_max_chars: int = _setting(
        200_000, "Most characters of text one /v1/tts/stream session may send in all.", parse=int
    )
    session_context_seconds: float = _setting(
        12.0,
        "Longest previous segment, in seconds of audio, a session's next segment continues from (same voice "
        "across the join); a longer one is not used. 0 turns continuation off.",
        parse=float,
    )
    default_max_generate_length: int | None = _setting(
        None,
        "Patches (engine steps) per segment when a request gives no max_generate_length; "
        "default: the reference's rule, 6 x text tokens + 10 (at most 2000).",
        parse=optional_int,
    )
    retry_after: int = _setting(1, "Seconds sent in the Retry-After header of 503 answers.", parse=int)

    def __post_init__(self) -> None:
        for name, ok, message in setting_checks(self):
            if not ok:
                shown = "***" if _is_secret(name) else repr(getattr(self, name))
                raise ConfigError(f"{flag_of(name)} ({env_of(name)}) {message}, got {shown}")
        try:
            self.engine_config()
        except ValueError as exc:  # EngineConfig names its field: say which flag that is
            message = str(exc)
            for f in fields(EngineConfig):
                message = re.sub(rf"(EngineConfig\.)?\b{f.name}\b", flag_of(f.name), message)
            raise ConfigError(message) from exc

    @property
    def device_list(self) -> list[str]:
        """The devices as given (``auto`` unresolved), one engine per entry."""
        return [d.strip() for d in self.device.split(",")]

    @property
    def slots_per_engine(self) -> int:
        """``max_num_seqs``, or when unset its default for the devices (on ``auto``, imports torch)."""
        if self.max_num_seqs is not None:
            return self.max_num_seqs
        return self._for_devices(GPU_MAX_NUM_SEQS, CPU_MAX_NUM_SEQS)

    @property
    def tokens_per_step(self) -> int:
        """``max_num_batched_tokens``, or when unset its default for the devices, at least ``slots_per_engine``."""
        if self.max_num_batched_tokens is not None:
            return self.max_num_batched_tokens
        return max(self._for_devices(GPU_MAX_NUM_BATCHED_TOKENS, CPU_MAX_NUM_BATCHED_TOKENS), self.slots_per_engine)

    def _for_devices(self, gpu: int, cpu: int) -> int:
        """``gpu`` where every engine runs on CUDA, else ``cpu`` (on ``auto``, imports torch)."""
        return gpu if all(d.startswith("cuda") for d in self.resolved_devices()) else cpu

    @property
    def inference_slots(self) -> int:
        """Requests that may be in the engines at once (the queue's slots)."""
        return self.slots_per_engine * len(self.device_list)

    @property
    def connection_cap(self) -> int:
        """The Level 1 cap (the explicit setting or 2 x inference slots)."""
        return self.max_concurrent_connections or 2 * self.inference_slots

    @property
    def voice_admin_key(self) -> str | None:
        """The key voice management needs (the admin key, else the API key, else none)."""
        return self.admin_key or self.api_key

    def engine_config(self) -> EngineConfig:
        """The engine limits these settings describe (per engine process)."""
        return EngineConfig(
            max_num_seqs=self.slots_per_engine,
            max_num_batched_tokens=self.tokens_per_step,
            max_model_len=self.max_model_len,
            num_kv_blocks=self.num_kv_blocks,
            gpu_memory_utilization=self.gpu_memory_utilization,
            max_loras=self.max_loras,
            max_lora_rank=self.max_lora_rank,
            enforce_eager=self.enforce_eager,
            cuda_graph_timesteps=self.cuda_graph_timesteps,
            fused_kernels=None if self.fused_kernels else False,
            vae_tf32=self.vae_tf32,
            vae_dtype=self.vae_dtype,
            vae_overlap=self.vae_overlap,
            vae_units=self.vae_units,
            async_scheduling=None if self.async_scheduling else False,
            packed_lm_graphs=self.packed_lm_graphs,
            warm_up=None if self.warm_up else False,
            kernel_cache_dir=self.kernel_cache_dir,
            audio_ring_slots=self.audio_ring_slots,
        )

    @cached_property
    def pacing(self) -> PacingConfig:
        """How streamed responses and sessions batch their writes (built once)."""
        return PacingConfig(write_seconds=self.stream_write_seconds, lead_seconds=self.stream_lead_seconds)

    def resolved_devices(self) -> list[str]:
        """Torch devices, with ``auto`` resolved (imports torch)."""
        if self.device_list == ["auto"]:
            import torch

            return ["cuda" if torch.cuda.is_available() else "cpu"]
        return self.device_list

    def redacted(self) -> dict[str, Any]:
        """Settings as a dict with the keys masked (for logs and ``/info``)."""
        return {
            f.name: ("***" if f.metadata["secret"] and getattr(self, f.name) else getattr(self, f.name))
            for f in fields(self)
        }


def flag_of(name: str) -> str:
    """``max_num_seqs`` → ``--max-num-seqs``."""
    return "--" + name.replace("_", "-")


def env_of(name: str) -> str:
    """``max_num_seqs`` → ``TTS_MAX_NUM_SEQS``."""
    return ENV_PREFIX + name.upper()


def _is_secret(name: str) -> bool:
    return any(f.name == name and f.metadata["secret"] for f in fields(ServerConfig))
