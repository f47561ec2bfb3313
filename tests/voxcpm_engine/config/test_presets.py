"""Tests of voxcpm_engine.config.presets: the release and tiny config dicts, parsed by ModelConfig."""

from __future__ import annotations

import json

import pytest

from tests.conftest import SHARED_MODELS
from voxcpm_engine.config.model_config import ModelConfig
from voxcpm_engine.config.presets import LONGROPE_V1, LONGROPE_V2, PRESETS, WEIGHTS_FILE, preset_config


@pytest.mark.parametrize("name", ["voxcpm-0.5b", "voxcpm1.5", "voxcpm2"])
def test_presets_equal_released_config_values(name):
    path = SHARED_MODELS / name / "config.json"
    if not path.exists():
        pytest.skip("released configs not available")
    assert PRESETS[name] == json.loads(path.read_text())
    assert ModelConfig.from_json(path) == ModelConfig.from_dict(PRESETS[name])


def test_preset_config_is_a_fresh_copy_and_unknown_names_list_the_presets():
    assert list(PRESETS) == ["voxcpm-0.5b", "voxcpm1.5", "voxcpm2", "tiny-v1", "tiny-v2"]
    raw = preset_config("tiny-v2")
    raw["lm_config"]["rope_scaling"]["long_factor"].append(99.0)
    raw["patch_size"] = 7
    assert preset_config("tiny-v2") == PRESETS["tiny-v2"] and PRESETS["tiny-v2"]["patch_size"] == 4
    with pytest.raises(KeyError, match="unknown preset 'tiny-v3'; choose one of voxcpm-0.5b, .*, tiny-v2"):
        preset_config("tiny-v3")


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_parses_and_keeps_its_values(name):
    raw = preset_config(name)
    cfg = ModelConfig.from_dict(raw, where=name)
    assert cfg.raw == raw
    lm = raw["lm_config"]
    assert (cfg.lm.hidden_size, cfg.lm.num_hidden_layers) == (lm["hidden_size"], lm["num_hidden_layers"])
    assert (cfg.lm.num_attention_heads, cfg.lm.num_key_value_heads) == (lm["num_attention_heads"], 2)
    assert list(cfg.lm.rope_scaling.long_factor) == lm["rope_scaling"]["long_factor"]
    assert (cfg.patch_size, cfg.residual_lm_num_layers, cfg.max_length) == (
        raw["patch_size"],
        raw["residual_lm_num_layers"],
        raw["max_length"],
    )
    assert cfg.audio_vae.decoder_rates == tuple(raw["audio_vae_config"]["decoder_rates"])
    assert cfg.version == (2 if raw["architecture"] == "voxcpm2" else 1)


def test_tiny_presets_shrink_the_releases_but_keep_their_features():
    v1, v2 = (ModelConfig.from_dict(preset_config(n)) for n in ("tiny-v1", "tiny-v2"))
    r15, r2 = (ModelConfig.from_dict(preset_config(n)) for n in ("voxcpm1.5", "voxcpm2"))
    for tiny, release in ((v1, r15), (v2, r2)):
        assert tiny.architecture == release.architecture and tiny.patch_size == release.patch_size
        assert tiny.audio_vae.decoder_rates == release.audio_vae.decoder_rates  # release hops and rates
        assert tiny.sample_rate == release.sample_rate and tiny.samples_per_patch == release.samples_per_patch
        assert tiny.lm.num_attention_heads == 4 and tiny.lm.num_key_value_heads == 2  # GQA
        assert tiny.lm.num_hidden_layers == tiny.residual_lm_num_layers == 2
        factors = tiny.lm.rope_scaling.long_factor
        assert len(factors) == tiny.lm.head_dim // 2 and list(factors) == sorted(factors)  # a LongRoPE-like curve
    assert v1.lm.head_dim == 32 and v1.lm.rope_scaling.long_factor[0] == LONGROPE_V1[0]
    # v2: kv_channels != hidden / heads in every stack, and a residual LM without RoPE
    assert v2.lm.head_dim == 64 != v2.lm.hidden_size // v2.lm.num_attention_heads
    assert v2.dit_lm_config().head_dim == 64 != v2.dit.hidden_dim // v2.dit.num_heads
    assert v2.residual_lm_config().no_rope and not v2.lm.no_rope and not v1.residual_lm_config().no_rope
    assert v2.lm.rope_scaling.long_factor[0] == LONGROPE_V2[0]


def test_weights_file_per_preset():
    assert WEIGHTS_FILE == {
        "voxcpm-0.5b": "pytorch_model.bin",
        "voxcpm1.5": "model.safetensors",
        "voxcpm2": "model.safetensors",
        "tiny-v1": "model.safetensors",
        "tiny-v2": "model.safetensors",
    }
