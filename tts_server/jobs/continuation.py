"""Continuation across a session's segments: the next segment starts from the audio of the last.

VoxCPM continues a prompt: given the latents of some audio and its transcript, it speaks the new
text in the same voice, as if the speaker went on. A streaming session makes each segment's
audio and text the prompt of the next, so timbre and prosody carry across the join instead of
restarting from the session's voice at every sentence. The latents come from the engine's VAE
encoder (one call between two engine steps) at the encoder's rate.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import numpy as np
import soxr

from voxcpm_engine.proc.errors import EngineError
from voxcpm_engine.types import Voice

if TYPE_CHECKING:  # the bundle of shared objects is built above the jobs layer
    from tts_server.services import Services

__all__ = ["continuation_voice"]

log = logging.getLogger(__name__)


async def continuation_voice(svc: Services, text: str, audio: np.ndarray, base: Voice | None) -> Voice | None:
    """The voice a segment continues from: ``audio`` (the previous segment, at the model's output
    rate) as prompt latents with ``text`` as their transcript, and ``base``'s reference (VoxCPM2).

    Returns None (the next segment starts from ``base``) when the engine cannot encode the audio.
    """
    rate = svc.engine.encode_sample_rate
    try:
        if rate != svc.sample_rate:
            audio = await asyncio.to_thread(soxr.resample, audio, svc.sample_rate, rate, "HQ")
        latents = await svc.engine.encode_prompt(np.ascontiguousarray(audio, dtype=np.float32))
    except (EngineError, ValueError) as exc:
        log.warning("no continuation context for the next segment: %s", exc)
        return None
    return Voice(text, latents, base.ref_latents if base is not None else None)
