import pickle
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from voxcpm_engine.io.checkpoint import CheckpointError, load_checkpoint, read_tensors


@pytest.fixture
def ckpt(tmp_path, tiny_v1):
    """A private copy of tiny-v1 that a test may break."""
    return shutil.copytree(tiny_v1, tmp_path / "ckpt")


def _rewrite(path, fn):
    sd = load_file(str(path))
    fn(sd)
    save_file(sd, str(path))


def test_loads_both_architectures(tiny_ckpt):
    loaded = load_checkpoint(tiny_ckpt)
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    assert next(loaded.vae.parameters()).dtype == torch.float32
    assert loaded.config.architecture in ("voxcpm", "voxcpm2")


@pytest.mark.parametrize(
    "name", ["config.json", "model.safetensors", "audiovae.pth", "tokenizer.json"], ids=lambda n: n
)
def test_missing_file_is_named(ckpt, name):
    (ckpt / name).unlink()
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        load_checkpoint(ckpt)


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint directory not found"):
        load_checkpoint(tmp_path / "nope")


def test_missing_tensor_is_named(ckpt):
    _rewrite(ckpt / "model.safetensors", lambda sd: sd.pop("stop_head.weight"))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: missing 1 tensor\(s\): stop_head\.weight"):
        load_checkpoint(ckpt)


def test_unexpected_tensor_is_named(ckpt):
    _rewrite(ckpt / "model.safetensors", lambda sd: sd.update(extra_head=torch.zeros(2)))
    with pytest.raises(CheckpointError, match=r"unexpected 1 tensor\(s\): extra_head"):
        load_checkpoint(ckpt)


def test_misshaped_tensor_is_named(ckpt):
    _rewrite(ckpt / "model.safetensors", lambda sd: sd.update({"fsq_layer.in_proj.bias": torch.zeros(7)}))
    with pytest.raises(CheckpointError, match=r"mis-shaped tensor\(s\).*fsq_layer\.in_proj\.bias \(7,\)"):
        load_checkpoint(ckpt)


def test_vae_key_errors_name_the_vae_file(ckpt):
    sd = torch.load(ckpt / "audiovae.pth", weights_only=True)["state_dict"]
    sd.pop("encoder.fc_mu.bias")
    torch.save(sd, ckpt / "audiovae.pth")  # a bare state dict is read too
    with pytest.raises(CheckpointError, match=r"audiovae\.pth: missing 1 tensor\(s\): encoder\.fc_mu\.bias"):
        load_checkpoint(ckpt)


def test_corrupt_weights_file(ckpt):
    (ckpt / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: cannot read tensors"):
        load_checkpoint(ckpt)


class _Payload:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickles_are_loaded_weights_only(ckpt, capsys):
    (ckpt / "audiovae.pth").write_bytes(pickle.dumps({"x": _Payload()}))
    with pytest.raises(CheckpointError, match=r"audiovae\.pth: cannot read tensors"):
        load_checkpoint(ckpt)
    assert "pwned" not in capsys.readouterr().out


def test_unknown_architecture(ckpt):
    text = (ckpt / "config.json").read_text().replace('"voxcpm"', '"voxcpm9"')
    (ckpt / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match="unknown architecture 'voxcpm9'"):
        load_checkpoint(ckpt)


def test_bin_and_wrapped_state_dicts_and_vae_safetensors(ckpt):
    """The 0.5B layout (pytorch_model.bin) and the reference's {"state_dict": ...} wrapper load too."""
    weights = load_file(str(ckpt / "model.safetensors"))
    (ckpt / "model.safetensors").unlink()
    torch.save({"state_dict": weights}, ckpt / "pytorch_model.bin")
    vae = torch.load(ckpt / "audiovae.pth", weights_only=True)["state_dict"]
    (ckpt / "audiovae.pth").unlink()
    save_file(vae, str(ckpt / "audiovae.safetensors"))
    loaded = load_checkpoint(ckpt)
    assert torch.equal(loaded.model.state_dict()["stop_proj.weight"], weights["stop_proj.weight"])
    assert set(read_tensors(ckpt / "pytorch_model.bin")) == set(weights)
