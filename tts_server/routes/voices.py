"""Voice endpoints: list, add, replace, remove named voices; the legacy prompt endpoints; /encode_latents.

The app sets ``app.state.voices`` (a :class:`~tts_server.voices.store.VoiceStore`) and
``app.state.model`` (``sample_rate``, ``patch_size``, ``latent_dim``, ``version``). Bodies are
JSON (415 otherwise), at most ``app.state.max_voice_body_bytes`` if set (a LoRA upload can be large),
else ``app.state.max_body_bytes``, else 25 MB (413 beyond). Binary fields are base64 strings
(standard alphabet; a ``data:...;base64,`` prefix is accepted); latents use :mod:`tts_server.voices.latents`.

=============================  ===============================================================
``GET /voices``                ``{"voices": [names], "details": [descriptions]}``: ``voices`` is the
                               list of names legacy clients read; ``details`` adds kinds,
                               prompt_text, seconds, created/updated per voice
``GET /voices/{name}``         one description, or 404
``POST /voices``               add: ``name`` + any of ``prompt_audio``/``prompt_latents`` (with
                               ``prompt_text``), ``ref_audio``/``ref_latents``, ``lora_weights`` +
                               ``lora_config``; ``replace`` (default false: 409 if the name exists).
                               201 + description (200 when it replaced a voice)
``PUT /voices/{name}``         the same body (``name`` optional, must match), always replacing
``DELETE /voices/{name}``      ``{"status": "removed", "name"}``, or 404
``POST /add_prompt``           legacy: ``voice_name``/``name``/``prompt_id`` (generated when absent),
                               ``prompt_audio``/``prompt_wav``/``wav_base64``/``prompt_wav_base64``,
                               ``prompt_text``; ``wav_format`` is accepted and ignored (the container
                               is detected). Replaces by default, as the legacy dict assignment did.
                               200 + description + ``"status": "ok", "prompt_id"``
``POST /remove_prompt``        legacy: ``voice_name``/``name``/``prompt_id`` → ``{"status": "ok", "name"}``
``POST /encode_latents``       ``{"audio": base64, "reference": false}`` → latents JSON + ``seconds``;
                               the legacy ``wav_base64`` body also gets ``prompt_latents_base64``,
                               ``feat_dim``, ``latents_dtype``, ``sample_rate``, ``channels``
=============================  ===============================================================
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict
from starlette.requests import Request
from starlette.routing import Route

from tts_server.errors import ApiError, JSONResponse
from tts_server.http.bodies import decode_base64, parse_body
from tts_server.voices.entry import VoiceState
from tts_server.voices.latents import latents_from_json, latents_to_json
from tts_server.voices.store import VoiceStore
from voxcpm_engine.types import ModelInfo

__all__ = ["voice_routes"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class VoiceBody(_Body):
    """``POST /voices`` and ``PUT /voices/{name}``."""

    name: str | None = None
    prompt_audio: str | None = None
    prompt_text: str | None = None
    prompt_latents: dict[str, Any] | None = None
    ref_audio: str | None = None
    ref_latents: dict[str, Any] | None = None
    lora_weights: str | None = None
    lora_config: dict[str, Any] | None = None
    replace: bool = False


class AddPromptBody(_Body):
    """Legacy ``POST /add_prompt``."""

    voice_name: str | None = None
    name: str | None = None
    prompt_id: str | None = None
    prompt_audio: str | None = None
    prompt_wav: str | None = None
    wav_base64: str | None = None
    prompt_wav_base64: str | None = None
    wav_format: str | None = None
    prompt_wav_format: str | None = None
    prompt_text: str
    replace: bool = True


class RemovePromptBody(_Body):
    """Legacy ``POST /remove_prompt``."""

    voice_name: str | None = None
    name: str | None = None
    prompt_id: str | None = None


class EncodeBody(_Body):
    """``POST /encode_latents`` (``wav_base64``/``wav_format``: the legacy spelling)."""

    audio: str | None = None
    wav_base64: str | None = None
    wav_format: str | None = None
    reference: bool = False


_NAME_ALIASES = ("voice_name", "name", "prompt_id")
_AUDIO_ALIASES = ("prompt_audio", "prompt_wav", "wav_base64", "prompt_wav_base64")


_SHOWN_NAME_CHARS = 64  # the longest valid voice name


def _shown(name: str) -> str:
    """A name for an error message: at most the length of a valid name, so a huge one is not echoed back."""
    return repr(name[:_SHOWN_NAME_CHARS]) + ("..." if len(name) > _SHOWN_NAME_CHARS else "")


def _store(request: Request) -> VoiceStore:
    return request.app.state.voices


def _info(request: Request) -> ModelInfo:
    return request.app.state.model


def _voice_body_limit(request: Request) -> int | None:
    return getattr(request.app.state, "max_voice_body_bytes", None)


def _one_of(body: BaseModel, fields: tuple[str, ...]) -> tuple[str, Any] | None:
    """The one field of ``fields`` (aliases of each other) the client gave, as ``(field, value)``."""
    given = [(f, getattr(body, f)) for f in fields if getattr(body, f) is not None]
    if len({value for _, value in given}) > 1:
        (first, _), (second, _) = given[:2]
        raise ApiError(400, f"{second}: conflicts with {first} (give one of {', '.join(fields)})", field=second)
    return given[0] if given else None


def _required(body: BaseModel, fields: tuple[str, ...]) -> tuple[str, Any]:
    given = _one_of(body, fields)
    if given is None:
        raise ApiError(400, f"{fields[0]}: required (or one of {', '.join(fields[1:])})", field=fields[0])
    return given


async def _add(request: Request, body: VoiceBody, name: str, *, replace: bool) -> JSONResponse:
    store, info = _store(request), _info(request)
    store.check_name(name)  # before decoding megabytes of base64

    def latents(field: str, value: dict[str, Any] | None) -> Any:
        if value is None:
            return None
        dims = {"patch_size": info.patch_size, "latent_dim": info.latent_dim}
        return latents_from_json(value, field, **dims, max_patches=store.max_patches)

    def binary(field: str, value: str | None) -> bytes | None:
        return decode_base64(value, field) if value is not None else None

    description = await store.add(
        name,
        prompt_audio=binary("prompt_audio", body.prompt_audio),
        prompt_text=body.prompt_text,
        prompt_latents=latents("prompt_latents", body.prompt_latents),
        ref_audio=binary("ref_audio", body.ref_audio),
        ref_latents=latents("ref_latents", body.ref_latents),
        lora_weights=binary("lora_weights", body.lora_weights),
        lora_config=body.lora_config,
        replace=replace,
    )
    replaced = description.pop("replaced")
    headers = {} if replaced else {"Location": f"/voices/{name}"}
    return JSONResponse(description, status_code=200 if replaced else 201, headers=headers)


async def list_voices(request: Request) -> JSONResponse:
    """``GET /voices``."""
    store = _store(request)
    return JSONResponse({"voices": store.names(), "details": store.describe()})


async def get_voice(request: Request) -> JSONResponse:
    """``GET /voices/{name}``."""
    name = request.path_params["name"]
    entry = _store(request).get(name)
    if entry is None or entry.state is not VoiceState.READY:
        raise ApiError(404, f"voice {_shown(name)} not found", field="name", type="not_found")
    return JSONResponse(entry.describe())


async def create_voice(request: Request) -> JSONResponse:
    """``POST /voices``."""
    body = await parse_body(request, VoiceBody, max_bytes=_voice_body_limit(request))
    if body.name is None:
        raise ApiError(400, "name: required", field="name")
    return await _add(request, body, body.name, replace=body.replace)


async def put_voice(request: Request) -> JSONResponse:
    """``PUT /voices/{name}``: add or replace."""
    name = request.path_params["name"]
    body = await parse_body(request, VoiceBody, max_bytes=_voice_body_limit(request))
    if body.name is not None and body.name != name:
        raise ApiError(400, f"name: {_shown(body.name)} differs from the path's {_shown(name)}", field="name")
    return await _add(request, body, name, replace=True)


async def delete_voice(request: Request) -> JSONResponse:
    """``DELETE /voices/{name}``."""
    name = request.path_params["name"]
    await _store(request).remove(name)
    return JSONResponse({"status": "removed", "name": name})


async def add_prompt(request: Request) -> JSONResponse:
    """Legacy ``POST /add_prompt``: a prompt voice from audio + transcript."""
    body = await parse_body(request, AddPromptBody, max_bytes=_voice_body_limit(request))
    given = _one_of(body, _NAME_ALIASES)
    name = given[1] if given is not None else f"prompt-{uuid.uuid4().hex[:12]}"
    _store(request).check_name(name, field=given[0] if given is not None else "name")
    field, audio = _required(body, _AUDIO_ALIASES)
    description = await _store(request).add(
        name, prompt_audio=decode_base64(audio, field), prompt_text=body.prompt_text, replace=body.replace
    )
    description.pop("replaced")
    return JSONResponse({**description, "status": "ok", "prompt_id": name})


async def remove_prompt(request: Request) -> JSONResponse:
    """Legacy ``POST /remove_prompt``."""
    body = await parse_body(request, RemovePromptBody)
    field, name = _required(body, _NAME_ALIASES)
    _store(request).check_name(name, field=field)
    await _store(request).remove(name)
    return JSONResponse({"status": "ok", "name": name})


async def encode_latents(request: Request) -> JSONResponse:
    """``POST /encode_latents``: audio → latents (the same the voices store keeps)."""
    body = await parse_body(request, EncodeBody, max_bytes=_voice_body_limit(request))
    field, audio = _required(body, ("audio", "wav_base64"))
    latents, seconds = await _store(request).encode(decode_base64(audio, field), reference=body.reference, field=field)
    out: dict[str, Any] = {**latents_to_json(latents), "seconds": seconds, "reference": body.reference}
    if field == "wav_base64":  # the legacy response shape, for clients written against it
        info = _info(request)
        out.update(prompt_latents_base64=out["data"], feat_dim=info.latent_dim, latents_dtype="float32",
                   sample_rate=info.sample_rate, channels=1)  # fmt: skip
    return JSONResponse(out)


async def _voices(request: Request) -> JSONResponse:
    return await (create_voice if request.method == "POST" else list_voices)(request)


async def _voice(request: Request) -> JSONResponse:
    handler = {"PUT": put_voice, "DELETE": delete_voice}.get(request.method, get_voice)
    return await handler(request)


def voice_routes() -> list[Route]:
    """The voice endpoints, to mount on the app (see the module docstring).

    One route per path, so that a 405 lists every method of the path in ``Allow`` (separate
    routes per method would each answer with their own method only).
    """
    return [
        Route("/voices", _voices, methods=["GET", "POST"]),
        Route("/voices/{name}", _voice, methods=["GET", "PUT", "DELETE"]),
        Route("/add_prompt", add_prompt, methods=["POST"]),
        Route("/remove_prompt", remove_prompt, methods=["POST"]),
        Route("/encode_latents", encode_latents, methods=["POST"]),
    ]
