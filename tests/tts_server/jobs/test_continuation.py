"""Tests of tts_server.jobs.continuation: a segment's latents and text as the next one's prompt."""

from __future__ import annotations

import numpy as np
import torch

from tts_server.jobs.continuation import continuation_voice
from voxcpm_engine.types import Voice


def test_the_latents_become_the_prompt_and_the_reference_stays():
    latents = np.arange(2 * 4 * 64, dtype=np.float32).reshape(2, 4, 64)
    ref = torch.zeros(3, 4, 64)
    voice = continuation_voice("Said before.", latents, Voice(ref_latents=ref))
    assert voice.prompt_text == "Said before." and voice.ref_latents is ref
    assert voice.prompt_latents.dtype == torch.float32 and torch.equal(voice.prompt_latents, torch.from_numpy(latents))


def test_without_a_base_voice_there_is_no_reference():
    voice = continuation_voice("x", np.zeros((1, 4, 64), np.float64), None)
    assert voice.ref_latents is None and voice.prompt_latents.dtype == torch.float32
