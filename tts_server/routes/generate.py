"""``POST /generate``: the native endpoint, streaming audio as the engine makes it.

The original VoxCPM server's fields (``target_text``, ``voice``, ``temperature``, ``cfg_value``,
``max_generate_length``, ``request_id``) plus inline voice material, ``seed``,
``inference_timesteps``, ``response_format`` (default ``wav``: a streamed WAV header makes the
bytes playable as they come and says the sample rate; ``pcm`` gives the bare s16le samples),
``stream`` (default true; false returns one file with exact sizes and ``Content-Length``) and
``normalize`` (default false: the text is spoken as written, after whitespace cleanup).

``max_generate_length`` bounds each segment when long text is split (segments of one request
run back to back in one stream and one inference slot). ``min_generate_length`` must fit under that
step limit (the request's ``max_generate_length``, else the server's default, else the reference's
``6 x text tokens + 10``, at most 2000, for the shortest segment): a larger value is a 400 naming it,
never quietly lowered.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tts_server.audio.responses import audio_response
from tts_server.errors import ApiError
from tts_server.http.bodies import REQUEST_ID_PATTERN, parse_body
from tts_server.jobs.job import Job, JobSpec
from tts_server.routes.speech import (
    InlineVoice,
    client_id,
    prepare_segments,
    request_id,
    resolve_voice,
    timeline,
)
from tts_server.services import Services, services
from voxcpm_engine.frontend import default_max_steps
from voxcpm_engine.io.tokenizer import prepare_text
from voxcpm_engine.types import GenerationParams

__all__ = ["GenerateRequest", "generate", "generate_routes"]

_DEFAULT_MIN_STEPS = 2  # the reference's min_steps
AudioFormat = Literal["wav", "pcm", "mp3", "flac", "opus", "aac"]


class GenerateRequest(BaseModel):
    """Body of ``POST /generate``."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    target_text: str = Field(min_length=1, description="Text to speak (at most --max-text-chars characters).")
    voice: str | None = Field(
        None, max_length=64, description="A registered voice (1-64 characters); omitted: the zero-shot default voice."
    )
    temperature: float = Field(1.0, ge=0.0, le=10.0, description="Scale of the sampler's initial noise.")
    cfg_value: float = Field(2.0, ge=0.0, le=20.0, description="Classifier-free guidance scale.")
    max_generate_length: int | None = Field(
        None, ge=1, le=100_000, description="Most patches (engine steps) per segment; default: the server's."
    )
    min_generate_length: int | None = Field(
        None, ge=0, le=100_000, description="Patches before the model may stop; default 2 (capped at the maximum)."
    )
    request_id: str | None = Field(
        None, pattern=REQUEST_ID_PATTERN, description="Id for /cancel; default: X-Request-Id, else generated."
    )
    prompt_audio: str | None = Field(None, description="Base64 audio of a continuation prompt (with prompt_text).")
    prompt_text: str | None = Field(None, min_length=1, description="Transcript of the prompt audio/latents.")
    prompt_latents: dict[str, Any] | None = Field(None, description="Prompt latents (see /encode_latents).")
    ref_audio: str | None = Field(None, description="Base64 audio of a reference voice (VoxCPM2 only).")
    ref_latents: dict[str, Any] | None = Field(None, description="Reference latents (VoxCPM2 only).")
    seed: int | None = Field(None, ge=0, lt=2**63, description="Seed: the same seed gives the same audio.")
    inference_timesteps: int = Field(10, ge=1, le=100, description="Flow sampler steps per patch.")
    response_format: AudioFormat = Field("wav", description="Audio format of the response.")
    stream: bool = Field(True, description="Stream audio as it is made; false: one file with exact sizes.")
    normalize: bool = Field(False, description="Normalize numbers, dates, symbols and markdown before speaking.")
    language: Literal["en", "zh"] | None = Field(None, description="Normalization language; default: detected.")


def _check_min_steps(svc: Services, min_steps: int, segments: tuple[str, ...], max_steps: int | None) -> None:
    """400 naming ``min_generate_length`` when it exceeds a segment's step limit (the engine would cap it)."""
    if max_steps is not None:
        limit, source = max_steps, "the server's default max_generate_length"
    else:
        # The engine's rule when no limit is given (Synthesizer.prepare): per segment, from its own tokens.
        limit = min(default_max_steps(len(svc.tokenizer.encode(prepare_text(s)))) for s in segments)
        source = "the default for this text: 6 x its tokens + 10, at most 2000"
    if min_steps > limit:
        message = (
            f"min_generate_length: {min_steps} exceeds the step limit of {limit} ({source}); raise max_generate_length"
        )
        raise ApiError(400, message, field="min_generate_length")


async def generate(request: Request) -> Response:
    """Speak ``target_text``; see the module docstring."""
    marks = timeline(request)
    svc = services(request)
    body = await parse_body(request, GenerateRequest)
    rid = request_id(body.request_id, request)
    min_steps = body.min_generate_length
    if min_steps is not None and body.max_generate_length is not None and min_steps > body.max_generate_length:
        raise ApiError(400, "min_generate_length: must not exceed max_generate_length", field="min_generate_length")
    inline = InlineVoice(body.prompt_audio, body.prompt_text, body.prompt_latents, body.ref_audio, body.ref_latents)
    resolved = await resolve_voice(svc, body.voice, inline)
    marks.parsed = marks.now()
    max_steps = body.max_generate_length or svc.config.default_max_generate_length
    segments = await prepare_segments(
        svc,
        body.target_text,
        field="target_text",
        normalize=body.normalize,
        voice=resolved.voice,
        max_steps=max_steps,
        language=body.language,
    )
    marks.text_ready = marks.now()
    if min_steps is not None and body.max_generate_length is None:  # an explicit maximum was checked above
        _check_min_steps(svc, min_steps, segments, max_steps)
    params = GenerationParams(
        cfg_value=body.cfg_value,
        inference_timesteps=body.inference_timesteps,
        min_steps=min(_DEFAULT_MIN_STEPS, max_steps or _DEFAULT_MIN_STEPS) if min_steps is None else min_steps,
        max_steps=max_steps,
        temperature=body.temperature,
        seed=body.seed,
    )
    spec = JobSpec(
        rid,
        client_id(request),
        "generate",
        segments,
        resolved.voice,
        resolved.lora,
        params,
        timeline=marks,
    )
    job = await Job.start(svc, spec, request.receive)
    return await audio_response(job, body.response_format, stream=body.stream)


def generate_routes() -> list[Route]:
    """The route of this module."""
    return [Route("/generate", generate, methods=["POST"])]
