"""What ``/generate`` and ``/v1/audio/speech`` share between parsing the body and starting the job.

Request ids, client ids, text preparation (cleanup, optional normalization, splitting to fit the
model context) and voices (a named voice, optionally overridden by inline prompt or reference
material). Everything here raises :class:`ApiError` naming the request field at fault.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from tts_server.errors import ApiError
from tts_server.http.auth import client_key
from tts_server.http.bodies import REQUEST_ID_PATTERN, decode_base64
from tts_server.jobs.timeline import TIMELINE_KEY, Timeline
from tts_server.services import Services
from tts_server.text.clean import clean_text, has_speakable
from tts_server.text.normalize import normalize_text
from tts_server.text.segments import SegmentBudget, plan_segments
from tts_server.voices.entry import ResolvedVoice
from tts_server.voices.inputs import check_pairing
from tts_server.voices.latents import latents_from_json
from voxcpm_engine.types import Voice

__all__ = [
    "InlineVoice",
    "client_id",
    "prepare_segments",
    "request_id",
    "resolve_voice",
    "timeline",
]

_REQUEST_ID = re.compile(REQUEST_ID_PATTERN)


def request_id(body_value: str | None, request: Request) -> str:
    """The request's id: the body's ``request_id``, else ``X-Request-Id``, else a new one.

    Raises:
        ApiError: 400 for an id outside :data:`REQUEST_ID_PATTERN`.
    """
    if body_value is not None:
        value, field = body_value, "request_id"
    elif (header := request.headers.get("x-request-id")) is not None:
        value, field = header, "X-Request-Id"
    else:
        return uuid.uuid4().hex
    if not _REQUEST_ID.match(value):
        raise ApiError(
            400,
            f"{field}: must be 1-128 characters of A-Z a-z 0-9 . _ : @ + = / - starting with a letter or digit",
            field=field,
        )
    return value


def timeline(request: Request) -> Timeline:
    """The request's timeline, begun by the admission middleware (a new one when it was not)."""
    found = request.scope.get("state", {}).get(TIMELINE_KEY)
    return found if isinstance(found, Timeline) else Timeline(received=Timeline.now())


def client_id(request: Request) -> str:
    """The fair-queue client of a request (``X-Client-Id``, else the API key's digest)."""
    return client_key(request.headers.get("x-client-id"), request.headers.get("authorization"))


async def prepare_segments(
    svc: Services,
    text: str,
    *,
    field: str,
    normalize: bool,
    voice: Voice | None,
    max_steps: int | None,
    prefix: str = "",
    language: str | None = None,
    reserve: int = 0,
) -> tuple[str, ...]:
    """Clean (always), normalize (if asked) and split the text into engine-sized segments.

    ``reserve`` positions of the model context are left free in every segment (a streaming
    session's continuation context takes them).

    Raises:
        ApiError: 400 naming ``field`` for text over the limit or with nothing left to speak (no letter
            or digit after cleanup, and after normalization when asked: emoji, punctuation and
            invisible characters alone are refused the same on both endpoints).
    """
    limit = svc.config.max_text_chars
    if len(text) > limit:
        raise ApiError(400, f"{field}: {len(text)} characters exceed the limit of {limit}", field=field)
    if normalize:
        # normalize_text cleans whitespace itself, after reading the line structure (markdown headings,
        # list items); wetext's FSTs take milliseconds per sentence: keep the event loop free.
        text = await asyncio.to_thread(normalize_text, text, language)
    else:
        text = clean_text(text)
    if not has_speakable(text):
        message = f"{field}: nothing to speak after cleanup (no letters or digits)"
        raise ApiError(400, message, field=field)
    budget = SegmentBudget(
        max_model_len=svc.config.max_model_len - reserve,
        voice=voice,
        max_steps=max_steps,
        prefix=prefix,
        text_field=field,
    )
    return tuple(plan_segments(text, svc.tokenizer, budget))


@dataclass(frozen=True)
class InlineVoice:
    """Voice material sent with the request itself (each part optional).

    Attributes:
        prompt_audio: Base64 audio of a continuation prompt.
        prompt_text: Its transcript.
        prompt_latents: Latents JSON of a continuation prompt (alternative to ``prompt_audio``).
        ref_audio: Base64 audio of a VoxCPM2 reference recording.
        ref_latents: Latents JSON of a reference (alternative to ``ref_audio``).
    """

    prompt_audio: str | None = None
    prompt_text: str | None = None
    prompt_latents: Any = None
    ref_audio: str | None = None
    ref_latents: Any = None


async def resolve_voice(svc: Services, name: str | None, inline: InlineVoice | None = None) -> ResolvedVoice:
    """The named voice (None: zero-shot), with any inline prompt or reference replacing its own.

    Raises:
        ApiError: 404 for an unknown voice; 400/413 naming the inline field at fault.
    """
    base = svc.voices.resolve(name)
    if inline is None:
        return base
    voices, model = svc.voices, svc.model
    check_pairing(
        prompt_audio=inline.prompt_audio is not None,
        prompt_latents=inline.prompt_latents is not None,
        prompt_text=inline.prompt_text,
        ref_audio=inline.ref_audio is not None,
        ref_latents=inline.ref_latents is not None,
        model_version=model.version,
    )
    shape = {"patch_size": model.patch_size, "latent_dim": model.latent_dim}
    voice = base.voice
    if inline.prompt_audio is not None:
        audio = decode_base64(inline.prompt_audio, "prompt_audio")
        latents, _ = await voices.encode(audio, field="prompt_audio")
        voice = Voice(inline.prompt_text, latents, voice.ref_latents)
    elif inline.prompt_latents is not None:
        latents = latents_from_json(inline.prompt_latents, "prompt_latents", max_patches=voices.max_patches, **shape)
        voice = Voice(inline.prompt_text, latents, voice.ref_latents)
    if inline.ref_audio is not None:
        audio = decode_base64(inline.ref_audio, "ref_audio")
        latents, _ = await voices.encode(audio, reference=True, field="ref_audio")
        voice = Voice(voice.prompt_text, voice.prompt_latents, latents)
    elif inline.ref_latents is not None:
        latents = latents_from_json(inline.ref_latents, "ref_latents", max_patches=voices.max_patches, **shape)
        voice = Voice(voice.prompt_text, voice.prompt_latents, latents)
    return ResolvedVoice(voice, base.lora)
