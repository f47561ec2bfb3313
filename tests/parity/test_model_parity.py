"""Bit-exact parity of the model + inference core with the reference (voxcpm 2.0.3) on CPU bf16.

The reference model is built from a tiny random config exactly like ``from_local`` does (fp32
construction, whole-model cast to bf16, VAE back to fp32, eval), its state dict (minus
``audio_vae.``) is loaded into ours, and both generate from the same seed. The reference runs
through its public ``generate_with_prompt_cache`` (real tokenizer, its own prompt layout, length
cap and RNG consumption); its ``_inference`` inputs are captured and checked against our
``build_prefill``. Latents must match bit for bit.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

pytest.importorskip("voxcpm")
pytest.importorskip("transformers")

from transformers import LlamaTokenizerFast
from voxcpm.model import voxcpm as ref_v1
from voxcpm.model import voxcpm2 as ref_v2
from voxcpm.modules import audiovae as ref_vae

from tests.voxcpm_engine.tiny_configs import randomize_, shared_models_dir, tiny_config_dict
from voxcpm_engine.config.model_config import ModelConfig
from voxcpm_engine.frontend import build_prefill, default_max_steps
from voxcpm_engine.model.voxcpm import VoxCPMModel
from voxcpm_engine.single.generate import generate_patches

FULL_VOCAB = 73448
TARGET = "Hello, this is a parity test."
PROMPT_TEXT = "Hi there."
LONG_PROMPT_TEXT = " ".join(["The quick brown fox jumps over the lazy dog near the riverbank."] * 18)


@pytest.fixture(scope="module")
def tokenizer() -> LlamaTokenizerFast:
    models = shared_models_dir()
    if models is None:
        pytest.skip("shared/models (tokenizer) not found")
    return LlamaTokenizerFast.from_pretrained(str(models / "voxcpm1.5"))


def _config_dict(kind: str, **overrides: Any) -> dict[str, Any]:
    data = tiny_config_dict(kind, **overrides)
    data["lm_config"]["vocab_size"] = FULL_VOCAB  # real tokenizer ids
    data["device"] = "cpu"
    return data


def _build_pair(kind: str, tokenizer: LlamaTokenizerFast, seed: int = 0, **overrides: Any):
    """(reference model, our model) with identical bf16 weights."""
    data = _config_dict(kind, **overrides)
    if data["architecture"] == "voxcpm2":
        cls, vae = ref_v2.VoxCPM2Model, ref_vae.AudioVAEV2(ref_vae.AudioVAEConfigV2(**data["audio_vae_config"]))
        config = ref_v2.VoxCPMConfig.model_validate(data)
    else:
        cls, vae = ref_v1.VoxCPMModel, ref_vae.AudioVAE(ref_vae.AudioVAEConfig(**data["audio_vae_config"]))
        config = ref_v1.VoxCPMConfig.model_validate(data)
    torch.manual_seed(seed)
    ref = cls(config, tokenizer, vae, device="cpu")
    randomize_(ref, seed)  # fp32, before the cast: the reference's own dtype order (spec §3.4)
    ref = ref.to(torch.bfloat16)
    ref.audio_vae = ref.audio_vae.to(torch.float32)
    ref = ref.eval()

    ours = VoxCPMModel.build(ModelConfig.from_dict(data), dtype=torch.bfloat16)
    state = {k: v for k, v in ref.state_dict().items() if not k.startswith("audio_vae.")}
    ours.load_state_dict(state, strict=True)
    return ref, ours


def _capture_inference(ref) -> list[tuple]:
    calls: list[tuple] = []
    original = ref._inference

    def wrapper(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    ref._inference = wrapper
    return calls


def _run(
    ref,
    ours: VoxCPMModel,
    tokenizer: LlamaTokenizerFast,
    *,
    prompt_text: str | None = None,
    prompt_patches: torch.Tensor | None = None,
    ref_patches: torch.Tensor | None = None,
    seed: int = 1234,
    min_steps: int = 2,
    max_steps: int = 12,
    cfg_value: float = 2.0,
    steps: int = 10,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate with both; returns (reference new patches, our new patches)."""
    cache: dict[str, Any] | None = None
    if prompt_patches is not None:
        cache = {"prompt_text": prompt_text, "audio_feat": prompt_patches, "mode": "continuation"}
    if ref_patches is not None:
        cache = {**(cache or {}), "ref_audio_feat": ref_patches}
        cache["mode"] = "ref_continuation" if prompt_patches is not None else "reference"
    calls = _capture_inference(ref)
    torch.manual_seed(seed)
    _, _, ref_out = ref.generate_with_prompt_cache(  # the reference calls them min_len / max_len
        TARGET, cache, min_len=min_steps, max_len=max_steps, inference_timesteps=steps, cfg_value=cfg_value
    )

    wrap = ref.text_tokenizer
    text_ids = wrap((prompt_text or "") + TARGET if prompt_patches is not None else TARGET)
    prefill = build_prefill(ours.config, text_ids, prompt_patches, ref_patches)
    ((args, _),) = calls
    text, text_mask, feat, feat_mask = (a[0] for a in args[:4])
    assert torch.equal(prefill.text_ids, text) and text.dtype == torch.int64
    assert torch.equal(prefill.text_mask, text_mask) and torch.equal(prefill.audio_mask, feat_mask)
    assert torch.equal(prefill.patches, feat) and feat.dtype == torch.bfloat16

    gen = torch.Generator().manual_seed(seed)
    cap = default_max_steps(len(wrap(TARGET)), max_steps)
    ours_out = list(
        generate_patches(
            ours,
            prefill,
            cfg_value=cfg_value,
            inference_timesteps=steps,
            min_steps=min_steps,
            max_steps=cap,
            generator=gen,
        )
    )
    ours_out = torch.stack(ours_out)
    if ours.config.version == 1:
        # v1 returns the context patches in front of the new ones.
        n_ctx = prefill.context_patches.size(0)
        assert torch.equal(ref_out[:n_ctx], prefill.context_patches)
        ref_out = ref_out[n_ctx:]
    return ref_out, ours_out


def _assert_same(ref_out: torch.Tensor, ours_out: torch.Tensor) -> None:
    assert ref_out.shape == ours_out.shape, (ref_out.shape, ours_out.shape)
    diff = (ref_out.float() - ours_out.float()).abs().max().item()
    assert diff == 0.0, f"max abs diff {diff}"


def _patches(n: int, patch: int, seed: int) -> torch.Tensor:
    return torch.randn(n, patch, 64, generator=torch.Generator().manual_seed(seed))


V1_KINDS = ["v1_15", "v1_05b"]


@pytest.mark.parametrize("kind", V1_KINDS)
def test_v1_zero_shot(kind, tokenizer):
    ref, ours = _build_pair(kind, tokenizer)
    _assert_same(*_run(ref, ours, tokenizer))


@pytest.mark.parametrize("kind", V1_KINDS)
def test_v1_continuation(kind, tokenizer):
    ref, ours = _build_pair(kind, tokenizer, seed=1)
    patch = ours.config.patch_size
    _assert_same(*_run(ref, ours, tokenizer, prompt_text=PROMPT_TEXT, prompt_patches=_patches(3, patch, 7)))


def test_v1_mup_and_cfg(tokenizer):
    lm = tiny_config_dict("v1_15")["lm_config"]
    ref, ours = _build_pair("v1_15", tokenizer, seed=2, lm_config={**lm, "use_mup": True})
    prompt = _patches(1, 4, 8)
    _assert_same(*_run(ref, ours, tokenizer, prompt_text=PROMPT_TEXT, prompt_patches=prompt, cfg_value=1.3, steps=6))


@pytest.mark.parametrize("mode", ["zero_shot", "continuation", "reference", "ref_continuation"])
def test_v2_modes(mode, tokenizer):
    ref, ours = _build_pair("v2", tokenizer, seed=3)
    kwargs: dict[str, Any] = {}
    if mode in ("continuation", "ref_continuation"):
        kwargs.update(prompt_text=PROMPT_TEXT, prompt_patches=_patches(3, 4, 9))
    if mode in ("reference", "ref_continuation"):
        kwargs["ref_patches"] = _patches(2, 4, 10)
    _assert_same(*_run(ref, ours, tokenizer, min_steps=8, **kwargs))  # this seed would stop after 4-5


def test_natural_stop_matches(tokenizer):
    """Stop decisions agree, including a near-tie "continue" (margin about -0.05 at step 4)."""
    ref, ours = _build_pair("v2", tokenizer, seed=4)
    with torch.no_grad():
        ours.stop_head.weight[1] -= 0.15  # makes steps 0 and 4 "continue", step 5 "stop" for this seed
        ref.stop_head.weight.copy_(ours.stop_head.weight)
    ref_out, ours_out = _run(ref, ours, tokenizer, min_steps=3, max_steps=40, steps=4)
    _assert_same(ref_out, ours_out)
    assert ours_out.size(0) < 40  # the stop head, not the length cap, ended it


def _released_rope(kind: str) -> dict[str, Any]:
    """Overrides giving every stack the released head_dim and LongRoPE list (List A / List B)."""
    name, head_dim = ("voxcpm2", 128) if kind == "v2" else ("voxcpm1.5", 64)
    released = json.loads((shared_models_dir() / name / "config.json").read_text())["lm_config"]["rope_scaling"]
    data = tiny_config_dict(kind)
    lm = {**data["lm_config"], "kv_channels": head_dim, "rope_scaling": released}
    local = {"kv_channels": head_dim}
    return {
        "lm_config": lm,
        "encoder_config": {**data["encoder_config"], **local},
        "dit_config": {**data["dit_config"], **local},
        "max_length": 400,
    }


@pytest.mark.parametrize("kind", ["v1_15", "v2"])
def test_long_prompt_longrope_positions(kind, tokenizer):
    """A long prefill with the released RoPE lists reaches the positions (>= 105 for List B, >= 199 for
    List A at these head dims) where computing ``p / f`` instead of ``p * (1 / f)`` changes bf16 table
    entries, so an inexact table would break parity here."""
    ref, ours = _build_pair(kind, tokenizer, seed=5, **_released_rope(kind))
    n_tokens = len(ref.text_tokenizer(LONG_PROMPT_TEXT + TARGET))
    assert n_tokens >= 210
    out = _run(ref, ours, tokenizer, prompt_text=LONG_PROMPT_TEXT, prompt_patches=_patches(2, 4, 11), max_steps=5)
    _assert_same(*out)
