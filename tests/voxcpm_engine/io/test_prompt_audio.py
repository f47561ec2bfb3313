"""voxcpm_engine.io.prompt_audio: decode/downmix/resample round trips, padding, errors."""

from __future__ import annotations

import io
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.audio_samples import silence as _silence
from voxcpm_engine.io.prompt_audio import (
    AudioLimitError,
    AudioLimits,
    check_samples,
    load_audio,
    pad_to_multiple,
    read_header,
)

FORMATS = [
    ("wav", "WAV", "PCM_16"),
    ("flac", "FLAC", "PCM_16"),
    ("ogg", "OGG", "VORBIS"),
    ("mp3", "MP3", "MPEG_LAYER_III"),
]


def _sine(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(sr * seconds))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _encode(wav: np.ndarray, sr: int, fmt: str, subtype: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wav, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def _peak_freq(wav: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    return float(np.argmax(spec) * sr / len(wav))


@pytest.mark.parametrize(("ext", "fmt", "subtype"), FORMATS)
@pytest.mark.parametrize("target_sr", [16000, 44100, 48000])
def test_round_trip_from_path(tmp_path: Path, ext: str, fmt: str, subtype: str, target_sr: int) -> None:
    src_sr, seconds = 22050, 1.0
    path = tmp_path / f"a.{ext}"
    sf.write(path, _sine(440.0, src_sr, seconds), src_sr, format=fmt, subtype=subtype)
    out = load_audio(path, target_sr)
    assert out.dtype == np.float32 and out.ndim == 1 and out.flags.c_contiguous
    # Lossy codecs may shift length by an encoder frame; lossless ones are exact (ceil rule).
    tol = 0 if fmt in ("WAV", "FLAC") else int(0.06 * target_sr)
    assert abs(len(out) - int(np.ceil(seconds * src_sr * target_sr / src_sr))) <= tol
    assert abs(_peak_freq(out, target_sr) - 440.0) < 3.0
    assert 0.4 < np.abs(out).max() < 0.6


@pytest.mark.parametrize(("ext", "fmt", "subtype"), FORMATS)
def test_bytes_equal_path(tmp_path: Path, ext: str, fmt: str, subtype: str) -> None:
    data = _encode(_sine(300.0, 16000, 0.5), 16000, fmt, subtype)
    path = tmp_path / f"b.{ext}"
    path.write_bytes(data)
    np.testing.assert_array_equal(load_audio(data, 16000), load_audio(str(path), 16000))


def test_no_resample_when_rates_match() -> None:
    wav = _sine(1000.0, 16000, 0.25)
    out = load_audio(_encode(wav, 16000, "WAV", "FLOAT"), 16000)
    np.testing.assert_array_equal(out, wav)


@pytest.mark.parametrize("target_sr", [16000, 44100, 48000])
@pytest.mark.parametrize("src_sr", [16000, 24000, 44100, 48000])
def test_resample_keeps_frequency_and_length(src_sr: int, target_sr: int) -> None:
    n = src_sr // 2 + 7  # not a whole number of output samples for most pairs
    wav = _sine(1234.0, src_sr, n / src_sr)
    out = load_audio(_encode(wav, src_sr, "WAV", "FLOAT"), target_sr)
    assert len(out) == int(np.ceil(n * target_sr / src_sr))
    assert abs(_peak_freq(out, target_sr) - 1234.0) < 4.0
    # Away from the edges a band-limited sine survives resampling almost unchanged in level.
    mid = out[len(out) // 4 : 3 * len(out) // 4]
    assert abs(np.sqrt(np.mean(mid**2)) - 0.5 / np.sqrt(2)) < 5e-3


def test_stereo_downmix_is_channel_mean() -> None:
    left, right = _sine(440.0, 16000, 0.2), _sine(660.0, 16000, 0.2, amp=0.25)
    stereo = np.stack([left, right], axis=1)
    out = load_audio(_encode(stereo, 16000, "WAV", "FLOAT"), 16000)
    np.testing.assert_array_equal(out, ((left + right) / 2).astype(np.float32))
    cancel = load_audio(_encode(np.stack([left, -left], axis=1), 16000, "WAV", "FLOAT"), 16000)
    assert np.abs(cancel).max() == 0.0


def test_int_pcm_scaling() -> None:
    pcm = np.array([0, 16384, -32768, 32767], dtype=np.int16)
    buf = io.BytesIO()
    sf.write(buf, pcm, 16000, format="WAV", subtype="PCM_16")
    np.testing.assert_allclose(load_audio(buf.getvalue(), 16000), pcm / 32768.0, atol=0)


@pytest.mark.parametrize(
    ("source", "match"),
    [
        (b"", "empty"),
        (b"garbage bytes that are not audio" * 4, "cannot decode"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "cannot decode"),
        (bytes(range(256)) * 8, "cannot decode"),
    ],
)
def test_bad_bytes(source: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_audio(source, 16000)


def test_zero_samples_and_non_finite() -> None:
    with pytest.raises(ValueError, match="no samples"):
        load_audio(_encode(np.zeros(0, np.float32), 16000, "WAV", "PCM_16"), 16000)
    bad = _sine(440.0, 16000, 0.1)
    bad[10] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        load_audio(_encode(bad, 16000, "WAV", "FLOAT"), 16000)
    bad[10] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        load_audio(_encode(bad, 16000, "WAV", "FLOAT"), 44100)


def test_path_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_audio(tmp_path / "missing.wav", 16000)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        load_audio(empty, 16000)
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(b"\x00" * 1000)
    with pytest.raises(ValueError, match="junk.mp3"):
        load_audio(junk, 16000)
    with pytest.raises(ValueError, match="target_sr"):
        load_audio(_encode(_sine(440.0, 16000, 0.1), 16000, "WAV", "PCM_16"), 0)
    with pytest.raises(TypeError):
        load_audio(12345, 16000)  # type: ignore[arg-type]


def test_pad_left_and_right() -> None:
    wav = np.arange(1, 6, dtype=np.float32)
    left = pad_to_multiple(wav, 4, "left")
    right = pad_to_multiple(wav, 4, "right")
    np.testing.assert_array_equal(left, [0, 0, 0, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(right, [1, 2, 3, 4, 5, 0, 0, 0])
    assert left.dtype == np.float32 and right.dtype == np.float32


@pytest.mark.parametrize("n", [1, 2559, 2560, 2561, 7056 * 3 - 1])
@pytest.mark.parametrize("multiple", [2560, 1280, 7056])
def test_pad_lengths(n: int, multiple: int) -> None:
    wav = np.ones(n, np.float32)
    for side in ("left", "right"):
        out = pad_to_multiple(wav, multiple, side)
        assert len(out) % multiple == 0 and len(out) - n < multiple
        assert len(out) == (n if n % multiple == 0 else n + multiple - n % multiple)
        assert out.sum() == n  # only zeros were added
        real = out[len(out) - n :] if side == "left" else out[:n]
        np.testing.assert_array_equal(real, wav)


def test_pad_no_op_and_errors() -> None:
    wav = np.ones(2560, np.float32)
    assert pad_to_multiple(wav, 2560, "left") is wav
    assert len(pad_to_multiple(np.zeros(0, np.float32), 2560, "right")) == 0
    two_d = pad_to_multiple(np.ones((1, 3), np.float32), 4, "left")
    np.testing.assert_array_equal(two_d, [[0, 1, 1, 1]])
    with pytest.raises(ValueError, match="multiple"):
        pad_to_multiple(wav, 0, "left")
    with pytest.raises(ValueError, match="side"):
        pad_to_multiple(wav, 4, "center")  # type: ignore[arg-type]


# --- limits on untrusted audio ----------------------------------------------------------------------

LIMITS = AudioLimits(max_seconds=2.0)  # 768 000 decoded samples at most


def _streamed_flac() -> bytes:
    """A FLAC whose STREAMINFO gives 0 samples ("unknown"), as one written as a stream has."""
    data = bytearray(_encode(_sine(440.0, 16000, 0.5), 16000, "FLAC", "PCM_16"))
    packed = int.from_bytes(data[18:26], "big") & ~((1 << 36) - 1)  # the low 36 bits: total samples
    data[18:26] = packed.to_bytes(8, "big")
    return bytes(data)


@pytest.mark.parametrize(
    ("audio", "match"),
    [
        (_silence(655_000, 8, 1.0), "sample rate 655000 Hz is above the limit of 192000 Hz"),
        (_silence(192_000, 8, 1.0), "= 1536000 decoded samples exceed the limit of 768000"),
        (_silence(16_000, 16, 0.1, "WAV"), "audio has 16 channels; at most 8 are accepted"),
        (_silence(16_000, 1, 3.0), "3.00 s of audio exceeds the limit of 2 s"),
    ],
    ids=["rate", "samples", "channels", "seconds"],
)
def test_limits_refuse_from_the_header(audio: bytes, match: str) -> None:
    with pytest.raises(AudioLimitError, match=match):
        read_header(audio, LIMITS)
    with pytest.raises(AudioLimitError, match=match):
        load_audio(audio, 16000, limits=LIMITS)
    assert len(load_audio(audio, 16000)) > 0  # without limits (trusted input) the same file decodes


def test_too_low_a_rate_and_an_unknown_length_are_invalid_not_too_large(tmp_path: Path) -> None:
    low = _encode(_sine(440.0, 4000, 0.5), 4000, "WAV", "PCM_16")
    with pytest.raises(ValueError, match="sample rate 4000 Hz is below the minimum of 8000 Hz") as err:
        load_audio(low, 16000, limits=LIMITS)
    assert not isinstance(err.value, AudioLimitError)
    streamed = _streamed_flac()
    assert sf.info(io.BytesIO(streamed)).frames >= 2**62  # what libsndfile makes of "unknown"
    for limits in (LIMITS, None):  # without limits too: soundfile would try to allocate 2^63 frames
        with pytest.raises(ValueError, match="does not state its length") as err:
            load_audio(streamed, 16000, limits=limits)
        assert not isinstance(err.value, AudioLimitError)


def test_refusal_decodes_nothing() -> None:
    # The file: 170 KB of FLAC holding 30 s of 8-channel 655 kHz silence (157 M samples; its
    # decode took ~2.6 s and ~750 MB). With its frames destroyed, a decode would fail with "cannot
    # decode": the limit error shows that only the header was read.
    bomb = bytearray(_silence(655_000, 8, 30.0))
    bomb[4096:] = bytes(len(bomb) - 4096)
    limits = AudioLimits(max_seconds=30.0)
    t0 = time.perf_counter()
    with pytest.raises(AudioLimitError, match="above the limit"):
        load_audio(bytes(bomb), 16000, limits=limits)
    assert time.perf_counter() - t0 < 0.2
    corrupt = bytearray(_encode(_sine(440.0, 16000, 1.0), 16000, "FLAC", "PCM_16"))
    corrupt[200:] = bytes(len(corrupt) - 200)
    with pytest.raises(ValueError, match="cannot decode"):
        load_audio(bytes(corrupt), 16000, limits=limits)


def test_samples_per_byte_refuses_implausible_compression() -> None:
    quiet = _silence(16_000, 1, 2.0)  # ~300 samples per byte: passes the default of 1024
    header = read_header(quiet, LIMITS)
    assert 100 < header.samples / header.size < LIMITS.max_samples_per_byte
    strict = AudioLimits(max_seconds=2.0, max_samples_per_byte=100)
    with pytest.raises(AudioLimitError, match=r"not plausible audio \(at most 100 samples per byte\)"):
        load_audio(quiet, 16000, limits=strict)
    tone = _encode(_sine(440.0, 16000, 2.0), 16000, "FLAC", "PCM_16")  # real audio: a few samples per byte
    assert len(load_audio(tone, 16000, limits=strict)) == 32000


@pytest.mark.parametrize(
    ("sr", "channels", "seconds"),
    [(8_000, 1, 2.0), (192_000, 2, 2.0), (48_000, 8, 2.0)],
    ids=["lowest-rate", "highest-rate-stereo", "most-channels"],
)
def test_limits_accept_their_edges(sr: int, channels: int, seconds: float) -> None:
    wav = np.repeat(_sine(300.0, sr, seconds)[:, None], channels, axis=1)
    data = _encode(wav, sr, "FLAC", "PCM_24")
    header = read_header(data, LIMITS)
    assert (header.sample_rate, header.channels, header.seconds) == (sr, channels, seconds)
    assert header.samples <= LIMITS.max_samples
    assert len(load_audio(data, 16000, limits=LIMITS)) == int(seconds * 16000)


@pytest.mark.parametrize(("ext", "fmt", "subtype"), FORMATS)
@pytest.mark.parametrize("channels", [1, 2])
def test_limits_do_not_change_what_passes(ext: str, fmt: str, subtype: str, channels: int) -> None:
    # Bit for bit what the unlimited (reference) path decodes: e.g. mp3 read in blocks would differ.
    wav = np.stack([_sine(300.0 + 50 * c, 22050, 1.3) for c in range(channels)], axis=1)
    data = _encode(wav, 22050, fmt, subtype)
    for target_sr in (16000, 22050):
        np.testing.assert_array_equal(load_audio(data, target_sr, limits=LIMITS), load_audio(data, target_sr))


def test_decode_never_reads_past_the_checked_header() -> None:
    # A WAV whose data chunk declares 1 s with 3 s of samples after it: the header passes a 2 s limit,
    # and the decode stops where the header said, not where the bytes end.
    rate = 16000
    pcm = (_sine(440.0, rate, 3.0) * 32767).astype("<i2").tobytes()
    header = b"RIFF" + struct.pack("<I", 36 + len(pcm)) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
    header += b"data" + struct.pack("<I", rate * 2)
    data = header + pcm
    assert read_header(data, LIMITS).frames == rate
    assert len(load_audio(data, rate, limits=LIMITS)) == rate


def test_error_messages_carry_no_object_reprs() -> None:
    with pytest.raises(ValueError) as err:
        load_audio(b"garbage bytes that are not audio" * 4, 16000, limits=LIMITS)
    assert "0x" not in str(err.value) and str(err.value).startswith("<bytes>: cannot decode audio")


def test_audio_limits_validate_themselves() -> None:
    for kwargs in ({"max_seconds": 0}, {"max_seconds": 1, "min_sample_rate": 50_000, "max_sample_rate": 48_000},
                   {"max_seconds": 1, "max_channels": 0}):  # fmt: skip
        with pytest.raises(ValueError):
            AudioLimits(**kwargs)
    assert AudioLimits(max_seconds=30).max_samples == 30 * 384_000


def test_check_samples() -> None:
    wav = _sine(440.0, 16000, 0.1)
    assert check_samples(wav) is wav
    strided = np.repeat(wav, 2)[::2]
    assert check_samples(strided).flags.c_contiguous
    for bad, match in [
        (wav.tobytes(), "numpy array"),
        (wav[None], "1-D float32"),
        (wav.astype(np.float64), "1-D float32"),
        (np.zeros(0, np.float32), "empty"),
        (np.array([0.0, np.nan], np.float32), "NaN or infinite"),
    ]:
        with pytest.raises(ValueError, match=match):
            check_samples(bad)
