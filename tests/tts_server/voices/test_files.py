"""Tests of tts_server.voices.files: the on-disk voice format, its atomic changes, recovery and refusals."""

import hashlib
import json
import os
import pickle

import pytest
import torch
from safetensors.torch import save as save_safetensors

from tts_server.voices import files as vf

MODEL = {"version": 2, "patch_size": 4, "latent_dim": 64}
TWO_TENSORS = save_safetensors({"latents": torch.zeros(1, 4, 64), "x": torch.zeros(1)})
LORA = (save_safetensors({"w": torch.ones(2, 2)}), b'{"base_model": null, "lora_config": {"r": 4}}')


def _latents(t: int, seed: int) -> torch.Tensor:
    return torch.randn(t, 4, 64, generator=torch.Generator().manual_seed(seed))


def _doc(
    name: str, *, prompt: bool = True, reference: bool = True, lora: bool = True, text: str | None = "Hi."
) -> dict:
    kinds = {"lora": lora, "prompt": prompt, "reference": reference}
    return {"format": vf.FORMAT_VERSION, "name": name, "kinds": kinds, "prompt_text": text, "model": MODEL}


def _write(root, name, *, prompt=True, reference=True, lora=True, seed=0, text="Hi."):
    """A complete voice committed at ``root/name``; returns its path."""
    latents = {}
    if prompt:
        latents["prompt"] = _latents(3, seed)
    if reference:
        latents["reference"] = _latents(2, seed + 1)
    doc = _doc(name, prompt=prompt, reference=reference, lora=lora, text=text)
    staging = vf.stage(root, name, doc, latents, LORA if lora else None)
    vf.commit(root, staging, root / name)
    return root / name


def _refused(path, model=MODEL) -> str:
    with pytest.raises(vf.VoiceFileError) as err:
        vf.read_voice(path, model)
    return str(err.value)


def _rehash(path, rel: str, data: bytes) -> None:
    """Replace one file of a voice and record its new sha256, so only the content itself is wrong."""
    (path / rel).write_bytes(data)
    doc = json.loads((path / "voice.json").read_text())
    doc["files"][rel] = hashlib.sha256(data).hexdigest()
    (path / "voice.json").write_text(json.dumps(doc))


def test_a_staged_and_committed_voice_reads_back_exactly(tmp_path):
    path = _write(tmp_path, "v1")
    assert sorted(os.listdir(tmp_path)) == ["v1"]  # no staging leftover
    assert sorted(os.listdir(path)) == ["lora", "prompt_latents.safetensors", "ref_latents.safetensors", "voice.json"]
    assert sorted(os.listdir(path / "lora")) == ["lora_config.json", "lora_weights.safetensors"]
    got = vf.read_voice(path, MODEL)
    assert torch.equal(got.prompt_latents, _latents(3, 0)) and torch.equal(got.ref_latents, _latents(2, 1))
    assert got.prompt_latents.dtype == torch.float32 and got.lora_dir == path / "lora"
    assert (path / "lora" / "lora_weights.safetensors").read_bytes() == LORA[0]
    assert got.doc["prompt_text"] == "Hi." and got.doc["kinds"] == {"lora": True, "prompt": True, "reference": True}
    files = got.doc["files"]
    assert set(files) == {"prompt_latents.safetensors", "ref_latents.safetensors", "lora/lora_weights.safetensors",
                          "lora/lora_config.json"}  # fmt: skip
    for rel, digest in files.items():
        assert hashlib.sha256((path / rel).read_bytes()).hexdigest() == digest


def test_only_the_kinds_a_voice_has_are_written_and_read(tmp_path):
    ref_only = vf.read_voice(_write(tmp_path, "r", prompt=False, lora=False, text=None), MODEL)
    assert ref_only.prompt_latents is None and ref_only.lora_dir is None and ref_only.ref_latents.shape == (2, 4, 64)
    assert sorted(os.listdir(tmp_path / "r")) == ["ref_latents.safetensors", "voice.json"]
    lora_only = vf.read_voice(_write(tmp_path, "l", prompt=False, reference=False, text=None), MODEL)
    assert lora_only.prompt_latents is None and lora_only.ref_latents is None and lora_only.lora_dir is not None


def test_a_replace_swaps_the_whole_directory(tmp_path):
    old = _write(tmp_path, "v", seed=0)
    staging = vf.stage(tmp_path, "v", _doc("v", reference=False, lora=False), {"prompt": _latents(5, 7)}, None)
    vf.commit(tmp_path, staging, old)
    new = vf.read_voice(tmp_path / "v", MODEL)
    assert torch.equal(new.prompt_latents, _latents(5, 7)) and new.lora_dir is None
    assert not (tmp_path / "v" / "lora").exists()  # nothing of the old voice is mixed in
    if staging.exists():  # exchanged: the old voice is now at the staging path, whole
        assert torch.equal(vf.read_voice(staging, MODEL).prompt_latents, _latents(3, 0))
        vf.remove_tree(staging)
    assert os.listdir(tmp_path) == ["v"]


def test_a_stage_that_fails_midway_leaves_nothing(tmp_path):
    with pytest.raises(AttributeError):  # the second latents file cannot be written
        vf.stage(tmp_path, "v", _doc("v", lora=False), {"prompt": _latents(3, 0), "reference": "not a tensor"}, None)
    assert os.listdir(tmp_path) == []


def test_discard_removes_a_voice_in_one_step(tmp_path):
    path = _write(tmp_path, "gone")
    vf.discard(tmp_path, path)
    assert os.listdir(tmp_path) == []


def test_recover_finishes_or_rolls_back_interrupted_changes(tmp_path):
    _write(tmp_path, "kept")
    _write(tmp_path, "moved")
    os.rename(tmp_path / "moved", tmp_path / ".replaced.moved.1a2b3c4d")  # crash between a replace's two renames
    _write(tmp_path, "both")
    (tmp_path / ".replaced.both.0f0f0f0f").mkdir()  # the replace did complete: the old copy is stale
    (tmp_path / ".staging.new.x1").mkdir()  # a write that never committed
    (tmp_path / ".staging.new.x1" / "voice.json").write_text("{}")
    (tmp_path / ".removed.old.abcd").mkdir()  # a removal that did not finish deleting
    (tmp_path / "not a name").mkdir()
    (tmp_path / "README").write_text("a stray file")
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (tmp_path / "link").symlink_to(outside, target_is_directory=True)

    assert vf.recover(tmp_path) == ["both", "kept", "link", "moved"]  # a symlink is listed, and fails to load
    assert sorted(os.listdir(tmp_path)) == ["README", "both", "kept", "link", "moved", "not a name"]
    assert torch.equal(vf.read_voice(tmp_path / "moved", MODEL).prompt_latents, _latents(3, 0))
    assert "symbolic links" in _refused(tmp_path / "link") and outside.exists()
    vf.remove_tree(tmp_path / "link")  # the link only, never its target
    assert not os.path.lexists(tmp_path / "link") and outside.exists()


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda p: (p / "prompt_latents.safetensors").write_bytes(b"x"), "does not match its sha256"),
        (lambda p: (p / "lora" / "lora_config.json").write_text("{}"), "lora/lora_config.json does not match"),
        (lambda p: (p / "ref_latents.safetensors").unlink(), None),  # FileNotFoundError (an OSError)
        (lambda p: (p / "voice.json").write_text(json.dumps({"format": 2})), "not a format 1 voice document"),
        (lambda p: (p / "voice.json").write_text("[1, 2]"), "not a format 1 voice document"),
        (lambda p: (p / "voice.json").write_bytes(b" " * (vf.MAX_JSON_BYTES + 1)), "at most 1048576 bytes"),
        (lambda p: _edit(p, kinds={"lora": False, "prompt": False, "reference": False}), "missing files/kinds"),
        (lambda p: _edit(p, files=None), "missing files/kinds"),
        (lambda p: _edit(p, prompt_text="  "), "a prompt needs its prompt_text"),
        (lambda p: (p / "lora" / "lora_weights.ckpt").write_bytes(b"x"), "lora/ must hold exactly"),
        (
            lambda p: _rehash(
                p, "prompt_latents.safetensors", save_safetensors({"latents": torch.zeros(1), "x": torch.zeros(1)})
            ),
            "expected one tensor 'latents'",
        ),  # fmt: skip
    ],
)
def test_damaged_voices_are_refused_with_the_reason(tmp_path, damage, words):
    path = _write(tmp_path, "v")
    damage(path)
    with pytest.raises((vf.VoiceFileError, OSError)) as err:
        vf.read_voice(path, MODEL)
    if words is None:
        assert isinstance(err.value, FileNotFoundError)
    else:
        assert isinstance(err.value, vf.VoiceFileError) and words in str(err.value), str(err.value)


def _edit(path, **fields):
    doc = json.loads((path / "voice.json").read_text())
    doc.update(fields)
    (path / "voice.json").write_text(json.dumps(doc))


def test_a_voice_for_another_model_is_refused(tmp_path):
    path = _write(tmp_path, "v")
    other = {**MODEL, "latent_dim": 32}
    assert _refused(path, other) == f"made for model {MODEL}, this server runs {other}"


def test_symlinked_files_are_never_followed(tmp_path):
    path = _write(tmp_path, "v")
    real = tmp_path.parent / f"{tmp_path.name}-real.safetensors"
    os.rename(path / "prompt_latents.safetensors", real)
    (path / "prompt_latents.safetensors").symlink_to(real)  # same bytes, same sha256, but through a link
    assert _refused(path) == "prompt_latents.safetensors is not a regular file"
    path2 = _write(tmp_path, "w")
    os.rename(path2 / "voice.json", tmp_path.parent / f"{tmp_path.name}-voice.json")
    (path2 / "voice.json").symlink_to(tmp_path.parent / f"{tmp_path.name}-voice.json")
    assert "voice.json is not a regular file" in _refused(path2)


class _Payload:
    """Unpickling this creates ``marker``: proof that something was unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_nothing_is_ever_unpickled(tmp_path):
    marker = tmp_path.parent / f"{tmp_path.name}-unpickled"
    payload = pickle.dumps(_Payload(str(marker)))
    path = _write(tmp_path, "v")
    _rehash(path, "prompt_latents.safetensors", payload)  # a pickle in place of the latents, its hash recorded
    with pytest.raises(Exception) as err:
        vf.read_voice(path, MODEL)
    assert not isinstance(err.value, pickle.UnpicklingError) and not marker.exists()
    other = _write(tmp_path, "w")
    with open(other / "lora" / "lora_weights.ckpt", "wb") as f:  # a checkpoint the engine would unpickle
        f.write(payload)
    assert "lora/ must hold exactly" in _refused(other)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["a", "A-b_c.9", "x" * 64])
def test_valid_names(name):
    assert vf.NAME_PATTERN.fullmatch(name)


@pytest.mark.parametrize("name", ["", ".hidden", "-x", "_x", "a b", "a/b", "é", "x" * 65])
def test_invalid_names(name):
    assert not vf.NAME_PATTERN.fullmatch(name)
