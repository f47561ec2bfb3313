"""Tests of voxcpm_engine.frontend: prompt layouts (spec §6.2 captured examples), context patches, counting."""

from __future__ import annotations

import pytest
import torch

from tests.voxcpm_engine.tiny_configs import tiny_config
from voxcpm_engine.frontend import build_prefill, default_max_steps, prefill_length, request_tokens
from voxcpm_engine.io.tokenizer import TextTokenizer
from voxcpm_engine.types import RequestField, RequestRejected

BF16 = torch.bfloat16
HELLO, HI_HELLO = [21045], [12870, 15934]  # "Hello"; "Hi" + "Hello" (spec §6.2)


def _patches(n: int, p: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, p, 64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("mode", "tokens", "text_mask", "audio_mask"),
    [
        ("zero_shot", [21045, 101], [1, 1], [0, 0]),
        ("continuation", [12870, 15934, 101, 0, 0, 0], [1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]),
        ("reference", [103, 0, 0, 104, 21045, 101], [1, 0, 0, 1, 1, 1], [0, 1, 1, 0, 0, 0]),
        (
            "ref_continuation",
            [103, 0, 0, 104, 12870, 15934, 101, 0, 0, 0],
            [1, 0, 0, 1, 1, 1, 1, 0, 0, 0],
            [0, 1, 1, 0, 0, 0, 0, 1, 1, 1],
        ),
    ],
)
def test_prefill_layouts_match_captured_examples(mode, tokens, text_mask, audio_mask):
    cfg = tiny_config("v2")
    ref = _patches(2, seed=1) if "ref" in mode else None
    prompt = _patches(3, seed=2) if "continuation" in mode else None
    prefill = build_prefill(cfg, HI_HELLO if prompt is not None else HELLO, prompt, ref)
    assert prefill.text_ids.tolist() == tokens and prefill.text_ids.dtype == torch.int64
    assert prefill.text_mask.tolist() == text_mask and prefill.text_mask.dtype == torch.int32
    assert prefill.audio_mask.tolist() == audio_mask and prefill.audio_mask.dtype == torch.int32
    assert prefill.patches.dtype == BF16 and prefill.patches.shape == (len(tokens), 4, 64)
    audio = prefill.audio_mask.bool()
    assert not prefill.patches[~audio].any()
    expected_audio = torch.cat([x for x in (ref, prompt) if x is not None] or [torch.empty(0, 4, 64)])
    assert torch.equal(prefill.patches[audio], expected_audio.to(BF16))
    assert len(prefill) == len(tokens)


def test_v1_layouts_and_reference_rejected():
    cfg = tiny_config("v1_05b")
    prefill = build_prefill(cfg, HI_HELLO, _patches(3, p=2))
    assert prefill.text_ids.tolist() == [12870, 15934, 101, 0, 0, 0]
    with pytest.raises(ValueError, match="voxcpm2"):
        build_prefill(cfg, HELLO, None, _patches(2, p=2))
    with pytest.raises(ValueError, match=r"\[N, 2, 64\]"):
        build_prefill(cfg, HELLO, _patches(2, p=4))


@pytest.mark.parametrize(
    ("kind", "n_ref", "n_prompt", "expected"),
    [
        ("v1_15", 0, 0, []),
        ("v1_15", 0, 1, [("p", 0)]),
        ("v1_15", 0, 3, [("p", 1), ("p", 2)]),
        ("v2", 0, 5, [("p", 2), ("p", 3), ("p", 4)]),
        ("v2", 2, 0, []),
        ("v2", 2, 1, [("r", 0), ("r", 1), ("p", 0)]),  # reference patches count as audio (reference quirk)
    ],
)
def test_context_patches(kind, n_ref, n_prompt, expected):
    cfg = tiny_config(kind)
    ref, prompt = _patches(n_ref, seed=1), _patches(n_prompt, seed=2)
    prefill = build_prefill(cfg, HELLO, prompt if n_prompt else None, ref if n_ref else None)
    want = [(ref if src == "r" else prompt)[i].to(BF16) for src, i in expected]
    assert prefill.context_patches.shape == (len(want), 4, 64) and prefill.context_patches.dtype == BF16
    assert all(torch.equal(a, b) for a, b in zip(prefill.context_patches, want, strict=True))


def test_default_max_steps():
    assert default_max_steps(5) == 40
    assert default_max_steps(1000, max_steps=2000) == 2000
    assert default_max_steps(3, max_steps=4096, ratio=2.5) == 17


@pytest.mark.parametrize(("n_prompt", "n_ref"), [(0, 0), (3, 0), (0, 2), (3, 2)])
def test_prefill_length_counts_what_build_prefill_lays_out(n_prompt, n_ref):
    cfg = tiny_config("v2")
    prompt = _patches(n_prompt, seed=2) if n_prompt else None
    ref = _patches(n_ref, seed=1) if n_ref else None
    for ids in (HELLO, HI_HELLO, list(range(1000, 1017))):
        assert prefill_length(len(ids), n_prompt, n_ref) == len(build_prefill(cfg, ids, prompt, ref))


def test_refusals_name_the_voice():
    with pytest.raises(RequestRejected) as err:
        build_prefill(tiny_config("v1_05b"), HELLO, None, _patches(2, p=2))
    assert err.value.field is RequestField.VOICE


def test_request_tokens_put_the_transcript_before_the_target(tiny_v1):
    tok = TextTokenizer.from_dir(tiny_v1)
    target, prompt = request_tokens(tok, "Hello there.", None)
    assert target == prompt == tok.encode("Hello there.")
    target2, prompt2 = request_tokens(tok, "Hello there.", "Hi. ")
    assert target2 == target and prompt2 == tok.encode("Hi. Hello there.")
