"""Streaming encoders, checked by decoding their output with independent decoders.

Decoders: numpy for pcm; libsndfile (soundfile) for wav, flac, mp3 (through mpg123) and Ogg Opus (libopus);
ffmpeg's decoders (PyAV) for everything but pcm. Lengths are checked against what the module docstring of
:mod:`tts_server.audio.encoders` promises: exact for pcm, wav, flac, opus and a whole mp3 (its LAME tag, whose
fields ``test_mp3_info_tag.py`` checks); for a streamed mp3 and for aac (ADTS) longer by the documented delay and
padding. Delays are measured by cross-correlating band-limited noise (a sine is periodic, so its lag would be
ambiguous).
"""

from __future__ import annotations

import io
import struct

import av
import numpy as np
import pytest
import soundfile as sf
import soxr

from tests.audio_samples import best_lag
from tts_server.audio.encoders import encode_all, float_to_int16, make_encoder
from tts_server.audio.formats import FORMATS, AudioEncoder

RATES = (16000, 22222, 24000, 44100, 48000)  # 22222: a tiny test model's odd rate, resampled for mp3/opus/aac
CHUNKS = (1280, 3840, 777, 7680, 2000, 5)  # uneven on purpose: codecs must rebuffer to their frame sizes
FREQ = 440.0
AMPLITUDE = 0.5


def sine(rate: int, seconds: float = 1.3, amplitude: float = AMPLITUDE) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * FREQ * t)).astype(np.float32)


def noise(rate: int, seconds: float = 1.3) -> np.ndarray:
    """Seeded noise band-limited to 3 kHz (inside every codec's passband at every rate), peak 0.5."""
    n = int(rate * seconds)
    spectrum = np.fft.rfft(np.random.default_rng(7).standard_normal(n))
    spectrum[np.fft.rfftfreq(n, 1 / rate) > 3000] = 0
    audio = np.fft.irfft(spectrum, n)
    return (0.5 * audio / np.abs(audio).max()).astype(np.float32)


def at_rate(audio: np.ndarray, rate: int, out_rate: int) -> np.ndarray:
    """``audio`` as an encoder that resamples to ``out_rate`` sees it (the same soxr quality, in one go)."""
    resampled = audio if rate == out_rate else soxr.resample(audio, rate, out_rate, quality="HQ")
    return resampled.astype(np.float64)


LAME_DELAY = 576  # LAME's priming samples
MP3_DECODER_DELAY = 529  # what every mp3 decoder adds


def mp3_frame(rate: int) -> int:
    """Samples in a Layer III frame: 1152 for MPEG-1 (32 kHz and up), 576 for MPEG-2/2.5."""
    return 1152 if rate >= 32000 else 576


def expected_int16(audio: np.ndarray) -> np.ndarray:
    """The conversion the encoders promise, written out independently: scale by 32767, clip, round."""
    return np.round(np.clip(audio.astype(np.float64), -1.0, 1.0) * 32767).astype(np.int16)


def stream(encoder: AudioEncoder, audio: np.ndarray) -> tuple[list[bytes], bytes]:
    """Feed ``audio`` in uneven chunks; the bytes of each encode() call, then finish()'s."""
    outs, start, i = [], 0, 0
    while start < len(audio):
        size = CHUNKS[i % len(CHUNKS)]
        outs.append(encoder.encode(audio[start : start + size]))
        start, i = start + size, i + 1
    return outs, encoder.finish()


def encode_stream(fmt: str, rate: int, audio: np.ndarray) -> tuple[AudioEncoder, bytes]:
    encoder = make_encoder(fmt, rate)
    outs, tail = stream(encoder, audio)
    return encoder, b"".join(outs) + tail


def av_decode(data: bytes) -> tuple[np.ndarray, int]:
    """Decode with ffmpeg (PyAV): mono samples as float64 in [-1, 1] and the stream's rate."""
    with av.open(io.BytesIO(data)) as container:
        stream_ = container.streams.audio[0]
        frames = [frame.to_ndarray() for frame in container.decode(stream_)]
        rate = stream_.codec_context.sample_rate
    samples = np.concatenate(frames, axis=1)[0]
    if samples.dtype == np.int16:
        return samples.astype(np.float64) / 32768, rate
    return samples.astype(np.float64), rate


def sf_decode(data: bytes, dtype: str = "float64") -> tuple[np.ndarray, int]:
    samples, rate = sf.read(io.BytesIO(data), dtype=dtype)
    return samples, rate


def sine_fidelity(decoded: np.ndarray, rate: int, max_lag: int) -> float:
    """Correlation of ``decoded`` with the ideal sine at ``rate``, at the best lag in [0, max_lag].

    Lossy codecs delay the signal (encoder priming) and add a little noise; a correlation near 1 over the
    steady middle means the sine came through at the right pitch and rate.
    """
    target = sine(rate, seconds=0.85)[int(0.15 * rate) :]  # the steady middle, away from codec edges
    start = int(0.15 * rate)
    segment = decoded[start : start + len(target) + max_lag]
    assert len(segment) == len(target) + max_lag, "decoded audio too short"
    # All lags at once through the FFT (a per-lag loop of dot products is slow on a busy 2-core box).
    n = len(segment) + len(target)
    correlation = np.fft.irfft(np.fft.rfft(segment, n) * np.conj(np.fft.rfft(target, n)), n)[: max_lag + 1]
    energy = np.concatenate([[0.0], np.cumsum(segment**2)])
    window_norms = np.sqrt(energy[len(target) : len(target) + max_lag + 1] - energy[: max_lag + 1])
    return float(np.max(correlation / (window_norms * np.linalg.norm(target) + 1e-12)))


@pytest.mark.parametrize("rate", RATES)
def test_pcm_is_exact_int16(rate: int) -> None:
    audio = sine(rate)
    encoder, data = encode_stream("pcm", rate, audio)
    assert encoder.output_sample_rate == rate
    np.testing.assert_array_equal(np.frombuffer(data, dtype="<i2"), expected_int16(audio))


@pytest.mark.parametrize("rate", RATES)
def test_streamed_wav_plays_in_two_decoders(rate: int) -> None:
    audio = sine(rate)
    _, data = encode_stream("wav", rate, audio)
    riff_size, data_size = struct.unpack_from("<I", data, 4)[0], struct.unpack_from("<I", data, 40)[0]
    assert (riff_size, data_size) == (0xFFFFFFFF, 0xFFFFFFFF)  # "length unknown": a stream
    samples, sr = sf_decode(data, dtype="int16")
    assert sr == rate
    np.testing.assert_array_equal(samples, expected_int16(audio))
    decoded, sr = av_decode(data)
    assert sr == rate and len(decoded) == len(audio)


@pytest.mark.parametrize("rate", RATES)
def test_flac_is_lossless(rate: int) -> None:
    audio = sine(rate)
    encoder, data = encode_stream("flac", rate, audio)
    assert encoder.output_sample_rate == rate
    decoded, sr = av_decode(data)
    assert sr == rate
    np.testing.assert_array_equal(np.round(decoded * 32768).astype(np.int16), expected_int16(audio))


@pytest.mark.parametrize("rate", RATES)
def test_streamed_flac_is_the_whole_file_libsndfile_reads(rate: int) -> None:
    # libsndfile reads only a FLAC whose STREAMINFO has its exact length, which a stream cannot know up front:
    # so a "streamed" flac encoder holds the file back and gives it whole at the end.
    audio = sine(rate)
    encoder = make_encoder("flac", rate)
    outs, tail = stream(encoder, audio)
    assert not encoder.streaming and not any(outs)
    assert (tail, rate) == encode_all("flac", rate, audio)
    assert sf.info(io.BytesIO(tail)).frames == len(audio)
    samples, sr = sf_decode(tail, dtype="int16")
    assert sr == rate
    np.testing.assert_array_equal(samples, expected_int16(audio))


@pytest.mark.parametrize("rate", RATES)
def test_whole_mp3_decodes_to_exactly_the_audio(rate: int) -> None:
    audio = noise(rate)
    data, _ = encode_all("mp3", rate, audio)
    out_rate = 24000 if rate == 22222 else rate
    # The LAME tag makes both decoders drop the priming, their own delay and the padding: the audio's length
    # (±1 where the resampler rounds), not delayed.
    for decode in (av_decode, sf_decode):
        decoded, sr = decode(data)
        assert sr == out_rate
        assert abs(len(decoded) - len(audio) * out_rate / rate) <= (0 if rate == out_rate else 1)
        lag, correlation = best_lag(decoded, at_rate(audio, rate, out_rate), max_lag=2 * mp3_frame(out_rate))
        assert lag == 0 and correlation > 0.95, (decode.__name__, lag, correlation)


@pytest.mark.parametrize("rate", RATES)
def test_streamed_mp3_is_longer_by_the_documented_delay_and_padding(rate: int) -> None:
    audio = noise(rate)
    encoder, data = encode_stream("mp3", rate, audio)
    out_rate = encoder.output_sample_rate
    assert out_rate == (24000 if rate == 22222 else rate)
    assert b"Info" not in data[:64] and b"Xing" not in data[:64]  # no tag: a stream's frame count is unknown
    frame, delay = mp3_frame(out_rate), LAME_DELAY + MP3_DECODER_DELAY
    for decode in (av_decode, sf_decode):
        decoded, sr = decode(data)
        assert sr == out_rate
        # 1105 samples of delay first; LAME's padding to whole frames after: 47 samples to a frame more.
        extra = len(decoded) - round(len(audio) * out_rate / rate)
        assert delay + 47 - 1 <= extra <= delay + 47 + frame, (decode.__name__, extra)
        lag, correlation = best_lag(decoded, at_rate(audio, rate, out_rate), max_lag=delay + frame)
        assert lag == delay and correlation > 0.95, (decode.__name__, lag, correlation)


@pytest.mark.parametrize("rate", RATES)
def test_opus(rate: int) -> None:
    audio = sine(rate)
    encoder, data = encode_stream("opus", rate, audio)
    out_rate = encoder.output_sample_rate
    assert out_rate == {16000: 16000, 22222: 24000, 24000: 24000, 44100: 48000, 48000: 48000}[rate]
    assert data[:4] == b"OggS"
    # libopus via libsndfile: Ogg Opus stores pre-skip and the end trim, so the length is exact (±1 for the
    # resampler's rounding) at the rate the encoder ran at.
    decoded, sr = sf_decode(data)
    assert sr == out_rate
    assert abs(len(decoded) - len(audio) * out_rate / rate) <= 1
    assert sine_fidelity(decoded, out_rate, max_lag=0) > 0.99
    # ffmpeg's own Opus decoder plays it too (at 48 kHz, as Opus decoders do).
    decoded48, sr48 = av_decode(data)
    assert sr48 == 48000 and abs(len(decoded48) - len(audio) * 48000 / rate) <= 3


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("streaming", [True, False])
def test_aac_is_longer_by_its_priming_and_padding(rate: int, streaming: bool) -> None:
    audio = noise(rate)
    encoder = make_encoder("aac", rate, streaming=streaming)
    outs, tail = stream(encoder, audio)
    data = b"".join(outs) + tail
    out_rate = encoder.output_sample_rate
    assert out_rate == (24000 if rate == 22222 else rate)
    assert data[0] == 0xFF and data[1] & 0xF0 == 0xF0  # ADTS sync word
    decoded, sr = av_decode(data)
    assert sr == out_rate
    # ADTS has no place for the encoder's 1024 samples of priming nor for the padding of the last 1024-sample
    # frame, whole file or not: 1024 samples first, 0 to 1023 after (±1 where the resampler rounds).
    extra = len(decoded) - round(len(audio) * out_rate / rate)
    assert 1024 - 1 <= extra <= 2047 + 1, extra
    lag, correlation = best_lag(decoded, at_rate(audio, rate, out_rate), max_lag=2048)
    assert lag == 1024 and correlation > 0.95, (lag, correlation)


@pytest.mark.parametrize(
    ("fmt", "rate", "kbps", "tolerance"),
    [("mp3", 24000, 64, 0.05), ("mp3", 48000, 128, 0.05), ("aac", 24000, 64, 0.3), ("aac", 48000, 96, 0.3)]
    + [("opus", 24000, 48, 0.3), ("opus", 48000, 48, 0.3)],  # CBR is exact; VBR codecs only aim at it
)
def test_lossy_bit_rates(fmt: str, rate: int, kbps: int, tolerance: float) -> None:
    data, _ = encode_all(fmt, rate, sine(rate, seconds=3.0))
    assert abs(len(data) * 8 / 3.0 / 1000 - kbps) <= tolerance * kbps


@pytest.mark.parametrize("fmt", [fmt for fmt in FORMATS if fmt != "flac"])  # flac: the streamed-flac test
def test_bytes_leave_before_finish(fmt: str) -> None:
    rate, size = 24000, 3840
    audio = sine(rate, seconds=2.0)
    encoder = make_encoder(fmt, rate)
    outs = [encoder.encode(audio[i : i + size]) for i in range(0, len(audio), size)]
    tail = encoder.finish()
    if fmt in ("pcm", "wav"):
        assert [len(o) for o in outs[1:]] == [2 * len(audio[i : i + size]) for i in range(size, len(audio), size)]
        assert len(outs[0]) == 2 * size + (44 if fmt == "wav" else 0) and tail == b""
    else:
        # Codec frames and Ogg pages hold a little back, never more than a couple of chunks.
        assert all(outs[i] or outs[i + 1] for i in range(len(outs) - 1)), [len(o) for o in outs]
        assert sum(map(len, outs)) > 0.7 * (sum(map(len, outs)) + len(tail))


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_non_streaming_returns_everything_from_finish(fmt: str) -> None:
    audio = sine(16000)
    encoder = make_encoder(fmt, 16000, streaming=False)
    outs, tail = stream(encoder, audio)
    assert not any(outs) and tail
    whole, _ = encode_all(fmt, 16000, audio)
    if fmt == "opus":  # each Ogg stream gets a random serial number; the audio is the same
        np.testing.assert_array_equal(sf_decode(whole)[0], sf_decode(tail)[0])
    else:  # one chunk or many: the same file
        assert whole == tail
    if fmt == "pcm":
        assert tail == make_encoder("pcm", 16000).encode(audio)


def test_non_streaming_wav_and_flac_have_exact_lengths() -> None:
    audio = sine(24000)
    data, _ = encode_all("wav", 24000, audio)
    assert struct.unpack_from("<I", data, 4)[0] == len(data) - 8
    assert struct.unpack_from("<I", data, 40)[0] == len(data) - 44 == 2 * len(audio)
    samples, sr = sf_decode(data, dtype="int16")
    assert sr == 24000
    np.testing.assert_array_equal(samples, expected_int16(audio))

    flac, _ = encode_all("flac", 24000, audio)
    assert sf.info(io.BytesIO(flac)).frames == len(audio)  # STREAMINFO filled in: libFLAC reads it
    samples, sr = sf_decode(flac, dtype="int16")
    assert sr == 24000
    np.testing.assert_array_equal(samples, expected_int16(audio))


def test_float_to_int16_clips_instead_of_wrapping() -> None:
    values = np.array([1.5, -2.0, 1.0, -1.0, 0.5, -0.25, 0.0, np.nan, np.inf, -np.inf, 1e30], dtype=np.float32)
    expected = [32767, -32767, 32767, -32767, 16384, -8192, 0, 0, 32767, -32767, 32767]
    assert float_to_int16(values).tolist() == expected
    assert np.frombuffer(make_encoder("pcm", 8000).encode(values), dtype="<i2").tolist() == expected
    wav = make_encoder("wav", 8000)
    assert np.frombuffer((wav.encode(values) + wav.finish())[44:], dtype="<i2").tolist() == expected


@pytest.mark.parametrize("fmt", ["flac", "aac"])  # libopus clips float input itself, so opus proves nothing
def test_loud_input_is_clipped_in_codecs(fmt: str) -> None:
    loud = sine(48000, seconds=0.5, amplitude=2.0)
    decoded, _ = av_decode(encode_all(fmt, 48000, loud)[0])
    # Clipped to full scale (a square-ish wave), not wrapped around and not passed through at 2.0.
    assert 0.9 < np.abs(decoded).max() < 1.25
    if fmt == "flac":
        np.testing.assert_array_equal(np.round(decoded * 32768).astype(np.int16), expected_int16(loud))


def test_unknown_format_and_bad_input() -> None:
    with pytest.raises(ValueError, match="'ogg'.*pcm, wav, mp3, flac, opus, aac"):
        make_encoder("ogg", 24000)
    with pytest.raises(ValueError, match="sample rate"):
        make_encoder("wav", 0)
    with pytest.raises(ValueError, match="1-D"):
        make_encoder("pcm", 24000).encode(np.zeros((2, 10), dtype=np.float32))


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_lifecycle(fmt: str) -> None:
    empty = make_encoder(fmt, 24000).finish()  # no audio at all: still a well-formed (possibly empty) stream
    if fmt == "wav":
        assert len(empty) == 44 and sf.info(io.BytesIO(empty)).frames == 0
    encoder = make_encoder(fmt, 24000)
    encoder.encode(sine(24000, seconds=0.2))
    encoder.finish()
    with pytest.raises(RuntimeError, match="after finish"):
        encoder.encode(sine(24000, seconds=0.1))
    with pytest.raises(RuntimeError, match="after finish"):
        encoder.finish()
    encoder.close()  # harmless after finish
    abandoned = make_encoder(fmt, 44100)
    abandoned.encode(sine(44100, seconds=0.2))
    abandoned.close()
    abandoned.close()
    with pytest.raises(RuntimeError, match="after close"):
        abandoned.finish()
