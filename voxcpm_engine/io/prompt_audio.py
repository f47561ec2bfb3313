"""Prompt/reference audio front end: decode, downmix, resample, pad (spec §6.1, §11 item 9).

Mirrors the reference's loaders without torchaudio/librosa: v2 calls ``librosa.load(path, sr, mono=True)``
(soundfile decode → channel mean → soxr "HQ" resample → length fixed to ``ceil(n · target / orig)``),
which is what :func:`load_audio` does step for step. v1 used torchaudio's windowed-sinc resampler; we use
the same soxr path for it too and accept the small difference (both are band-limited, same length).

Untrusted audio (a server's uploads) is decoded under :class:`AudioLimits`: the container's header is
read and checked first, so a small compressed file that would decode to a huge array (a high rate,
many channels, a long or implausibly well-compressed stream) is refused before any sample is
decoded, and the decode itself never reads more frames than the checked header declares.
"""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import numpy as np
import soundfile as sf
import soxr

__all__ = [
    "AudioHeader",
    "AudioLimitError",
    "AudioLimits",
    "check_samples",
    "load_audio",
    "pad_to_multiple",
    "read_header",
]

# soxr "HQ" (20-bit precision, 95% passband) is librosa's default ``res_type="soxr_hq"``, i.e. exactly what
# the v2 reference feeds its VAE; "VHQ" would be marginally cleaner but diverge from the reference's samples.
_RESAMPLE_QUALITY = soxr.HQ

# libsndfile reports a stream whose header does not state its length (a FLAC written as a stream has
# 0 in STREAMINFO) as SF_COUNT_MAX frames; anything this large is "unknown", never a real length.
_UNKNOWN_FRAMES = 2**62

_OBJECT_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")

AudioSource = str | os.PathLike[str] | bytes


class AudioLimitError(ValueError):
    """The audio is over one of the :class:`AudioLimits` (a server answers 413)."""


@dataclass(frozen=True)
class AudioHeader:
    """What an audio file's header declares, read without decoding any sample.

    Attributes:
        frames: Frames (samples per channel) the header declares.
        sample_rate: Frames per second.
        channels: Channels per frame.
        size: Bytes of the encoded file.
    """

    frames: int
    sample_rate: int
    channels: int
    size: int

    @property
    def seconds(self) -> float:
        """Declared duration."""
        return self.frames / self.sample_rate

    @property
    def samples(self) -> int:
        """Samples a full decode yields (``frames × channels``, float32 each)."""
        return self.frames * self.channels


@dataclass(frozen=True)
class AudioLimits:
    """Bounds on untrusted audio, checked on the header before decoding (see :meth:`check`).

    The defaults bound what one prompt can cost to decode: at most ``max_seconds`` of audio, and at
    most ``max_seconds × max_samples_per_second`` decoded samples (2 channels at 192 kHz or 8 at
    48 kHz: 11.5 M samples, 46 MB of float32, for 30 s). A voice prompt is a recording of one
    speaker: every microphone, phone and editor export fits (mono or stereo, 8 kHz telephone
    audio to 192 kHz studio masters). Beyond that a file costs decode time and memory and adds
    nothing once it is downmixed and resampled to the encoder's rate.

    Attributes:
        max_seconds: Longest declared duration.
        max_channels: Most channels (8: the most FLAC carries; WAV can declare 65535).
        min_sample_rate: Lowest rate (8 kHz telephone audio; below it speech is unintelligible).
        max_sample_rate: Highest rate (192 kHz, the highest common studio rate).
        max_samples_per_second: Decoded samples (all channels) per second of audio.
        max_samples_per_byte: Declared samples per byte of the file. Real recordings measure below
            ~100 (Opus at 6 kbps: ~75; FLAC speech: ~1), digital silence from common encoders below
            ~1000 (libsndfile's FLAC: ~300 mono, ~550 stereo, ~920 for 8 channels); only crafted
            files (e.g. FLAC frames of 64 K silent samples) get past it.
    """

    max_seconds: float
    max_channels: int = 8
    min_sample_rate: int = 8_000
    max_sample_rate: int = 192_000
    max_samples_per_second: int = 2 * 192_000
    max_samples_per_byte: int = 1024

    def __post_init__(self) -> None:
        if not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0, got {self.max_seconds!r}")
        if not 1 <= self.min_sample_rate <= self.max_sample_rate:
            raise ValueError(f"need 1 <= min_sample_rate <= max_sample_rate, got {self}")
        if min(self.max_channels, self.max_samples_per_second, self.max_samples_per_byte) < 1:
            raise ValueError(f"channel and sample limits must be >= 1, got {self}")

    @property
    def max_samples(self) -> int:
        """Most decoded samples (frames × channels) of one file."""
        return math.floor(self.max_seconds * self.max_samples_per_second)

    def check(self, header: AudioHeader) -> None:
        """Refuse a header over the limits.

        Raises:
            AudioLimitError: Too many channels, a rate above ``max_sample_rate``, too long, too many
                decoded samples, or more samples than the file's size makes plausible.
            ValueError: A rate below ``min_sample_rate``, or a header that does not state its length.
        """
        if header.channels > self.max_channels:
            raise AudioLimitError(f"audio has {header.channels} channels; at most {self.max_channels} are accepted")
        if header.sample_rate > self.max_sample_rate:
            raise AudioLimitError(
                f"sample rate {header.sample_rate} Hz is above the limit of {self.max_sample_rate} Hz"
            )
        if header.sample_rate < self.min_sample_rate:
            raise ValueError(f"sample rate {header.sample_rate} Hz is below the minimum of {self.min_sample_rate} Hz")
        if header.frames >= _UNKNOWN_FRAMES:
            raise ValueError("the audio header does not state its length (e.g. a FLAC written as a stream)")
        if header.seconds > self.max_seconds:
            raise AudioLimitError(f"{header.seconds:.2f} s of audio exceeds the limit of {self.max_seconds:g} s")
        if header.samples > self.max_samples:
            raise AudioLimitError(
                f"{header.frames} frames x {header.channels} channels = {header.samples} decoded samples exceed "
                f"the limit of {self.max_samples} ({self.max_samples_per_second} per second of audio)"
            )
        if header.samples > self.max_samples_per_byte * header.size:
            raise AudioLimitError(
                f"{header.samples} decoded samples from {header.size} bytes is not plausible audio "
                f"(at most {self.max_samples_per_byte} samples per byte)"
            )


def _describe(exc: BaseException) -> str:
    """The decoder's message without Python object reprs (``<_io.BytesIO object at 0x...>``)."""
    text = exc.error_string if isinstance(exc, sf.LibsndfileError) else str(exc)
    return _OBJECT_REPR.sub("<data>", text).strip()


@contextmanager
def _open(source: AudioSource) -> Iterator[tuple[str, sf.SoundFile, int]]:
    """The opened file (header parsed, nothing decoded), its name for messages and its size in bytes."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        name, target = "<bytes>", io.BytesIO(bytes(source))
        size = len(target.getbuffer())
    elif isinstance(source, (str, os.PathLike)):
        name = target = os.fspath(source)
        if not os.path.isfile(target):
            raise FileNotFoundError(f"{name}: audio file not found")
        size = os.path.getsize(target)
    else:
        raise TypeError(f"audio source must be a path or bytes, got {type(source).__name__}")
    if size == 0:
        raise ValueError(f"{name}: audio data is empty (0 bytes)")
    try:
        f = sf.SoundFile(target)
    except (sf.SoundFileError, RuntimeError, TypeError) as exc:  # libsndfile reports bad data as RuntimeError
        raise ValueError(f"{name}: cannot decode audio (supported: wav, flac, ogg, mp3): {_describe(exc)}") from exc
    with f:
        yield name, f, size


def _header(f: sf.SoundFile, size: int) -> AudioHeader:
    return AudioHeader(frames=int(f.frames), sample_rate=int(f.samplerate), channels=int(f.channels), size=size)


def read_header(source: AudioSource, limits: AudioLimits | None = None) -> AudioHeader:
    """Read (and with ``limits``, check) an audio file's header without decoding any sample.

    Raises:
        FileNotFoundError: ``source`` is a path that does not exist.
        AudioLimitError: Over ``limits`` (see :meth:`AudioLimits.check`).
        ValueError: Empty or undecodable data, a header that declares no samples, or a rate below
            ``limits.min_sample_rate``.
    """
    with _open(source) as (name, f, size):
        header = _header(f, size)
    _check_header(name, header, limits)
    return header


def _check_header(name: str, header: AudioHeader, limits: AudioLimits | None) -> None:
    if header.frames <= 0 or header.channels <= 0 or header.sample_rate <= 0:
        raise ValueError(f"{name}: audio has no samples")
    if limits is not None:
        try:
            limits.check(header)
        except ValueError as exc:  # AudioLimitError included: re-raised as the same type, named
            raise type(exc)(f"{name}: {exc}") from None


def _decode(source: AudioSource, limits: AudioLimits | None = None) -> tuple[np.ndarray, int]:
    """Decoded samples ``[frames, channels]`` (float32, integer PCM scaled to [-1, 1)) and the rate.

    With ``limits`` the header is checked before anything is decoded, and at most the frames it
    declares are read (soundfile allocates the output array from that count; libsndfile fills in
    fewer when the data ends early), so the checked header bounds the decoded array.
    """
    with _open(source) as (name, f, size):
        header = _header(f, size)
        if limits is not None:
            _check_header(name, header, limits)
        if header.frames >= _UNKNOWN_FRAMES:  # soundfile would try to allocate 2^63 frames
            raise ValueError(f"{name}: the audio header does not state its length (e.g. a FLAC written as a stream)")
        try:
            # Read as librosa does (open, read all, no seek): sf.read() seeks first, which for mp3 restarts the
            # decoder and changes samples by 1 ulp. Reading in blocks would too (soundfile seeks after each).
            data = f.read(frames=-1, dtype="float32", always_2d=True)
        except (sf.SoundFileError, RuntimeError, TypeError) as exc:
            raise ValueError(f"{name}: cannot decode audio: {_describe(exc)}") from exc
        sr = header.sample_rate
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise ValueError(f"{name}: audio has no samples")
    if not np.isfinite(data).all():
        raise ValueError(f"{name}: audio contains NaN or infinite samples")
    return data, int(sr)


def load_audio(source: AudioSource, target_sr: int, *, limits: AudioLimits | None = None) -> np.ndarray:
    """Decode an audio file to mono float32 at ``target_sr``.

    Channels are averaged (as ``librosa.to_mono``/the v1 reference do). Samples are not clipped: the
    reference feeds decoded values to the VAE as they are (float files may exceed ±1; so may resampling
    overshoot by a hair). ``limits`` only refuses input: what passes decodes to exactly the samples it
    would without them.

    Args:
        source: Path to, or the bytes of, a wav/flac/ogg/mp3 file.
        target_sr: Output sample rate in Hz (the VAE's encoder rate).
        limits: Bounds checked on the header before decoding (untrusted input); None: no bounds.

    Returns:
        1-D float32 array, nominally in [-1, 1].

    Raises:
        FileNotFoundError: ``source`` is a path that does not exist.
        AudioLimitError: Over ``limits``.
        ValueError: The data cannot be decoded, has no samples or contains NaN/inf; or ``target_sr`` <= 0.
    """
    if not isinstance(target_sr, (int, np.integer)) or isinstance(target_sr, bool) or target_sr <= 0:
        raise ValueError(f"target_sr must be a positive int, got {target_sr!r}")
    data, sr = _decode(source, limits)
    # Same reduction layout as librosa (mean over axis 0 of a [channels, frames] view), hence same rounding.
    wav = data[:, 0] if data.shape[1] == 1 else np.mean(data.T, axis=0, dtype=np.float32)
    del data  # the multichannel array can be the largest one here: free it before resampling
    if sr != target_sr:
        n_out = math.ceil(wav.shape[0] * target_sr / sr)
        wav = soxr.resample(wav, sr, int(target_sr), quality=_RESAMPLE_QUALITY)
        # soxr rounds the output length; librosa/torchaudio both use ceil (librosa zero-pads to it).
        if wav.shape[0] < n_out:
            wav = np.pad(wav, (0, n_out - wav.shape[0]))
        wav = wav[:n_out]
    return np.ascontiguousarray(wav, dtype=np.float32)


def check_samples(samples: object) -> np.ndarray:
    """Validate decoded prompt audio as the VAE encoder takes it: 1-D float32, non-empty, finite.

    The rate cannot be seen in the samples: the caller vouches that they are at the encoder's rate
    (what :func:`load_audio` returns for ``target_sr = ModelConfig.encode_sample_rate``).

    Returns:
        ``samples`` as a C-contiguous array (the same object when it already is one).

    Raises:
        ValueError: Not a numpy array, not 1-D float32, empty, or containing NaN/inf.
    """
    if not isinstance(samples, np.ndarray):
        raise ValueError(f"prompt samples must be a numpy array, got {type(samples).__name__}")
    if samples.ndim != 1 or samples.dtype != np.float32:
        raise ValueError(f"prompt samples must be 1-D float32 (mono), got {samples.dtype} of shape {samples.shape}")
    if samples.shape[0] == 0:
        raise ValueError("prompt samples are empty")
    if not np.isfinite(samples).all():
        raise ValueError("prompt samples contain NaN or infinite values")
    return np.ascontiguousarray(samples)


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
