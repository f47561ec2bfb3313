"""Streaming audio encoders: float32 mono chunks from the engine in, encoded bytes out as each chunk arrives.

Each encoder hands back whatever bytes its codec has ready per ``encode`` call (all but flac, below) and
flushes the rest on ``finish``; nothing is re-encoded and no container re-created per chunk, because
encoding runs on the server's event loop for every open stream. Measured per-chunk cost (3840 samples at
24 kHz = 160 ms of audio, one core of the shared 2-core dev box): pcm/wav ~13 µs, flac ~110 µs, mp3 ~270 µs
(LAME quality 5; quality 2 is ~1 ms), opus ~600 µs (libopus complexity 5; the default 10 is ~1 ms), aac
~800 µs. Opus and AAC are the expensive ones: 4-5 ms of CPU per second of audio. Opening plus finishing a
stream adds ~1 ms (flac, mp3, aac) to ~2-4 ms (opus); a whole mp3's LAME tag ~1 ms per second of audio
at 128 kbps (the checksum of the music).

- ``pcm``: raw signed 16-bit little-endian samples at the input rate, no header.
- ``wav``: 16-bit PCM. Streamed, the RIFF and data sizes are 0xFFFFFFFF ("unknown, read to the end"),
  which ffmpeg, libsndfile and browsers accept; with ``streaming=False`` they are exact.
- ``mp3``: LAME (lameenc), CBR 64 kbps at 24 kHz and below, 128 kbps above. A whole file starts with a
  LAME Info frame (frame count, encoder delay and padding, laid out as LAME's own tag), so ffmpeg and
  mpg123 (libsndfile's mp3 decoder) trim both and decode exactly the audio. Streamed, there is no tag: the
  frame count and the padding are only known at the end, and without a frame count mpg123 ignores the
  delay while ffmpeg trims it but plays the tag itself as a frame of silence. A stream therefore decodes
  1105 samples longer at the start (LAME's 576 of priming, the decoder's 529) and, where LAME pads to
  whole frames, 47 samples to one frame more than that at the end (a frame: 576 samples below 32 kHz,
  1152 from 32 kHz).
- ``flac``: native FLAC (ffmpeg) with exact length and MD5 in STREAMINFO, streamed or not: the encoder
  is always whole-file (``streaming`` is False), and a stream gets the file when the audio ends. FLAC
  puts STREAMINFO before the audio, and an unknown length there (0) is valid FLAC, but libsndfile (so
  soundfile, librosa and this server's ``/encode_latents``) takes 0 for 2^63 frames and fails, stops at a
  smaller length than the audio's and fails at a larger one; so a FLAC that libsndfile reads cannot leave
  before its length is known. For lossless audio as it is made, stream ``wav`` or ``pcm``.
- ``opus``: Ogg Opus (libopus), 48 kbps VBR, ~60 ms pages so bytes leave with every chunk. The exact
  length, streamed or not: OpusHead's pre-skip covers the encoder delay and the last page's granule
  position trims the padding.
- ``aac``: AAC-LC in ADTS frames (ffmpeg's encoder), 64 kbps (96 kbps above 24 kHz). ADTS has no field
  for the encoder's 1024 samples of priming or the padding of the last 1024-sample frame, streamed or
  not, and no reader takes them from anywhere else: it decodes 1024 samples longer at the start and up
  to 1023 at the end. Use opus, or a whole mp3, where the length must be exact.

mp3, opus and aac take only some sample rates: other inputs go through a streaming soxr resampler to the
lowest rate they accept at or above the input's (48 kHz at most), the encoder's ``output_sample_rate``.

The format table and the encoder contract these codecs implement are in :mod:`tts_server.audio.formats`.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from functools import partial
from typing import Any

import av
import lameenc
import numpy as np

from tts_server.audio.formats import FORMATS, AudioEncoder
from tts_server.audio.mp3_info_tag import lame_info_frame

__all__ = ["encode_all", "float_to_int16", "make_encoder"]


_MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
_OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
_AAC_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
_FLAC_MAX_RATE = 655350  # STREAMINFO's 20-bit field, in practice; ffmpeg refuses more
_OGG_PAGE_US = "60000"  # µs; ffmpeg holds a page until it spans this long: 1 s by default, too late for streaming
_INT16_SCALE = 32767.0  # symmetric: +1.0 and -1.0 map to ±32767, as libsndfile writes float to PCM16


def float_to_int16(audio: np.ndarray) -> np.ndarray:
    """Convert float samples to int16 with clipping (no wraparound above full scale) and rounding.

    Args:
        audio: Float samples, nominally in [-1, 1]. NaN becomes 0.

    Returns:
        int16 array of the same shape; ±1.0 (and anything beyond) maps to ±32767.
    """
    scaled = np.multiply(audio, _INT16_SCALE, dtype=np.float32)
    np.clip(scaled, -_INT16_SCALE, _INT16_SCALE, out=scaled)
    _zero_nans(scaled)
    np.rint(scaled, out=scaled)
    return scaled.astype(np.int16)


def _zero_nans(samples: np.ndarray) -> None:
    # One reduction (~1 µs per 4k samples) finds the rare NaN; a masked pass on every chunk would cost 10x.
    if np.isnan(samples.sum()):
        samples[np.isnan(samples)] = 0.0


def _clip_float(audio: np.ndarray) -> np.ndarray:
    """Float32 copy clipped to [-1, 1] with NaN → 0, for codecs fed float samples."""
    out = np.clip(audio, -1.0, 1.0, dtype=np.float32)
    _zero_nans(out)
    return out


def _rate_at_or_above(rate: int, allowed: tuple[int, ...]) -> int:
    return next((r for r in allowed if r >= rate), allowed[-1])


def _wav_header(sample_rate: int, data_bytes: int | None) -> bytes:
    """44-byte PCM16 mono header; ``data_bytes=None`` writes the 0xFFFFFFFF "unknown length" sizes."""
    data_size = 0xFFFFFFFF if data_bytes is None else data_bytes
    riff_size = 0xFFFFFFFF if data_bytes is None else 36 + data_bytes
    fmt_chunk = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
    return struct.pack("<4sI4s", b"RIFF", riff_size, b"WAVE") + fmt_chunk + struct.pack("<4sI", b"data", data_size)


class _PcmEncoder(AudioEncoder):
    """Raw s16le (``pcm``), or the same behind a WAV header (``wav``)."""

    def __init__(self, fmt: str, sample_rate: int, streaming: bool) -> None:
        super().__init__(fmt, sample_rate, sample_rate, streaming)
        self._header_due = fmt == "wav" and streaming

    def _encode(self, samples: np.ndarray) -> bytes:
        pcm = float_to_int16(samples).astype("<i2", copy=False).tobytes()
        if self._header_due:
            self._header_due = False
            return _wav_header(self.sample_rate, None) + pcm
        return pcm

    def _finish(self) -> bytes:
        # A stream that never got audio still has to be a well-formed (empty) file.
        return _wav_header(self.sample_rate, None) if self._header_due else b""

    def _file_header(self, body: bytes) -> bytes:
        if self.format.name == "pcm":
            return b""
        if 36 + len(body) > 0xFFFFFFFF:
            raise ValueError(f"wav: {len(body)} bytes of audio do not fit a RIFF file (4 GiB)")
        return _wav_header(self.sample_rate, len(body))


class _Mp3Encoder(AudioEncoder):
    def __init__(self, sample_rate: int, streaming: bool) -> None:
        out_rate = _rate_at_or_above(sample_rate, _MP3_RATES)
        super().__init__("mp3", sample_rate, out_rate, streaming)
        self._kbps = 64 if out_rate <= 24000 else 128
        self._lame = lameenc.Encoder()
        self._lame.set_channels(1)
        self._lame.set_in_sample_rate(out_rate)
        # Pinned: the rate we resampled to is the rate in the frames, whatever LAME's defaults do.
        self._lame.set_out_sample_rate(out_rate)
        self._lame.set_bit_rate(self._kbps)
        # 5 = LAME's default "good": ~4x faster than 2 ("high") and indistinguishable on speech.
        self._lame.set_quality(5)
        self._samples = 0  # fed to LAME, at out_rate: the audio length the Info tag's padding is counted from

    def _encode(self, samples: np.ndarray) -> bytes:
        self._samples += samples.shape[0]
        return bytes(self._lame.encode(float_to_int16(samples).tobytes()))

    def _finish(self) -> bytes:
        # lameenc refuses to flush an encoder that never saw a sample; no audio is an empty mp3.
        return bytes(self._lame.flush()) if self._samples else b""

    def _file_header(self, body: bytes) -> bytes:
        return lame_info_frame(body, self._samples, self._kbps) if body else b""


class _Sink:
    """Write-only file object for PyAV: no ``seek``, so muxers stream instead of rewriting headers."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


class _AvEncoder(AudioEncoder):
    """A PyAV codec and muxer opened once per stream, writing into an in-memory sink drained per chunk.

    ``sample_format`` is what the codec takes (``s16``, ``flt``, ``fltp``); ``codec_options`` and
    ``container_options`` are ffmpeg AVOptions (``b`` is the bit rate).
    """

    def __init__(
        self,
        fmt: str,
        rates: tuple[int, int],
        streaming: bool,
        container: str,
        codec: str,
        sample_format: str,
        codec_options: dict[str, str],
        container_options: dict[str, str] | None = None,
    ) -> None:
        super().__init__(fmt, rates[0], rates[1], streaming)
        # Non-streaming output goes to a seekable buffer so the muxer can go back and fill in lengths.
        self._file: _Sink | io.BytesIO = _Sink() if streaming else io.BytesIO()
        self._container: Any = av.open(self._file, mode="w", format=container, options=container_options or {})
        try:
            self._stream: Any = self._container.add_stream(codec, rate=rates[1], layout="mono")
            self._stream.codec_context.options = codec_options
        except BaseException:
            self._container.close()
            raise
        self._sample_format = sample_format
        self._pts = 0
        self._container_open = True

    def _frame(self, samples: np.ndarray) -> av.AudioFrame:
        data = float_to_int16(samples) if self._sample_format == "s16" else _clip_float(samples)
        frame = av.AudioFrame.from_ndarray(data[None, :], format=self._sample_format, layout="mono")
        frame.sample_rate = self.output_sample_rate
        frame.pts = self._pts
        self._pts += samples.shape[0]
        return frame

    def _drain(self) -> bytes:
        return self._file.take() if isinstance(self._file, _Sink) else b""

    def _encode(self, samples: np.ndarray) -> bytes:
        for packet in self._stream.encode(self._frame(samples)):
            self._container.mux(packet)
        return self._drain()

    def _finish(self) -> bytes:
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container_open = False
        self._container.close()  # writes the trailer (and, when seekable, rewrites the header)
        if isinstance(self._file, io.BytesIO):
            return self._file.getvalue()
        return self._drain()

    def _release(self) -> None:
        super()._release()
        if self._container_open:
            self._container_open = False
            self._container.close()


def _flac(sample_rate: int, _streaming: bool) -> AudioEncoder:
    if sample_rate > _FLAC_MAX_RATE:
        raise ValueError(f"flac: sample rate {sample_rate} Hz is above the format's {_FLAC_MAX_RATE} Hz")
    # Always a whole file, streamed or not (see the module docstring): STREAMINFO, which comes first, must hold
    # the exact length for libsndfile to read it, and that length is known only at the end.
    return _AvEncoder("flac", (sample_rate, sample_rate), False, "flac", "flac", "s16", {})


def _opus(sample_rate: int, streaming: bool) -> AudioEncoder:
    rates = (sample_rate, _rate_at_or_above(sample_rate, _OPUS_RATES))
    # Complexity 5 halves libopus's CPU time against the default 10 at a small cost in quality.
    options = {"b": "48000", "compression_level": "5"}
    return _AvEncoder("opus", rates, streaming, "ogg", "libopus", "flt", options, {"page_duration": _OGG_PAGE_US})


def _aac(sample_rate: int, streaming: bool) -> AudioEncoder:
    rates = (sample_rate, _rate_at_or_above(sample_rate, _AAC_RATES))
    options = {"b": "64000" if rates[1] <= 24000 else "96000"}
    return _AvEncoder("aac", rates, streaming, "adts", "aac", "fltp", options)


_FACTORIES: dict[str, Callable[[int, bool], AudioEncoder]] = {
    "pcm": partial(_PcmEncoder, "pcm"),
    "wav": partial(_PcmEncoder, "wav"),
    "mp3": _Mp3Encoder,
    "flac": _flac,
    "opus": _opus,
    "aac": _aac,
}


def make_encoder(fmt: str, sample_rate: int, *, streaming: bool = True) -> AudioEncoder:
    """Open an encoder for one response.

    Args:
        fmt: One of :data:`FORMATS` (case-sensitive, as the API's ``response_format``).
        sample_rate: Rate of the chunks that will be fed (the model's output rate), in Hz.
        streaming: True: bytes come out of every :meth:`AudioEncoder.encode` call as soon as the codec has
            them (a wav header then says "length unknown"; mp3 has no LAME tag), except for flac, whose encoder
            is always whole-file (see the module docstring). False: all bytes come from
            :meth:`AudioEncoder.finish`, with exact lengths in the wav and flac headers and mp3's LAME tag.

    Returns:
        A fresh encoder.

    Raises:
        ValueError: Unknown format (the message lists the supported ones) or an invalid sample rate.
    """
    factory = _FACTORIES.get(fmt)
    if factory is None:
        raise ValueError(f"unsupported audio format {fmt!r}; supported: {', '.join(FORMATS)}")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise ValueError(f"{fmt}: sample rate must be a positive integer, got {sample_rate!r}")
    return factory(int(sample_rate), streaming)


def encode_all(fmt: str, sample_rate: int, audio: np.ndarray) -> tuple[bytes, int]:
    """Encode a whole clip at once (the non-streaming response), with exact lengths in the headers.

    Args:
        fmt: One of :data:`FORMATS`.
        sample_rate: Rate of ``audio`` in Hz.
        audio: 1-D mono samples, nominally in [-1, 1].

    Returns:
        The complete file, and its sample rate (the encoder's output rate: opus is always 48 kHz).
    """
    encoder = make_encoder(fmt, sample_rate, streaming=False)
    try:
        encoder.encode(audio)
        return encoder.finish(), encoder.output_sample_rate
    finally:
        encoder.close()
