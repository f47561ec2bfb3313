"""Pydantic models of the JSON responses, so ``/openapi.json`` documents exactly what is sent.

The ops endpoints build their bodies from these models; the voice endpoints' bodies are described
here as they are built in ``tts_server.routes.voices`` and the voices store.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorDetail(_Out):
    """What went wrong."""

    type: str
    message: str
    field: str | None = None


class ErrorResponse(_Out):
    """Every error of this API (4xx/5xx)."""

    error: ErrorDetail


class OpenAIErrorDetail(_Out):
    """OpenAI's error fields (plus ``field``)."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None
    field: str | None = None


class OpenAIErrorResponse(_Out):
    """Errors of ``/v1/...`` routes, in OpenAI's shape."""

    error: OpenAIErrorDetail


_VOICE_NAMES = (
    "Registered voice names. With --api-key set, only for a request that carries the API or admin key "
    "(as GET /voices); empty for anyone else, since this endpoint is open."
)


class HealthResponse(_Out):
    """``GET /health``: the original VoxCPM server's fields, then extras."""

    status: Literal["ok", "engine_dead"]
    sample_rate: int
    available_voices: list[str] = Field(description=_VOICE_NAMES)
    active_connections: int
    max_concurrent_connections: int
    active_inference: int
    queued_inference: int
    max_inference_slots: int
    server_state: str
    engine_alive: bool


class Usage(_Out):
    """Use of a resource."""

    active: int
    max: int
    utilization_pct: float


class InferenceUsage(_Out):
    """Inference slots."""

    active: int
    queued: int
    max_slots: int
    utilization_pct: float


class SessionUsage(_Out):
    """Streaming sessions (``/v1/tts/stream``), each one connection; a speaking one also holds a slot."""

    active: int = Field(description="Sessions open.")
    speaking: int = Field(description="Sessions holding an inference slot now.")
    waiting_for_text: int = Field(description="Sessions with nothing to speak, holding no slot.")


class EngineFigures(_Out):
    """Engine counts (as of the last poll, at most half a second old)."""

    alive: bool
    running: int
    waiting: int
    steps: int
    kv_blocks_free: int
    kv_blocks_total: int


class ServerFigures(_Out):
    """The server process's own load: one event loop does all HTTP work (``tts_server/loop_load.py``)."""

    loop_busy_pct: float = Field(description="The event loop thread's CPU time over the last 2 s; near 100: saturated.")
    loop_lag_ms: float = Field(description="The largest lateness of a 0.1-s timer on the loop over the last 2 s.")
    loop_cpu_s: float = Field(description="CPU seconds of the event loop thread since the server started.")
    process_cpu_s: float = Field(description="CPU seconds of the whole server process (not the engine's).")


class EngineStartup(_Out):
    """One engine's last start-up report."""

    device: str
    phase: str = Field(description="loading, decode_graphs, packed_lm_graphs, vae_graphs or warm_up.")
    detail: str = Field(description="The phase in words.")
    done: int = Field(description="Units of the phase done (graphs captured, warm-up batches run).")
    total: int = Field(description="Units of the phase (0: not counted, e.g. loading).")
    elapsed_s: float = Field(description="Seconds since the engine process began loading.")


class StartupFigures(_Out):
    """Start-up of the server and its engines."""

    step: str | None = Field(description="What the server is doing before it is ready (null once ready).")
    ready_s: float | None = Field(description="Seconds from the server's start to ready (null until then).")
    engines: list[EngineStartup]


class StatusResponse(_Out):
    """``GET /status``: the original VoxCPM server's fields, then extras."""

    status: str
    can_accept_requests: bool
    connections: Usage
    inference: InferenceUsage
    sessions: SessionUsage
    engine: EngineFigures
    server: ServerFigures
    reason: str | None = None
    startup: StartupFigures | None = None


class ReadyResponse(_Out):
    """``GET /ready``."""

    ready: bool
    status: str
    reason: str | None = None


class QueueResponse(_Out):
    """``GET /queue``: with --api-key set, the caller's own requests (every client's for the admin key)."""

    pending_requests: list[str] = Field(description="Waiting request ids the caller may see, in the order they run.")
    queue_depth: int = Field(description="How many ids pending_requests lists.")
    active_inference: int = Field(description="Requests holding an inference slot (all clients).")


class CancelResponse(_Out):
    """``POST /cancel``: ``not_found`` also for another client's request (with --api-key set)."""

    status: Literal["cancelled", "not_found"]
    request_id: str


class FormatDescription(_Out):
    """One response format."""

    name: str
    media_type: str


class Limits(_Out):
    """Request limits."""

    max_text_chars: int
    max_body_bytes: int
    max_prompt_seconds: float
    max_model_len: int
    max_inference_slots: int
    max_concurrent_connections: int
    queue_timeout_s: float
    default_max_generate_length: int | None = None


class InfoResponse(_Out):
    """``GET /info``."""

    model: dict[str, Any]
    sample_rate: int
    samples_per_patch: int
    formats: list[FormatDescription]
    voices: list[str] = Field(description=_VOICE_NAMES)
    limits: Limits
    fair_queue: bool


class VoiceDescription(_Out):
    """One voice."""

    name: str
    state: str
    kinds: list[str]
    prompt_text: str | None = None
    prompt_seconds: float | None = None
    ref_seconds: float | None = None
    created: str | None = None
    updated: str | None = None


class VoiceList(_Out):
    """``GET /voices``: ``voices`` is the name list legacy clients read."""

    voices: list[str]
    details: list[VoiceDescription]


class VoiceRemoved(_Out):
    """``DELETE /voices/{name}``."""

    status: Literal["removed"]
    name: str


class AddPromptResponse(VoiceDescription):
    """Legacy ``POST /add_prompt``."""

    status: Literal["ok"]
    prompt_id: str


class RemovePromptResponse(_Out):
    """Legacy ``POST /remove_prompt``."""

    status: Literal["ok"]
    name: str


class LatentsResponse(_Out):
    """``POST /encode_latents``: latents ``{"dtype", "shape", "data"}`` plus their duration."""

    dtype: Literal["float32"]
    shape: list[int]
    data: str
    seconds: float
    reference: bool
