"""Validation of a new voice's parts (prompt, reference, LoRA files) before anything is written or encoded."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tts_server.errors import ApiError
from tts_server.voices import files as vf
from tts_server.voices.latents import MAX_LATENT_ABS, magnitude_problem
from voxcpm_engine.io.prompt_audio import AudioLimitError, AudioLimits, load_audio, read_header

MAX_PROMPT_TEXT_CHARS = 2000


@dataclass(frozen=True)
class VoiceSpec:
    """The validated parts of a voice to add."""

    prompt_text: str | None
    prompt_audio: bytes | None
    prompt_latents: Tensor | None
    ref_audio: bytes | None
    ref_latents: Tensor | None
    lora: tuple[bytes, bytes] | None  # weights file, lora_config.json document


def bad(field: str, message: str, status: int = 400) -> ApiError:
    """A 4xx naming ``field`` (413 is typed ``too_large``)."""
    return ApiError(
        status, f"{field}: {message}", field=field, type="too_large" if status == 413 else "invalid_request"
    )


def _audio_error(field: str, exc: ValueError) -> ApiError:
    """The 4xx for audio refused by :mod:`voxcpm_engine.io.prompt_audio` (413 for a limit), less the ``<bytes>:``."""
    status = 413 if isinstance(exc, AudioLimitError) else 400
    return bad(field, str(exc).removeprefix("<bytes>: "), status)


def audio_seconds(audio: bytes, field: str, limits: AudioLimits | None = None) -> float:
    """Duration of encoded audio from its header alone (nothing is decoded), checked against ``limits``.

    Raises:
        ApiError: 400 naming ``field`` when it cannot be decoded, declares no samples or no length, or
            its rate is below ``limits.min_sample_rate``; 413 when it is over ``limits`` (channels,
            rate, seconds, decoded samples, samples per byte: see :class:`voxcpm_engine.io.prompt_audio.AudioLimits`).
    """
    try:
        return read_header(audio, limits).seconds
    except ValueError as exc:
        raise _audio_error(field, exc) from exc


def decode_audio(audio: bytes, field: str, *, target_sr: int, limits: AudioLimits) -> tuple[np.ndarray, float]:
    """Decode untrusted prompt audio for the VAE encoder: mono float32 at ``target_sr``, and its seconds.

    The header is checked against ``limits`` before any sample is decoded, and the decode reads no
    more than the checked header declares (:func:`voxcpm_engine.io.prompt_audio.load_audio`), so what one upload
    can cost is bounded by the limits, not by how well it compresses. Blocking (the most the default
    limits allow, 30 s of 192 kHz stereo, takes 0.22 s of CPU and 78 MB at its peak:
    ``scripts/prompt_decode_cost.py``): run it in a worker thread, off the event loop.

    Raises:
        ApiError: As :func:`audio_seconds`; also 400 when the samples cannot be decoded or are not finite.
    """
    seconds = audio_seconds(audio, field, limits)  # the header, checked once
    try:
        samples = load_audio(audio, target_sr)  # reads no more frames than the checked header declares
    except ValueError as exc:
        raise _audio_error(field, exc) from exc
    return samples, seconds


def lora_document(config: Any) -> bytes:
    """``lora_config.json`` from the official document or just its inner ``lora_config`` object."""
    if not isinstance(config, dict):
        raise bad("lora_config", f"must be an object, got {type(config).__name__}")
    doc = config if "lora_config" in config else {"base_model": None, "lora_config": config}
    data = json.dumps(doc, indent=2, ensure_ascii=False).encode()
    if len(data) > vf.MAX_JSON_BYTES:
        raise bad("lora_config", f"is larger than {vf.MAX_JSON_BYTES} bytes")
    return data


def check_safetensors(data: bytes) -> None:
    """Cheap framing check (8-byte header size + JSON header) before anything is written; the engine
    validates every tensor when the adapter is registered."""
    size = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    try:
        header = json.loads(data[8 : 8 + size]) if 0 < size <= len(data) - 8 else None
    except ValueError:
        header = None
    if not isinstance(header, dict):
        raise bad("lora_weights", "is not a safetensors file (lora_weights.safetensors)")


def check_latents(
    t: Any, field: str, *, patch_size: int, latent_dim: int, max_patches: int, limit: bool = True
) -> Tensor:
    """Validate latents ``[T, patch_size, latent_dim]``: fp32 CPU.

    Values must be finite and within ``MAX_LATENT_ABS`` (why: :mod:`tts_server.voices.latents`); at most
    ``max_patches`` patches if ``limit``.
    """
    if not isinstance(t, Tensor):
        raise bad(field, f"must be a tensor, got {type(t).__name__}")
    if t.dim() != 3 or t.shape[0] < 1 or tuple(t.shape[1:]) != (patch_size, latent_dim):
        raise bad(field, f"must have shape [T, {patch_size}, {latent_dim}], got {list(t.shape)}")
    if not t.is_floating_point():
        raise bad(field, f"must be floating point, got {t.dtype}")
    t = t.detach().to(device="cpu", dtype=torch.float32).contiguous()
    if not bool(torch.isfinite(t).all()):
        raise bad(field, "contains NaN or infinite values")
    peak = float(t.abs().max())
    if peak > MAX_LATENT_ABS:
        raise bad(field, magnitude_problem(peak))
    if limit and t.shape[0] > max_patches:
        raise bad(field, f"{t.shape[0]} patches exceed the limit of {max_patches}", 413)
    return t


def check_pairing(
    *,
    prompt_audio: bool,
    prompt_latents: bool,
    prompt_text: str | None,
    ref_audio: bool,
    ref_latents: bool,
    model_version: int,
) -> None:
    """The rules a voice's parts follow together: the same for a stored voice and one sent with a request.

    Raises:
        ApiError: 400 naming the field at fault.
    """
    if prompt_audio and prompt_latents:
        raise bad("prompt_latents", "prompt_audio and prompt_latents are alternatives: give one")
    has_prompt = prompt_audio or prompt_latents
    if has_prompt and prompt_text is None:
        raise bad("prompt_text", "required with prompt_audio/prompt_latents (the prompt's transcript)")
    if prompt_text is not None:
        if not has_prompt:
            raise bad("prompt_text", "given without prompt_audio or prompt_latents")
        if not isinstance(prompt_text, str) or not prompt_text.strip():
            raise bad("prompt_text", "must be a non-empty string")
    if ref_audio and ref_latents:
        raise bad("ref_latents", "ref_audio and ref_latents are alternatives: give one")
    if (ref_audio or ref_latents) and model_version != 2:
        field = "ref_audio" if ref_audio else "ref_latents"
        raise bad(field, f"reference voices need a VoxCPM2 model; this server runs VoxCPM{model_version}")


def check_inputs(
    prompt_audio: bytes | None,
    prompt_text: str | None,
    prompt_latents: Tensor | None,
    ref_audio: bytes | None,
    ref_latents: Tensor | None,
    weights: bytes | None,
    config: dict[str, Any] | None,
    *,
    model_version: int,
    patch_size: int,
    latent_dim: int,
    max_patches: int,
) -> VoiceSpec:
    """Validate the parts of a new voice together; every error names its field."""
    check_pairing(
        prompt_audio=prompt_audio is not None,
        prompt_latents=prompt_latents is not None,
        prompt_text=prompt_text,
        ref_audio=ref_audio is not None,
        ref_latents=ref_latents is not None,
        model_version=model_version,
    )
    has_prompt = prompt_audio is not None or prompt_latents is not None
    if prompt_text is not None and len(prompt_text) > MAX_PROMPT_TEXT_CHARS:
        raise bad("prompt_text", f"longer than {MAX_PROMPT_TEXT_CHARS} characters")
    if (weights is None) != (config is None):
        missing = "lora_config" if config is None else "lora_weights"
        raise bad(missing, "lora_weights and lora_config go together: give both")
    if not has_prompt and ref_audio is None and ref_latents is None and weights is None:
        raise ApiError(400, "a voice needs prompt audio/latents + prompt_text, reference audio/latents, or a LoRA")
    for field, value in (("prompt_audio", prompt_audio), ("ref_audio", ref_audio), ("lora_weights", weights)):
        if value is not None and (not isinstance(value, bytes) or not value):
            raise bad(field, "must be non-empty bytes")
    lora = None
    if weights is not None:
        check_safetensors(weights)
        lora = (weights, lora_document(config))
    dims = dict(patch_size=patch_size, latent_dim=latent_dim, max_patches=max_patches)
    prompt = check_latents(prompt_latents, "prompt_latents", **dims) if prompt_latents is not None else None
    ref = check_latents(ref_latents, "ref_latents", **dims) if ref_latents is not None else None
    return VoiceSpec(prompt_text, prompt_audio, prompt, ref_audio, ref, lora)
