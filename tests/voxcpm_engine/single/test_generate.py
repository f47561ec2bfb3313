"""Tests of voxcpm_engine.single.generate: the single-request loop's stop rules, RNG and bounds."""

from __future__ import annotations

import pytest
import torch

from tests.voxcpm_engine.tiny_configs import tiny_model
from voxcpm_engine.frontend import build_prefill
from voxcpm_engine.single.generate import _prefill, generate_patches

BF16 = torch.bfloat16
HELLO, HI_HELLO = [21045], [12870, 15934]  # "Hello"; "Hi" + "Hello" (spec §6.2)


def _patches(n: int, p: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, p, 64, generator=torch.Generator().manual_seed(seed))


def _force_stop(model, stop: bool) -> None:
    """Constant stop logits: (0, c) always stops, (c, c) is a tie (must continue)."""
    with torch.no_grad():
        model.stop_proj.weight.zero_()
        model.stop_proj.bias.fill_(1.0)
        model.stop_head.weight.fill_(0.02)
        if stop:
            model.stop_head.weight[0].zero_()


def _generate(model, prefill, seed=0, **kwargs) -> list[torch.Tensor]:
    kwargs.setdefault("inference_timesteps", 3)
    return list(generate_patches(model, prefill, generator=torch.Generator().manual_seed(seed), **kwargs))


@pytest.mark.parametrize(("min_steps", "max_steps", "expected"), [(2, 50, 4), (0, 50, 2), (5, 50, 7), (2, 3, 3)])
def test_earliest_stop_gives_min_len_plus_two(min_steps, max_steps, expected):
    model = tiny_model("v1_15")
    _force_stop(model, stop=True)
    prefill = build_prefill(model.config, [5, 6])
    assert len(_generate(model, prefill, min_steps=min_steps, max_steps=max_steps)) == expected


def test_tied_stop_logits_never_stop():
    model = tiny_model("v2")
    _force_stop(model, stop=False)
    assert model.stop_logits(torch.randn(1, 64).to(BF16)).unique().numel() == 1
    assert len(_generate(model, build_prefill(model.config, [5, 6]), min_steps=0, max_steps=9)) == 9


@pytest.mark.parametrize("kind", ["v1_05b", "v2"])
def test_same_seed_same_patches(kind):
    model = tiny_model(kind)
    prefill = build_prefill(model.config, [7, 8, 9], _patches(2, p=model.config.patch_size))
    a = _generate(model, prefill, seed=3, min_steps=10, max_steps=5)
    b = _generate(model, prefill, seed=3, min_steps=10, max_steps=5)
    c = _generate(model, prefill, seed=4, min_steps=10, max_steps=5)
    assert len(a) == 5 and all(p.shape == (model.config.patch_size, 64) and p.dtype == BF16 for p in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])


def test_global_rng_when_no_generator_and_one_draw_per_patch():
    model = tiny_model("v2")
    prefill = build_prefill(model.config, [7, 8])
    with_gen = _generate(model, prefill, seed=5, min_steps=10, max_steps=3)
    torch.manual_seed(5)
    without = list(generate_patches(model, prefill, inference_timesteps=3, min_steps=10, max_steps=3))
    assert all(torch.equal(x, y) for x, y in zip(with_gen, without, strict=True))
    # Exactly one randn([1, D, P]) per patch: the global stream is now 3 draws in.
    torch.manual_seed(5)
    for _ in range(3):
        torch.randn((1, 64, 4), dtype=BF16)
    expected_next = torch.randn((1, 64, 4), dtype=BF16)
    torch.manual_seed(5)
    list(generate_patches(model, prefill, inference_timesteps=3, min_steps=10, max_steps=3))
    assert torch.equal(torch.randn((1, 64, 4), dtype=BF16), expected_next)


def test_temperature_scales_noise():
    model = tiny_model("v1_15")
    prefill = build_prefill(model.config, [7, 8])
    cold_a = _generate(model, prefill, seed=1, temperature=0.0, min_steps=10, max_steps=2)
    cold_b = _generate(model, prefill, seed=2, temperature=0.0, min_steps=10, max_steps=2)
    assert all(torch.equal(x, y) for x, y in zip(cold_a, cold_b, strict=True))


def test_first_lm_hidden_quantized_only_after_audio():
    """The first lm_hidden is raw after token 101 and FSQ'd after a prompt patch (spec §11 item 7)."""
    model = tiny_model("v2")
    for prompt, quantized in ((None, False), (_patches(2), True)):
        prefill = build_prefill(model.config, [7, 8], prompt)
        text_mask, audio_mask = prefill.text_mask[None, :, None], prefill.audio_mask[None, :, None]
        with torch.inference_mode():
            state, cond = _prefill(model, prefill)
            x = text_mask * model.embed_text(prefill.text_ids[None])
            x = x + audio_mask * model.encode_patches(prefill.patches[None])
            raw = model.base_lm(x)[:, -1]
            expected = model.quantize(raw) if quantized else raw
        assert torch.equal(state.lm_hidden, expected)
        assert torch.equal(cond[0], prefill.patches[-1])


def test_prompt_and_generation_bounded_by_max_length():
    model = tiny_model("v1_15", max_length=8)
    with pytest.raises(ValueError, match="max_length"):
        _generate(model, build_prefill(model.config, list(range(10, 20))), max_steps=1)
    prefill = build_prefill(model.config, [5, 6, 7, 8, 9])  # 6 positions: room for 2 decode steps
    with pytest.raises(RuntimeError, match="KV cache is full"):
        _generate(model, prefill, min_steps=10, max_steps=10)
