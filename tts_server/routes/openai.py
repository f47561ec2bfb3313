"""``POST /v1/audio/speech``: OpenAI's text-to-speech API, so existing OpenAI clients work unchanged.

- ``model``: accepted whatever it names (``tts-1``, ``gpt-4o-mini-tts``, ``voxcpm``); this server runs
  one model. It comes back in ``X-Model``.
- ``voice``: a registered voice; OpenAI's built-in names (alloy, ash, ballad, coral, echo, fable,
  onyx, nova, sage, shimmer, verse, marin, cedar) that are not registered speak with the default
  zero-shot voice. Register a voice under such a name to give it a sound.
- ``input``: up to 4096 characters like OpenAI (or ``--max-text-chars``); text longer than the
  model context is split at sentence boundaries into consecutive segments of one stream.
- ``response_format``: ``mp3`` (default), ``opus``, ``aac``, ``flac``, ``wav``, ``pcm``.
- ``speed``: VoxCPM has no speaking-rate control, and resampling would shift the pitch, so only
  1.0 is accepted; anything else is a 400 naming ``speed``.
- ``instructions``: on VoxCPM2 it becomes the voice-design prefix, ``"(instructions)text"``, of
  every segment; on VoxCPM1 (no voice design) a non-empty value is a 400 naming ``instructions``
  rather than being silently ignored.
- ``stream_format``: ``audio`` (default: the encoded audio, chunked as it is made) or ``sse``
  (``speech.audio.delta`` events with base64 audio, then ``speech.audio.done`` with ``usage``).
- Extensions: ``normalize`` (default true here), ``seed``, ``temperature``, ``cfg_value``,
  ``max_generate_length``, ``request_id``.

Errors use OpenAI's shape (``{"error": {"message", "type", "param", "code"}}``), plus this
server's ``field``.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tts_server.audio.responses import audio_response, sse_response
from tts_server.errors import ApiError
from tts_server.http.bodies import REQUEST_ID_PATTERN, parse_body
from tts_server.jobs.job import Job, JobSpec
from tts_server.openai_errors import openai_error_response
from tts_server.routes.speech import (
    client_id,
    prepare_segments,
    request_id,
    resolve_voice,
    timeline,
)
from tts_server.services import Services, services
from voxcpm_engine.types import GenerationParams

__all__ = ["OPENAI_VOICES", "SpeechRequest", "openai_routes", "speech"]

OPENAI_VOICES = frozenset(
    {"alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse", "marin", "cedar"}
)
OPENAI_MAX_INPUT = 4096
_DESIGN_BRACKETS = re.compile(r"[()（）]")


class SpeechRequest(BaseModel):
    """Body of ``POST /v1/audio/speech`` (OpenAI's fields plus a few extensions)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    model: str = Field("voxcpm", pattern=r"^[\x21-\x7e]{1,128}$", description="Accepted and echoed in X-Model.")
    input: str = Field(min_length=1, max_length=OPENAI_MAX_INPUT, description="Text to speak.")
    voice: str | None = Field(None, min_length=1, max_length=64, description="Registered voice or OpenAI name.")
    instructions: str | None = Field(None, max_length=4096, description="Voice design text (VoxCPM2).")
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0, description="Only 1.0: VoxCPM has no speaking-rate control.")
    stream_format: Literal["audio", "sse"] = "audio"
    normalize: bool = Field(True, description="Normalize numbers, dates, symbols and markdown.")
    seed: int | None = Field(None, ge=0, lt=2**63)
    temperature: float = Field(1.0, ge=0.0, le=10.0)
    cfg_value: float = Field(2.0, ge=0.0, le=20.0)
    max_generate_length: int | None = Field(None, ge=1, le=100_000, description="Most patches per segment.")
    request_id: str | None = Field(None, pattern=REQUEST_ID_PATTERN)


def _design_prefix(svc: Services, instructions: str | None) -> str:
    text = " ".join(_DESIGN_BRACKETS.sub(" ", instructions or "").split())
    if not text:
        return ""
    if svc.model_version != 2:
        message = "instructions: voice design needs a VoxCPM2 model; this server runs VoxCPM1"
        raise ApiError(400, message, field="instructions")
    return f"({text})"


async def speech(request: Request) -> Response:
    """OpenAI's ``audio.speech.create``; see the module docstring."""
    try:
        return await _speech(request)
    except ApiError as error:
        return openai_error_response(error)


async def _speech(request: Request) -> Response:
    marks = timeline(request)
    svc = services(request)
    body = await parse_body(request, SpeechRequest)
    if body.speed != 1.0:
        raise ApiError(400, "speed: only 1.0 is supported (VoxCPM cannot change the speaking rate)", field="speed")
    rid = request_id(body.request_id, request)
    prefix = _design_prefix(svc, body.instructions)
    name = body.voice
    if name is not None and name in OPENAI_VOICES and name not in svc.voices.names():
        name = None
    resolved = await resolve_voice(svc, name)
    marks.parsed = marks.now()
    max_steps = body.max_generate_length or svc.config.default_max_generate_length
    segments = await prepare_segments(
        svc,
        body.input,
        field="input",
        normalize=body.normalize,
        voice=resolved.voice,
        max_steps=max_steps,
        prefix=prefix,
    )
    marks.text_ready = marks.now()
    params = GenerationParams(
        cfg_value=body.cfg_value, max_steps=max_steps, temperature=body.temperature, seed=body.seed
    )
    spec = JobSpec(
        rid,
        client_id(request),
        "openai",
        segments,
        resolved.voice,
        resolved.lora,
        params,
        "input",
        timeline=marks,
    )
    job = await Job.start(svc, spec, request.receive)
    headers = {"X-Model": body.model}
    if body.stream_format == "sse":
        input_tokens = sum(len(svc.tokenizer.encode(s)) for s in segments)
        per_patch = svc.model.samples_per_patch

        def usage(done: Job) -> dict[str, int]:
            output_tokens = -(-done.samples // per_patch)  # one audio token per generated patch
            return {
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "total_tokens": input_tokens + output_tokens,
            }

        return sse_response(job, body.response_format, usage, headers)
    return await audio_response(job, body.response_format, stream=True, headers=headers)


def openai_routes() -> list[Route]:
    """The route of this module."""
    return [Route("/v1/audio/speech", speech, methods=["POST"])]
