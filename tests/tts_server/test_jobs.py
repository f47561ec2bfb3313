"""``tts_server.jobs``: the check on the engine's audio (the job lifecycle runs in the app and reliability tests)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.stream import RequestFailed
from tts_server.jobs import _checked


def test_finite_audio_passes_unchanged():
    chunk = np.linspace(-1, 1, 64, dtype=np.float32)
    assert _checked(chunk) is chunk


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_sample_fails_the_request(bad: float):
    chunk = np.zeros(64, dtype=np.float32)
    chunk[17] = bad
    with pytest.raises(RequestFailed, match="non-finite audio"):
        _checked(chunk)


def test_a_first_chunk_of_exact_zeros_fails_the_request_but_a_later_one_passes():
    silent = np.zeros(64, dtype=np.float32)
    with pytest.raises(RequestFailed, match="digital silence"):
        _checked(silent, first=True)
    assert _checked(silent) is silent  # a pause inside speech is not a failure
