"""Prompt/reference audio front end: decode, downmix, resample, pad (spec §6.1, §11 item 9).

Mirrors the reference's loaders without torchaudio/librosa: v2 calls ``librosa.load(path, sr, mono=True)``
(soundfile decode → channel mean → soxr "HQ" resample → length fixed to ``ceil(n · target / orig)``),
which is what :func:`load_audio` does step for step. v1 used torchaudio's windowed-sinc resampler; we use
the same soxr path for it too and accept the small difference (both are band-limited, same length).
"""

from __future__ import annotations

import io
import math
import os
from typing import Literal

import numpy as np
import soundfile as sf
import soxr

__all__ = ["load_audio", "pad_to_multiple"]

# soxr "HQ" (20-bit precision, 95% passband) is librosa's default ``res_type="soxr_hq"``, i.e. exactly what
# the v2 reference feeds its VAE; "VHQ" would be marginally cleaner but diverge from the reference's samples.
_RESAMPLE_QUALITY = soxr.HQ


def _decode(source: str | os.PathLike[str] | bytes) -> tuple[np.ndarray, int]:
    """Decoded samples ``[frames, channels]`` (float32, integer PCM scaled to [-1, 1)) and the rate."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        name, target = "<bytes>", io.BytesIO(bytes(source))
        empty = len(target.getbuffer()) == 0
    elif isinstance(source, (str, os.PathLike)):
        name = target = os.fspath(source)
        if not os.path.isfile(target):
            raise FileNotFoundError(f"{name}: audio file not found")
        empty = os.path.getsize(target) == 0
    else:
        raise TypeError(f"audio source must be a path or bytes, got {type(source).__name__}")
    if empty:
        raise ValueError(f"{name}: audio data is empty (0 bytes)")
    try:
        # Read as librosa does (open, read all, no seek): sf.read() seeks first, which for mp3 restarts the
        # decoder and changes samples by 1 ulp.
        with sf.SoundFile(target) as f:
            sr = f.samplerate
            data = f.read(frames=-1, dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, TypeError) as exc:  # libsndfile reports bad data as RuntimeError
        raise ValueError(f"{name}: cannot decode audio (supported: wav, flac, ogg, mp3): {exc}") from exc
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise ValueError(f"{name}: audio has no samples")
    if not np.isfinite(data).all():
        raise ValueError(f"{name}: audio contains NaN or infinite samples")
    return data, int(sr)


def load_audio(source: str | os.PathLike[str] | bytes, target_sr: int) -> np.ndarray:
    """Decode an audio file to mono float32 at ``target_sr``.

    Channels are averaged (as ``librosa.to_mono``/the v1 reference do). Samples are not clipped: the
    reference feeds decoded values to the VAE as they are (float files may exceed ±1; so may resampling
    overshoot by a hair).

    Args:
        source: Path to, or the bytes of, a wav/flac/ogg/mp3 file.
        target_sr: Output sample rate in Hz (the VAE's encoder rate).

    Returns:
        1-D float32 array, nominally in [-1, 1].

    Raises:
        FileNotFoundError: ``source`` is a path that does not exist.
        ValueError: The data cannot be decoded, has no samples or contains NaN/inf; or ``target_sr`` <= 0.
    """
    if not isinstance(target_sr, (int, np.integer)) or isinstance(target_sr, bool) or target_sr <= 0:
        raise ValueError(f"target_sr must be a positive int, got {target_sr!r}")
    data, sr = _decode(source)
    # Same reduction layout as librosa (mean over axis 0 of a [channels, frames] view), hence same rounding.
    wav = data[:, 0] if data.shape[1] == 1 else np.mean(data.T, axis=0, dtype=np.float32)
    if sr != target_sr:
        n_out = math.ceil(wav.shape[0] * target_sr / sr)
        wav = soxr.resample(wav, sr, int(target_sr), quality=_RESAMPLE_QUALITY)
        # soxr rounds the output length; librosa/torchaudio both use ceil (librosa zero-pads to it).
        if wav.shape[0] < n_out:
            wav = np.pad(wav, (0, n_out - wav.shape[0]))
        wav = wav[:n_out]
    return np.ascontiguousarray(wav, dtype=np.float32)


def pad_to_multiple(wav: np.ndarray, multiple: int, side: Literal["left", "right"]) -> np.ndarray:
    """Zero-pad the last axis up to a multiple of ``multiple`` samples.

    v1 prompts and v2 continuation prompts pad on the left (the real audio stays adjacent to the text
    that follows it); v2 reference audio pads on the right. Nothing is added when the length is already
    a multiple (zero length included), as in the reference.

    Args:
        wav: Samples, padded along the last axis.
        multiple: Patch length in samples (``patch_size · hop``, e.g. 2560 for v2).
        side: Where the zeros go.

    Returns:
        The padded array (``wav`` itself when no padding is needed).

    Raises:
        ValueError: ``multiple`` <= 0 or ``side`` is not "left"/"right".
    """
    if multiple <= 0:
        raise ValueError(f"multiple must be positive, got {multiple}")
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    rem = wav.shape[-1] % multiple
    if rem == 0:
        return wav
    width = [(0, 0)] * (wav.ndim - 1) + [(multiple - rem, 0) if side == "left" else (0, multiple - rem)]
    return np.pad(wav, width)
