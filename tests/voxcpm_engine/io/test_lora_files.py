"""Tests of voxcpm_engine.io.lora_files: adapter configs, targets and weights, each error naming what is wrong."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from voxcpm_engine.config.model_config import ModelConfig
from voxcpm_engine.config.presets import preset_config
from voxcpm_engine.io.lora_files import (
    MAX_RANK,
    MAX_SCALING,
    MAX_WEIGHT_ABS,
    AdapterError,
    LoRAConfig,
    default_lora_targets,
    load_adapter,
    lora_targets,
    read_lora_config,
)

V1 = ModelConfig.from_dict(preset_config("tiny-v1"))
V2 = ModelConfig.from_dict(preset_config("tiny-v2"))


def _write_config(path, **fields):
    path.write_text(json.dumps({"base_model": "x", "lora_config": fields}))
    return path


# ------------------------------------------------------------------------------------ config


def test_defaults_are_the_reference_ones():
    c = LoRAConfig()
    assert (c.enable_lm, c.enable_dit, c.enable_proj, c.r, c.alpha, c.dropout) == (False, False, False, 8, 16, 0.0)
    assert c.target_modules_lm == c.target_modules_dit == ("q_proj", "v_proj", "k_proj", "o_proj")
    assert c.proj_modules(1) == ("enc_to_lm_proj", "lm_to_dit_proj", "res_to_dit_proj")
    assert c.proj_modules(2) == ("enc_to_lm_proj", "lm_to_dit_proj", "res_to_dit_proj", "fusion_concat_proj")
    assert c.scaling == 2.0 and isinstance(c.scaling, float)
    assert LoRAConfig(r=32, alpha=16).scaling == 0.5


def test_parses_official_file_ignoring_unknown_keys(tmp_path):
    path = _write_config(tmp_path / "lora_config.json", enable_lm=True, enable_dit=True, r=32, alpha=32.0, extra=1)
    cfg, base = read_lora_config(path)
    assert base == "x" and cfg.r == 32 and cfg.alpha == 32 and cfg.enable_lm and not cfg.enable_proj
    assert cfg.scaling == 1.0 and cfg.target_proj_modules is None


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"r": 0}, "lora_config.r"),
        ({"r": "8"}, "lora_config.r"),
        ({"alpha": 1.5}, "lora_config.alpha"),
        ({"alpha": 0}, "lora_config.alpha"),
        ({"alpha": 1e308}, "lora_config.alpha"),  # an integral float: accepted before, and every request went silent
        ({"alpha": 10**400}, "lora_config.alpha"),  # a JSON integer past any float: compared exactly
        ({"r": 8, "alpha": 8 * MAX_SCALING + 1}, "lora_config.alpha"),
        ({"r": MAX_RANK + 1, "alpha": 16}, "lora_config.r"),
        ({"r": 1e300}, "lora_config.r"),
        ({"enable_lm": 1}, "lora_config.enable_lm"),
        ({"dropout": 2.0}, "lora_config.dropout"),
        ({"target_modules_lm": "q_proj"}, "lora_config.target_modules_lm"),
    ],
)
def test_config_errors_name_file_and_field(tmp_path, fields, field):
    path = _write_config(tmp_path / "lora_config.json", **fields)
    with pytest.raises(AdapterError, match=rf"{tmp_path}.*{field}"):
        read_lora_config(path)


def test_config_bounds_are_inclusive_and_messages_stay_short(tmp_path):
    at_limit = LoRAConfig(r=MAX_RANK, alpha=MAX_SCALING * MAX_RANK)
    assert at_limit.scaling == MAX_SCALING
    with pytest.raises(AdapterError, match=r"lora_config\.alpha must be at most 64 x r = 512"):
        LoRAConfig(r=8, alpha=513)
    path = _write_config(tmp_path / "lora_config.json", alpha=10**400)
    with pytest.raises(AdapterError) as info:
        read_lora_config(path)
    assert len(str(info.value)) < len(str(path)) + 200  # not 400 digits echoed back


def test_malformed_config_files(tmp_path):
    bad = tmp_path / "lora_config.json"
    bad.write_text("{not json")
    with pytest.raises(AdapterError, match="cannot read"):
        read_lora_config(bad)
    bad.write_text(json.dumps({"r": 8}))
    with pytest.raises(AdapterError, match="'lora_config' field"):
        read_lora_config(bad)


# ----------------------------------------------------------------------------------- targets


def test_targets_per_architecture():
    for cfg in (V1, V2):
        all_on = default_lora_targets(cfg)
        assert not any(n.startswith("feat_encoder.") for n in all_on)  # the LocEnc never gets LoRA
        proj = [n for n in all_on if "." not in n]
        expected = ["enc_to_lm_proj", "lm_to_dit_proj", "res_to_dit_proj"]
        assert proj == expected + (["fusion_concat_proj"] if cfg.version == 2 else [])
        layers = cfg.lm.num_hidden_layers + cfg.residual_lm_num_layers + cfg.dit.num_layers
        assert len(all_on) == 4 * layers + len(proj)
    dit = lora_targets(V1, LoRAConfig(enable_dit=True, target_modules_dit=("in_proj",)))
    assert list(dit) == ["feat_decoder.estimator.in_proj"]  # exact last name; feat_encoder.in_proj untouched


def test_unknown_target_name_is_an_error_but_fusion_on_v1_is_tolerated():
    with pytest.raises(AdapterError, match="target_modules_lm: 'qkv_proj'"):
        lora_targets(V1, LoRAConfig(enable_lm=True, target_modules_lm=("q_proj", "qkv_proj")))
    with pytest.raises(AdapterError, match="target_proj_modules: 'fsq_layer'"):
        lora_targets(V2, LoRAConfig(enable_proj=True, target_proj_modules=("fsq_layer",)))
    v2_list = LoRAConfig(enable_proj=True).proj_modules(2)
    assert len(lora_targets(V1, LoRAConfig(enable_proj=True, target_proj_modules=v2_list))) == 3


# ----------------------------------------------------------------------------------- adapter


def test_load_adapter(lora_v2):
    adapter = load_adapter(lora_v2, V2)
    assert adapter.rank == 8 and adapter.scaling == 2.0 and adapter.architecture == "voxcpm2"
    assert adapter.targets == frozenset(default_lora_targets(V2))
    a, b = adapter.weights["fusion_concat_proj"]
    assert a.shape == (8, 2 * V2.lm.hidden_size) and b.shape == (V2.lm.hidden_size, 8)
    assert a.device.type == "cpu" and a.dtype == torch.float32


def _copy_adapter(src, dst, tensors=None, **config_changes):
    dst.mkdir()
    doc = json.loads((src / "lora_config.json").read_text())
    doc["lora_config"].update(config_changes)
    (dst / "lora_config.json").write_text(json.dumps(doc))
    tensors = load_file(str(src / "lora_weights.safetensors")) if tensors is None else tensors
    save_file(tensors, str(dst / "lora_weights.safetensors"))
    return dst


def test_unexpected_key_names_file_and_key(lora_v2, tmp_path):
    bad = _copy_adapter(lora_v2, tmp_path / "a", enable_proj=False)  # proj tensors now untargeted
    with pytest.raises(AdapterError, match=r"lora_weights\.safetensors: 8 tensor\(s\) not targeted.*enc_to_lm_proj"):
        load_adapter(bad, V2)


def test_missing_pair_names_the_key(lora_v2, tmp_path):
    tensors = load_file(str(lora_v2 / "lora_weights.safetensors"))
    del tensors["residual_lm.layers.0.self_attn.v_proj.lora_B"]
    bad = _copy_adapter(lora_v2, tmp_path / "a", tensors)
    with pytest.raises(AdapterError, match=r"missing 1 tensor\(s\): residual_lm\.layers\.0\.self_attn\.v_proj\.lora_B"):
        load_adapter(bad, V2)


def test_finite_but_huge_weights_are_refused(lora_v2, tmp_path):
    tensors = load_file(str(lora_v2 / "lora_weights.safetensors"))
    key = "base_lm.layers.0.self_attn.q_proj.lora_B"
    tensors[key] = tensors[key].clone()
    tensors[key][0, 0] = -3e38  # finite fp32, overflows to inf in bf16 arithmetic
    bad = _copy_adapter(lora_v2, tmp_path / "a", tensors)
    with pytest.raises(AdapterError, match=rf"1 tensor\(s\) with values beyond \+-{MAX_WEIGHT_ABS:g}: {key}"):
        load_adapter(bad, V2)
    tensors[key][0, 0] = MAX_WEIGHT_ABS  # the bound itself is allowed
    assert load_adapter(_copy_adapter(lora_v2, tmp_path / "b", tensors), V2).rank == 8


def test_rank_mismatch_and_wrong_architecture(lora_v2, tmp_path):
    bad = _copy_adapter(lora_v2, tmp_path / "a", r=4)
    with pytest.raises(AdapterError, match=r"mis-shaped.*r=4.*base_lm\.layers\.0\.self_attn\.q_proj\.lora_A"):
        load_adapter(bad, V2)
    with pytest.raises(AdapterError, match="lora_weights.safetensors"):
        load_adapter(lora_v2, V1)


def test_ckpt_format_and_bad_values(lora_v2, tmp_path):
    tensors = load_file(str(lora_v2 / "lora_weights.safetensors"))
    ckpt = _copy_adapter(lora_v2, tmp_path / "ckpt", tensors)
    (ckpt / "lora_weights.safetensors").unlink()
    torch.save({"state_dict": tensors}, ckpt / "lora_weights.ckpt")
    assert load_adapter(ckpt, V2).targets == load_adapter(lora_v2, V2).targets
    tensors["lm_to_dit_proj.lora_A"][0, 0] = float("nan")
    with pytest.raises(AdapterError, match="not finite.*lm_to_dit_proj.lora_A"):
        load_adapter(_copy_adapter(lora_v2, tmp_path / "nan", tensors), V2)
    (ckpt / "lora_weights.ckpt").unlink()
    with pytest.raises(AdapterError, match="no LoRA weights file"):
        load_adapter(ckpt, V2)


def test_missing_files_and_bad_base_model_are_named(lora_v2, tmp_path):
    with pytest.raises(AdapterError, match=rf"{tmp_path / 'nope'}: adapter directory not found"):
        load_adapter(tmp_path / "nope", V2)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AdapterError, match=rf"{empty / 'lora_config.json'}: file not found"):
        load_adapter(empty, V2)
    doc = json.loads((lora_v2 / "lora_config.json").read_text())
    path = tmp_path / "lora_config.json"
    path.write_text(json.dumps({**doc, "base_model": 3}))
    with pytest.raises(AdapterError, match=rf"{path}: base_model must be a string or null, got 3"):
        read_lora_config(path)
    path.write_text(json.dumps({**doc, "lora_config": [1]}))
    with pytest.raises(AdapterError, match=rf"{path}: lora_config must be an object, got list"):
        read_lora_config(path)


def test_a_config_that_enables_nothing_is_refused(lora_v2, tmp_path):
    off = _copy_adapter(lora_v2, tmp_path / "off", enable_lm=False, enable_dit=False, enable_proj=False)
    with pytest.raises(AdapterError, match=r"lora_config\.json: enables no target"):
        load_adapter(off, V2)


def test_to_dict_round_trips_through_the_file_format(tmp_path):
    cfg = LoRAConfig(enable_lm=True, enable_proj=True, r=4, alpha=12, dropout=0.1, target_modules_lm=("q_proj",))
    doc = cfg.to_dict(version=2)
    assert list(doc) == [
        "enable_lm",
        "enable_dit",
        "enable_proj",
        "r",
        "alpha",
        "dropout",
        "target_modules_lm",
        "target_modules_dit",
        "target_proj_modules",
    ]
    assert doc["target_proj_modules"][-1] == "fusion_concat_proj" and cfg.to_dict(1)["target_proj_modules"] == list(
        cfg.proj_modules(1)
    )
    path = _write_config(tmp_path / "lora_config.json", **doc)
    parsed, _ = read_lora_config(path)
    assert parsed == LoRAConfig(**{**cfg.__dict__, "target_proj_modules": cfg.proj_modules(2)})
    assert parsed.scaling == 3.0
