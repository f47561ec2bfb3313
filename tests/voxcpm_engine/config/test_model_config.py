"""Tests of voxcpm_engine.config.model_config: parsing and validating config.json dicts."""

import pytest

from voxcpm_engine.config.model_config import AudioVAEConfig, ConfigError, ModelConfig
from voxcpm_engine.config.presets import preset_config


def test_release_configs_parse_with_derived_values():
    v15 = ModelConfig.from_dict(preset_config("voxcpm1.5"))
    assert (v15.version, v15.patch_size, v15.sample_rate, v15.samples_per_patch) == (1, 4, 44100, 7056)
    assert v15.residual_lm_config().num_hidden_layers == 8 and v15.residual_lm_config().vocab_size == 0
    v2 = ModelConfig.from_dict(preset_config("voxcpm2"))
    assert (v2.version, v2.sample_rate, v2.samples_per_patch, v2.prompt_pad_multiple) == (2, 48000, 7680, 2560)
    assert v2.residual_lm_config().no_rope and not v2.lm.no_rope
    assert v2.dit_lm_config().head_dim == 128 and v2.dit_lm_config().hidden_size == 1024
    v05 = ModelConfig.from_dict(preset_config("voxcpm-0.5b"))
    assert (v05.patch_size, v05.samples_per_patch, v05.context_patches) == (2, 1280, 2)


def test_missing_architecture_defaults_to_voxcpm_and_vae_defaults_apply():
    raw = preset_config("voxcpm-0.5b")
    del raw["architecture"], raw["audio_vae_config"]
    cfg = ModelConfig.from_dict(raw)
    assert cfg.architecture == "voxcpm" and cfg.audio_vae == AudioVAEConfig.defaults(1)


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d.update(architecture="voxcpm3"), "unknown architecture 'voxcpm3'"),
        (lambda d: d.pop("lm_config"), "lm_config"),
        (lambda d: d["lm_config"].pop("hidden_size"), "hidden_size"),
        (lambda d: d["lm_config"]["rope_scaling"].update(type="yarn"), "rope_scaling"),
        (lambda d: d["lm_config"]["rope_scaling"].update(long_factor=[1.0] * 3), "rope_scaling factors"),
        (lambda d: d["lm_config"].update(num_key_value_heads=3), "num_key_value_heads"),
        (lambda d: d["audio_vae_config"].update(decoder_rates=[8, 8]), "hop"),
        (lambda d: d.update(dtype="int8"), "dtype"),
    ],
)
def test_invalid_configs_name_the_field(mutate, needle):
    raw = preset_config("tiny-v2")
    mutate(raw)
    with pytest.raises(ConfigError, match="cfg.json") as info:
        ModelConfig.from_dict(raw, where="cfg.json")
    assert needle in str(info.value)


def test_from_json_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        ModelConfig.from_json(tmp_path / "config.json")
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match=r"config\.json: invalid JSON"):
        ModelConfig.from_json(bad)
