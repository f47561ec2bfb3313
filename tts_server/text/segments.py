"""Long input → segments that each fit one engine request, split at sentence boundaries.

An engine request holds ``prompt positions + generated patches <= max_model_len``. Both are counted
with the engine's own front end (:mod:`voxcpm_engine.frontend`: the prompt's layout and the
reference's step limit) and the checkpoint's tokenizer, loaded in the server process (no model
code), so a segment never fails in the engine for its length.
"""

from __future__ import annotations

from dataclasses import dataclass

from tts_server.errors import ApiError
from tts_server.text.sentences import split_text
from voxcpm_engine.frontend import default_max_steps, prefill_length, request_tokens
from voxcpm_engine.io.tokenizer import TextTokenizer
from voxcpm_engine.types import Voice

__all__ = ["SegmentBudget", "plan_segments", "voice_positions"]

_SAFETY = 0.9  # first guess of the characters per segment, below the exact limit: fewer re-splits


def voice_positions(voice: Voice | None) -> int:
    """Prompt positions a voice takes besides its transcript's tokens (and the target's)."""
    return prefill_length(0, *_voice_patches(voice)) - prefill_length(0)


def _voice_patches(voice: Voice | None) -> tuple[int, int]:
    if voice is None:
        return 0, 0
    prompt = int(voice.prompt_latents.shape[0]) if voice.prompt_latents is not None else 0
    ref = int(voice.ref_latents.shape[0]) if voice.ref_latents is not None else 0
    return prompt, ref


@dataclass(frozen=True)
class SegmentBudget:
    """What every segment of one request shares.

    Attributes:
        max_model_len: The engine's limit on positions per request.
        voice: The voice every segment is spoken with.
        max_steps: Step limit per segment (None: the reference's rule).
        prefix: Text put before every segment (VoxCPM2 voice design, e.g. ``"(calm, low voice)"``).
        text_field: The request field to name when the text cannot fit.
    """

    max_model_len: int
    voice: Voice | None = None
    max_steps: int | None = None
    prefix: str = ""
    text_field: str = "target_text"

    def steps(self, target_tokens: int) -> int:
        """Patches a segment of ``target_tokens`` tokens may generate."""
        return self.max_steps if self.max_steps is not None else default_max_steps(target_tokens)


class _Counter:
    def __init__(self, tokenizer: TextTokenizer, budget: SegmentBudget) -> None:
        self.tokenizer = tokenizer
        self.budget = budget
        self.prompt_text = budget.voice.prompt_text if budget.voice is not None else None
        self.patches = _voice_patches(budget.voice)

    def need(self, segment: str) -> int:
        """Positions the engine request of ``segment`` takes (as ``Synthesizer.prepare`` lays it out)."""
        target, prompt = request_tokens(self.tokenizer, self.budget.prefix + segment, self.prompt_text)
        return prefill_length(len(prompt), *self.patches) + self.budget.steps(len(target))

    def fits(self, segment: str) -> bool:
        return self.need(segment) <= self.budget.max_model_len


def plan_segments(text: str, tokenizer: TextTokenizer, budget: SegmentBudget) -> list[str]:
    """Split ``text`` into segments that each fit one engine request; returns the engine texts.

    Each returned text is ``budget.prefix + segment``. Text that fits whole is one segment.

    Raises:
        ApiError: 400 when not even a few characters fit (a voice or step limit that leaves no
            room); the message names the field to change.
    """
    counter = _Counter(tokenizer, budget)
    if counter.fits(text):
        return [budget.prefix + text]
    if not counter.fits(text[:1]):
        field = "max_generate_length" if budget.max_steps is not None else "voice"
        need = counter.need(text[:1])
        raise ApiError(
            400,
            f"{field}: leaves no room for text within the model context of {budget.max_model_len} positions "
            f"(the voice and step limit alone take {need})",
            field=field,
        )
    tokens = max(1, len(tokenizer.encode(text)))
    room = budget.max_model_len - counter.need("")  # positions left for the text and its share of steps
    per_token = 1 if budget.max_steps is not None else 7  # a token also buys ~6 generated patches
    max_chars = max(1, int(room / per_token * len(text) / tokens * _SAFETY))
    out: list[str] = []
    pending = list(reversed(split_text(text, max_chars)))
    while pending:
        piece = pending.pop()
        if not piece.strip():
            continue
        if counter.fits(piece):
            out.append(budget.prefix + piece)
            continue
        if len(piece) == 1:
            raise ApiError(
                400, f"{budget.text_field}: {piece!r} does not fit the model context", field=budget.text_field
            )
        smaller = split_text(piece, max(1, len(piece) // 2))
        if len(smaller) <= 1:  # no boundary left to split at: cut in the middle
            half = len(piece) // 2
            smaller = [piece[:half], piece[half:]]
        pending.extend(reversed(smaller))
    if not out:
        raise ApiError(400, f"{budget.text_field}: no speakable text", field=budget.text_field)
    return out
