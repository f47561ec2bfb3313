"""Minimal stand-in for torchaudio, enough for the reference's prompt-loading path in parity tests.

The reference imports torchaudio at module level but, on the paths the parity tests drive, only
calls ``torchaudio.load`` on files already at the VAE rate (so ``functional.resample`` is never
reached). Loading goes through soundfile, which decodes the same PCM samples.
"""

from __future__ import annotations

import numpy as np
import soundfile as sf
import torch

from . import functional  # noqa: F401

__version__ = "0.0.0-parity-stub"


def load(path, *args, **kwargs):
    """Return ``(waveform [channels, frames] float32, sample_rate)`` like torchaudio.load."""
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return torch.from_numpy(np.ascontiguousarray(data.T)), sr
