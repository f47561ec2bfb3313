"""Continuation across a session's segments: the next segment starts from the latents of the last.

VoxCPM continues a prompt: given the latents of some audio and its transcript, it speaks the new
text in the same voice, as if the speaker went on. A streaming session makes each segment's
generated latents and text the prompt of the next (as the reference's prompt cache merges a
generation's own features into the next prompt), so timbre and prosody carry across the join,
and the next segment's VAE decoder starts from the state the last one ended in. The engine
returns those latents with the segment's final output (``GenerationParams.return_latents``):
nothing is encoded again, so a segment boundary costs no engine call whatever the load.
"""

from __future__ import annotations

import numpy as np
import torch

from voxcpm_engine.types import Voice

__all__ = ["continuation_voice"]


def continuation_voice(text: str, latents: np.ndarray, base: Voice | None) -> Voice:
    """The voice a segment continues from: ``latents`` (``[A, P, D]`` float32, the previous segment's
    generated patches) with ``text`` as their transcript, and ``base``'s reference (VoxCPM2)."""
    prompt = torch.from_numpy(np.ascontiguousarray(latents, dtype=np.float32))
    return Voice(text, prompt, base.ref_latents if base is not None else None)
