"""The peer adapter's CPU-side parts: availability message and the checkpoint view it needs."""

from __future__ import annotations

import shutil

import torch

from perf.peer import peer_checkpoint, peer_unavailable
from voxcpm_engine.io.checkpoint import load_checkpoint


def test_synthetic_checkpoints_need_no_view(tiny_v1, tmp_path):
    assert peer_checkpoint(tiny_v1, tmp_path / "views") == tiny_v1.resolve()


def test_peer_checkpoint_view_wraps_a_bare_vae_state_dict(tiny_v1, tmp_path):
    bare_dir = tmp_path / "bare"
    shutil.copytree(tiny_v1, bare_dir)
    state = torch.load(bare_dir / "audiovae.pth", weights_only=True)["state_dict"]
    torch.save(state, bare_dir / "audiovae.pth")
    tiny_v1 = bare_dir
    view = peer_checkpoint(tiny_v1, tmp_path / "views")
    assert view != tiny_v1.resolve()
    assert sorted(p.name for p in view.iterdir()) == sorted(p.name for p in tiny_v1.iterdir())
    wrapped = torch.load(view / "audiovae.pth", weights_only=True)
    bare = torch.load(tiny_v1 / "audiovae.pth", weights_only=True)
    assert set(wrapped) == {"state_dict"} and wrapped["state_dict"].keys() == bare.keys()
    assert all(torch.equal(wrapped["state_dict"][k], bare[k]) for k in bare)
    assert (view / "model.safetensors").resolve() == (tiny_v1 / "model.safetensors").resolve()
    assert peer_checkpoint(view, tmp_path / "views") == view  # already wrapped: used as is
    assert peer_checkpoint(tiny_v1, tmp_path / "views") == view  # made once
    load_checkpoint(view)  # our loader reads the view too


def test_unavailable_peer_says_why():
    why = peer_unavailable()
    assert why is None or any(w in why for w in ("nanovllm_voxcpm", "flash_attn", "CUDA"))
