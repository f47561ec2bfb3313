"""``tts_server.jobs.audio_checks``: the check on the engine's audio before a job sends it."""

from __future__ import annotations

import numpy as np
import pytest

from tts_server.jobs.audio_checks import checked_audio
from voxcpm_engine.proc.errors import RequestFailed


def test_finite_audio_passes_unchanged():
    chunk = np.linspace(-1, 1, 64, dtype=np.float32)
    assert checked_audio(chunk) is chunk


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_sample_fails_the_request(bad: float):
    chunk = np.zeros(64, dtype=np.float32)
    chunk[17] = bad
    with pytest.raises(RequestFailed, match="non-finite audio"):
        checked_audio(chunk)


def test_a_first_chunk_of_exact_zeros_fails_the_request_but_a_later_one_passes():
    silent = np.zeros(64, dtype=np.float32)
    with pytest.raises(RequestFailed, match="digital silence"):
        checked_audio(silent, first=True)
    assert checked_audio(silent) is silent  # a pause inside speech is not a failure
