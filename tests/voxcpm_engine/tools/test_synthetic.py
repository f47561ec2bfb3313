import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file

from voxcpm_engine.config.presets import preset_config
from voxcpm_engine.tools.synthetic import main, write_checkpoint


def _digest(path):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def test_official_file_layout_and_dtypes(tiny_v2):
    names = sorted(p.name for p in tiny_v2.iterdir())
    assert names == [
        "audiovae.pth",
        "config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert json.loads((tiny_v2 / "config.json").read_text()) == preset_config("tiny-v2")
    weights = load_file(str(tiny_v2 / "model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
    assert not any(k.startswith("audio_vae.") for k in weights)
    vae = torch.load(tiny_v2 / "audiovae.pth", weights_only=True)
    assert set(vae) == {"state_dict"}  # wrapped like the released files
    vae = vae["state_dict"]
    assert vae["decoder.sr_bin_boundaries"].dtype == torch.int32
    assert vae["decoder.sr_bin_boundaries"].tolist() == [20000, 30000, 40000]
    assert {t.dtype for k, t in vae.items() if k != "decoder.sr_bin_boundaries"} == {torch.float32}


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path, tiny_v1):
    again = write_checkpoint("tiny-v1", tmp_path / "again", seed=0)
    assert _digest(again) == _digest(tiny_v1)
    other = write_checkpoint("tiny-v1", tmp_path / "other", seed=1)
    changed = {k for k, v in _digest(other).items() if v != _digest(tiny_v1)[k]}
    assert changed == {"model.safetensors", "audiovae.pth"}


def test_vae_is_normalised_so_audio_is_not_saturated(tiny_ckpt):
    """Random convs + Snake would drive the final tanh into a square wave; the generator rescales."""
    from voxcpm_engine.io.checkpoint import load_checkpoint

    vae = load_checkpoint(tiny_ckpt).vae
    with torch.no_grad():
        wav = vae.decode(torch.randn(1, 64, 40, generator=torch.Generator().manual_seed(0)))
    assert 0.03 < float(wav.std()) < 0.4 and float(wav.abs().max()) < 0.95


def test_stop_head_rows_tie_so_synthetic_models_never_stop(tiny_v1):
    w = load_file(str(tiny_v1 / "model.safetensors"))["stop_head.weight"]
    assert torch.equal(w[0], w[1])


def test_refuses_non_empty_target_and_leaves_nothing_half_written(tmp_path, capsys):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    assert main(["--preset", "tiny-v1", str(target)]) == 1
    assert "not an empty directory" in capsys.readouterr().err
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary left behind


def test_unknown_preset_is_a_usage_error():
    with pytest.raises(SystemExit):
        main(["--preset", "nope", "x"])
