"""Audio the tests make and compare: digital silence as a small file of any shape, codec delays."""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf


def silence(rate: int, channels: int, seconds: float, fmt: str = "FLAC") -> bytes:
    """Digital silence: FLAC stores it in a few bytes per 4096-frame block, whatever the rate.

    Written a block at a time: 30 s of 8-channel 655 kHz would be 314 MB of int16 at once.
    """
    buf, frames = io.BytesIO(), int(rate * seconds)
    block = np.zeros((1 << 16, channels), np.int16)
    with sf.SoundFile(buf, "w", rate, channels, "PCM_16", format=fmt) as f:
        for start in range(0, frames, len(block)):
            f.write(block[: frames - start])
    return buf.getvalue()


def best_lag(decoded: np.ndarray, reference: np.ndarray, max_lag: int) -> tuple[int, float]:
    """The lag in [0, max_lag] where ``decoded`` best matches ``reference``, and their normalized correlation there.

    A codec that delays the audio by d samples (priming) peaks at lag d; a wrong rate or garbage has no clear peak.
    """
    n = len(decoded) + len(reference)
    correlation = np.fft.irfft(np.fft.rfft(decoded, n) * np.conj(np.fft.rfft(reference, n)), n)[: max_lag + 1]
    lag = int(np.argmax(correlation))
    window = decoded[lag : lag + len(reference)]
    norms = np.linalg.norm(window) * np.linalg.norm(reference[: len(window)])
    return lag, float(correlation[lag] / (norms + 1e-12))
