"""The wire format of latent patches: ``{"dtype": "float32", "shape": [T, P, D], "data": <base64>}``.

``data`` is the base64 (standard alphabet, padded) of the tensor's little-endian float32 bytes in
row-major order, so a client decodes it with ``np.frombuffer(b64decode(data), "<f4").reshape(shape)``.
``T`` counts patches, ``P`` is the model's patch size and ``D`` its latent dimension (64).

Shared by ``/encode_latents``, ``/voices`` and ``/generate``: whatever a client sends is checked
completely here (keys, types, dtype, every dimension, byte count, finiteness, magnitude, size
limit) before any of it reaches the engine, and every error names the offending field
(``prompt_latents.shape``).

Magnitude: the model's flow-matching decoder makes latents from unit Gaussian noise, so the latent
space it was trained on, and what the AudioVAE encoder gives for any audio in [-1, 1], is of order
one: a few units, a few tens at most (the random-weight test models, whose VAE is scaled to unit
spread on quiet noise, reach ~30 on full-scale audio). :data:`MAX_LATENT_ABS` sits well above that
and far below where bf16 arithmetic breaks down (3e38 latents come out as silence), so only corrupt
or hostile input is refused, with a 400 instead of a 200 carrying silence or noise.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tts_server.errors import ApiError

__all__ = ["LATENTS_DTYPE", "MAX_LATENT_ABS", "latents_from_json", "latents_to_json", "magnitude_problem"]

LATENTS_DTYPE = "float32"
MAX_LATENT_ABS = 1000.0  # largest |value| accepted in latents (see the module docstring)
_KEYS = ("dtype", "shape", "data")
_WIRE = np.dtype("<f4")  # explicit little-endian, whatever the host's byte order


def latents_to_json(t: Tensor) -> dict[str, Any]:
    """Encode a latent tensor for a JSON response.

    Args:
        t: Latent patches ``[T, P, D]`` (any float dtype, any device; sent as float32).

    Returns:
        ``{"dtype": "float32", "shape": [T, P, D], "data": base64 string}``.
    """
    array = t.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
    data = array.astype(_WIRE, copy=False).tobytes()
    return {"dtype": LATENTS_DTYPE, "shape": list(array.shape), "data": base64.b64encode(data).decode("ascii")}


def magnitude_problem(peak: float) -> str:
    """What is wrong with latents whose largest magnitude is ``peak`` (over :data:`MAX_LATENT_ABS`)."""
    return f"has values up to {peak:.3g} in magnitude; audio latents stay within +-{MAX_LATENT_ABS:g}"


def _bad(field: str, message: str, status: int = 400) -> ApiError:
    return ApiError(
        status, f"{field}: {message}", field=field, type="too_large" if status == 413 else "invalid_request"
    )


def _dimension(value: Any) -> int | None:
    """A JSON integer (not a bool, not a float) or None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def latents_from_json(obj: Any, field: str, *, patch_size: int, latent_dim: int, max_patches: int) -> Tensor:
    """Decode and validate latents a client sent.

    Args:
        obj: The parsed JSON value of the field.
        field: The field's name in the request (used in every error, e.g. ``prompt_latents``).
        patch_size: The model's patch size ``P``.
        latent_dim: The model's latent dimension ``D``.
        max_patches: Most patches ``T`` accepted (the prompt length limit).

    Returns:
        A contiguous float32 CPU tensor ``[T, P, D]`` with finite values of magnitude at most
        :data:`MAX_LATENT_ABS` (owning its memory).

    Raises:
        ApiError: 400 naming ``field`` or ``field.<key>`` for anything malformed; 413 when ``T``
            exceeds ``max_patches``.
    """
    if not isinstance(obj, dict):
        raise _bad(field, f"must be an object with keys {', '.join(_KEYS)}, got {type(obj).__name__}")
    unknown = sorted(k for k in obj if k not in _KEYS)
    if unknown:
        raise _bad(f"{field}.{unknown[0]}", f"unknown key (expected only {', '.join(_KEYS)})")
    missing = [k for k in _KEYS if k not in obj]
    if missing:
        raise _bad(f"{field}.{missing[0]}", "required")

    dtype = obj["dtype"]
    if dtype != LATENTS_DTYPE:
        raise _bad(f"{field}.dtype", f"must be {LATENTS_DTYPE!r}, got {dtype!r}")

    shape = obj["shape"]
    expected = f"[T, {patch_size}, {latent_dim}] (T patches of the model's patch_size and latent_dim)"
    if not isinstance(shape, list) or len(shape) != 3 or any(_dimension(d) is None for d in shape):
        raise _bad(f"{field}.shape", f"must be a list of 3 integers {expected}, got {shape!r}")
    patches, p, d = shape
    if patches < 1 or p != patch_size or d != latent_dim:
        raise _bad(f"{field}.shape", f"must be {expected} with T >= 1, got {shape}")
    if patches > max_patches:
        raise _bad(f"{field}.shape", f"{patches} patches exceed the limit of {max_patches}", status=413)

    data = obj["data"]
    if not isinstance(data, str):
        raise _bad(f"{field}.data", f"must be a base64 string, got {type(data).__name__}")
    n_bytes = patches * p * d * _WIRE.itemsize
    # Checked before decoding, so an oversized string costs no allocation.
    if len(data) != 4 * math.ceil(n_bytes / 3):
        raise _bad(
            f"{field}.data",
            f"has {len(data)} base64 characters; shape {shape} float32 needs {n_bytes} bytes = "
            f"{4 * math.ceil(n_bytes / 3)} characters",
        )
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _bad(f"{field}.data", f"is not valid base64 ({exc})") from exc
    if len(raw) != n_bytes:
        raise _bad(f"{field}.data", f"decodes to {len(raw)} bytes; shape {shape} float32 needs {n_bytes}")

    array = np.frombuffer(raw, dtype=_WIRE).reshape(patches, p, d)
    if not np.isfinite(array).all():
        raise _bad(f"{field}.data", "contains NaN or infinite values")
    peak = float(np.abs(array).max())
    if peak > MAX_LATENT_ABS:
        raise _bad(f"{field}.data", magnitude_problem(peak))
    # astype copies into native-endian memory the tensor owns (frombuffer's view is read-only).
    return torch.from_numpy(array.astype(np.float32))
