"""Splitting long input into engine-sized segments, counted with the tiny checkpoint's real tokenizer."""

import pytest
import torch

from tts_server.errors import ApiError
from tts_server.text.segments import SegmentBudget, plan_segments, voice_positions
from voxcpm_engine.frontend import build_prefill, default_max_steps
from voxcpm_engine.io.checkpoint import read_config
from voxcpm_engine.io.tokenizer import TextTokenizer, prepare_text
from voxcpm_engine.types import Voice

LONG = " ".join(f"Sentence {i} has a handful of words in it, and a clause." for i in range(60))


@pytest.fixture(scope="module")
def tokenizer(tiny_v2):
    return TextTokenizer.from_dir(tiny_v2)


@pytest.fixture(scope="module")
def model(tiny_v2):
    return read_config(tiny_v2)


def need(tokenizer, model, text, voice, max_steps):
    """Positions the engine would take for ``text``, counted the way ``Synthesizer.prepare`` does."""
    text = prepare_text(text)
    target = tokenizer.encode(text)
    ids = tokenizer.encode(voice.prompt_text + text) if voice.prompt_text else target
    prefill = build_prefill(model, ids, voice.prompt_latents, voice.ref_latents)
    return len(prefill) + (max_steps if max_steps is not None else default_max_steps(len(target)))


@pytest.mark.parametrize("max_steps", [None, 1, 40])
@pytest.mark.parametrize("with_voice", [False, True])
def test_every_segment_fits_and_together_they_are_the_text(tokenizer, model, max_steps, with_voice):
    patches = (model.patch_size, model.feat_dim)
    voice = (
        Voice("A prompt transcript.", torch.zeros(10, *patches), torch.zeros(6, *patches)) if with_voice else Voice()
    )
    budget = SegmentBudget(max_model_len=256, voice=voice, max_steps=max_steps, prefix="(calm)")
    segments = plan_segments(LONG, tokenizer, budget)
    assert len(segments) > 1
    for segment in segments:
        assert segment.startswith("(calm)")
        assert need(tokenizer, model, segment, voice, max_steps) <= 256
    spoken = " ".join(s.removeprefix("(calm)") for s in segments)
    assert spoken.split() == LONG.split()
    # not needlessly small: on average a segment uses most of the room it has
    empty = need(tokenizer, model, "(calm)", voice, max_steps)
    used = sum(need(tokenizer, model, s, voice, max_steps) - empty for s in segments)
    assert used / len(segments) > 0.5 * (256 - empty)


def test_text_that_fits_is_one_segment_and_cjk_splits_too(tokenizer):
    assert plan_segments("Short.", tokenizer, SegmentBudget(max_model_len=256)) == ["Short."]
    chinese = "这是一个很长的句子，用来测试分段。" * 30
    segments = plan_segments(chinese, tokenizer, SegmentBudget(max_model_len=256, max_steps=2))
    assert len(segments) > 1 and "".join(segments) == chinese


def test_no_room_names_the_field(tokenizer):
    with pytest.raises(ApiError) as info:
        plan_segments("Hello.", tokenizer, SegmentBudget(max_model_len=256, max_steps=300))
    assert info.value.field == "max_generate_length"
    big = Voice("t", torch.zeros(300, 4, 64))
    with pytest.raises(ApiError) as info:
        plan_segments("Hello.", tokenizer, SegmentBudget(max_model_len=256, voice=big))
    assert info.value.field == "voice"
    assert voice_positions(big) == 300 and voice_positions(None) == 0
    assert voice_positions(Voice(ref_latents=torch.zeros(5, 4, 64))) == 7
