"""Minimal stand-in for librosa, enough for the VoxCPM2 reference's prompt-loading path."""

from __future__ import annotations

import numpy as np
import soundfile as sf

from . import effects  # noqa: F401

__version__ = "0.0.0-parity-stub"


def load(path, sr=22050, mono=True, **kwargs):
    """Load like ``librosa.load`` for files already at ``sr`` (no resampling in parity tests)."""
    data, file_sr = sf.read(str(path), dtype="float32", always_2d=True)
    if sr is not None and file_sr != sr:
        raise NotImplementedError(f"parity stub: file is {file_sr} Hz, expected {sr} Hz")
    out = data.mean(axis=1) if mono else data.T
    return np.ascontiguousarray(out, dtype=np.float32), file_sr
