import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file

from voxcpm_engine.io.checkpoint import read_config
from voxcpm_engine.io.lora_files import load_adapter
from voxcpm_engine.tools.synthetic import main
from voxcpm_engine.tools.synthetic_lora import write_lora

FIELDS = [
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
ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")


def _digest(path):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def _expected_keys(cfg, enable_proj):
    stacks = [
        ("base_lm", cfg.lm.num_hidden_layers),
        ("residual_lm", cfg.residual_lm_num_layers),
        ("feat_decoder.estimator.decoder", cfg.dit.num_layers),
    ]
    modules = [f"{s}.layers.{i}.self_attn.{p}" for s, n in stacks for i in range(n) for p in ATTN]
    if enable_proj:
        modules += ["enc_to_lm_proj", "lm_to_dit_proj", "res_to_dit_proj"]
        modules += ["fusion_concat_proj"] if cfg.version == 2 else []
    return {f"{m}.lora_{ab}" for m in modules for ab in "AB"}


@pytest.mark.parametrize("enable_proj", [False, True])
def test_official_layout_and_key_set(tiny_ckpt, tmp_path, enable_proj):
    out = write_lora(tiny_ckpt, tmp_path / "lora", rank=4, seed=0, enable_proj=enable_proj)
    assert sorted(p.name for p in out.iterdir()) == ["lora_config.json", "lora_weights.safetensors"]
    doc = json.loads((out / "lora_config.json").read_text())
    assert list(doc) == ["base_model", "lora_config"] and doc["base_model"] == str(tiny_ckpt)
    lc = doc["lora_config"]
    assert list(lc) == FIELDS
    flags = (lc["enable_lm"], lc["enable_dit"], lc["enable_proj"], lc["r"], lc["alpha"], lc["dropout"])
    assert flags == (True, True, enable_proj, 4, 8, 0.0)
    cfg = read_config(tiny_ckpt)
    proj = ["enc_to_lm_proj", "lm_to_dit_proj", "res_to_dit_proj"]
    proj += ["fusion_concat_proj"] if cfg.version == 2 else []
    assert lc["target_proj_modules"] == proj
    tensors = load_file(str(out / "lora_weights.safetensors"))
    assert set(tensors) == _expected_keys(cfg, enable_proj)
    assert not any(k.startswith("feat_encoder.") for k in tensors)
    assert {t.dtype for t in tensors.values()} == {torch.float32}
    assert all(t.abs().max() > 0 for t in tensors.values())  # B is not zero: the adapter does something
    adapter = load_adapter(out, cfg)
    assert adapter.rank == 4 and adapter.scaling == 2.0


def test_deterministic(tiny_v1, tmp_path):
    a = write_lora(tiny_v1, tmp_path / "a", seed=3)
    b = write_lora(tiny_v1, tmp_path / "b", seed=3)
    c = write_lora(tiny_v1, tmp_path / "c", seed=4)
    assert _digest(a) == _digest(b)
    assert _digest(c)["lora_weights.safetensors"] != _digest(a)["lora_weights.safetensors"]
    assert _digest(c)["lora_config.json"] == _digest(a)["lora_config.json"]


def test_refuses_non_empty_target_and_leaves_nothing_behind(tiny_v1, tmp_path):
    target = tmp_path / "lora"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        write_lora(tiny_v1, target)
    assert [p.name for p in tmp_path.iterdir()] == ["lora"]


def test_cli(tiny_v2, tmp_path, capsys):
    out = tmp_path / "lora"
    assert main(["--lora", "--base", str(tiny_v2), str(out), "--rank", "4", "--seed", "2", "--enable-proj"]) == 0
    assert "wrote LoRA adapter (rank 4, seed 2)" in capsys.readouterr().out
    assert _digest(out) == _digest(write_lora(tiny_v2, tmp_path / "again", rank=4, seed=2, enable_proj=True))
    assert main(["--lora", "--base", str(tmp_path / "missing"), str(tmp_path / "x")]) == 1
    assert "checkpoint directory not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["--preset", "tiny-v1", "--lora", "--base", "b", "out"],  # mutually exclusive
        ["--lora", "out"],  # --base required
        ["--preset", "tiny-v1", "--rank", "4", "out"],  # LoRA options without --lora
        ["--lora", "--base", "b", "--rank", "0", "out"],
        ["out"],
    ],
)
def test_cli_usage_errors(argv):
    with pytest.raises(SystemExit):
        main(argv)
