"""The check the engine's audio passes before a job sends it: finite, and not a silent first chunk."""

from __future__ import annotations

import numpy as np

from voxcpm_engine.proc.errors import RequestFailed

__all__ = ["checked_audio"]


def checked_audio(chunk: np.ndarray, *, first: bool = False) -> np.ndarray:
    """The chunk, if every sample is finite (and, for a request's first chunk, not all exactly zero).

    Raises:
        RequestFailed: NaN or infinite samples, or a first chunk of digital silence: a numerical
            failure in the model (a float VAE never decodes a whole patch to exact zeros), never
            sent as a 200 of silence.
    """
    if not np.isfinite(chunk).all():
        raise RequestFailed("the engine produced non-finite audio (NaN or infinity)")
    if first and chunk.size and not chunk.any():
        raise RequestFailed("the engine produced digital silence (every sample exactly zero)")
    return chunk
