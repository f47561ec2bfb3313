"""The response formats and the contract of a streaming audio encoder, apart from any codec.

:data:`FORMATS` names and labels each ``response_format`` for the HTTP layer (media type, file
extension); :class:`AudioEncoder` is the one-stream lifecycle every codec shares: ``encode`` per
chunk, ``finish`` or ``close`` at the end, resampling to the codec's rate, and holding bytes back
for a non-streaming file. The codecs themselves (and their native libraries) live in
:mod:`tts_server.audio.encoders`; this module is separate so the routes, the OpenAPI document and the
streaming code can use the format table and the encoder interface without knowing any codec.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import soxr

__all__ = ["FORMATS", "AudioEncoder", "FormatInfo"]


@dataclass(frozen=True)
class FormatInfo:
    """A response format as the HTTP layer names and labels it.

    Attributes:
        name: The request's ``response_format`` value.
        media_type: The response's ``Content-Type``.
        extension: File extension (no dot) for ``Content-Disposition`` and downloads.
    """

    name: str
    media_type: str
    extension: str


FORMATS: dict[str, FormatInfo] = {
    "pcm": FormatInfo("pcm", "audio/pcm", "pcm"),
    "wav": FormatInfo("wav", "audio/wav", "wav"),
    "mp3": FormatInfo("mp3", "audio/mpeg", "mp3"),
    "flac": FormatInfo("flac", "audio/flac", "flac"),
    "opus": FormatInfo("opus", "audio/ogg; codecs=opus", "opus"),
    "aac": FormatInfo("aac", "audio/aac", "aac"),
}


class AudioEncoder(ABC):
    """One output stream: feed engine chunks with :meth:`encode`, end with :meth:`finish`.

    Not thread-safe; one encoder per response. Call :meth:`close` if the stream is abandoned before
    :meth:`finish` (client gone) so codec resources are freed now rather than at garbage collection.

    Attributes:
        format: The format descriptor.
        sample_rate: The rate of the chunks passed to :meth:`encode`.
        output_sample_rate: The rate the codec encodes at (differs from ``sample_rate`` only when the codec
            does not take the input rate; Opus decoders usually play back at 48 kHz regardless).
        streaming: False: every byte is returned by :meth:`finish`, with exact lengths in headers (also for a
            streamed response in a format that is only readable whole).
    """

    def __init__(self, fmt: str, sample_rate: int, output_sample_rate: int, streaming: bool) -> None:
        self.format = FORMATS[fmt]
        self.sample_rate = sample_rate
        self.output_sample_rate = output_sample_rate
        self.streaming = streaming
        self._done: str | None = None  # "finish()" or "close()" once the stream is over
        self._held: list[bytes] = []  # encoded bytes kept back until finish() when not streaming
        self._resampler = (
            soxr.ResampleStream(sample_rate, output_sample_rate, 1, dtype="float32", quality="HQ")
            if output_sample_rate != sample_rate
            else None
        )

    def encode(self, chunk: np.ndarray) -> bytes:
        """Encode one chunk.

        Args:
            chunk: 1-D mono samples (any float or int dtype; converted to float32), nominally in [-1, 1].

        Returns:
            The bytes ready to send now; ``b""`` when the codec is still buffering, and always ``b""`` for a
            non-streaming encoder.

        Raises:
            ValueError: The chunk is not 1-D.
            RuntimeError: The encoder was already finished or closed.
        """
        self._check_open("encode()")
        samples = np.asarray(chunk, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"audio chunk must be 1-D mono samples, got shape {samples.shape}")
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples)
        if samples.size == 0:
            return b""
        data = self._encode(samples)
        if self.streaming:
            return data
        self._held.append(data)
        return b""

    def finish(self) -> bytes:
        """Flush the resampler, the codec and the container, and release them.

        Returns:
            The remaining bytes (everything, for a non-streaming encoder).

        Raises:
            RuntimeError: The encoder was already finished or closed.
        """
        self._check_open("finish()")
        self._done = "finish()"
        parts, self._held = self._held, []
        if self._resampler is not None:
            tail = self._resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
            if tail.size:
                parts.append(self._encode(tail))
        parts.append(self._finish())
        body = b"".join(parts)
        return body if self.streaming else self._file_header(body) + body

    def close(self) -> None:
        """Drop the stream without producing output and free codec resources now (idempotent).

        For a stream abandoned before :meth:`finish` (client gone); harmless after it.
        """
        self._done = self._done or "close()"
        self._held = []
        self._release()

    def _check_open(self, call: str) -> None:
        if self._done is not None:
            raise RuntimeError(f"{self.format.name} encoder: {call} after {self._done}")

    def _file_header(self, body: bytes) -> bytes:
        """What a non-streaming file puts in front of its encoded ``body`` (a header with exact sizes)."""
        return b""

    def _release(self) -> None:
        """Free native codec state; called by :meth:`close`, possibly more than once."""
        self._resampler = None

    @abstractmethod
    def _encode(self, samples: np.ndarray) -> bytes:
        """Encode float32 samples already at ``output_sample_rate``."""

    @abstractmethod
    def _finish(self) -> bytes:
        """Flush and return the codec's remaining bytes."""
