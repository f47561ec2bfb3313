"""VaeStreams: slot-held decoder states and the static-buffer batched decode (eager on the CPU; graphs on CUDA)."""

import pytest
import torch

from voxcpm_engine.io.checkpoint import load_checkpoint
from voxcpm_engine.worker.vae_stream import VaeStreams


@pytest.fixture(scope="module", params=["tiny_v1", "tiny_v2"])
def vae_and_patch(request):
    ckpt = load_checkpoint(request.getfixturevalue(request.param), dtype="float32")
    return ckpt.vae, ckpt.config.patch_size


def _check_against_decode_stream(vae, patch, streams, device="cpu", atol=5e-5):
    """Streams join and leave between steps; every chunk equals the model's own streaming decode of that stream.

    "e" joins after "a" and "c" have left, so it takes one of their slots.

    fp32 up to rounding: CPU conv kernels may round a padded batch of 4 differently from one
    stream (up to 1.4e-5 measured on an AMD EPYC host); a slot or state bug is an O(0.1) difference.
    """
    torch.manual_seed(0)
    z = {name: torch.randn(1, vae.latent_dim, patch * 6, device=device) for name in "abcde"}
    ref_state = {name: vae.new_stream_state(1, device=device) for name in z}
    warm = torch.randn(1, vae.latent_dim, patch * 2, device=device)  # "d" starts after a prompt warm-up
    vae.decode_stream(warm, ref_state["d"])
    plan = [["a", "b", "c"], ["a", "b", "c", "d"], ["b", "d"], ["b", "d", "e"], ["e", "d", "b"], ["e"]]
    pos = dict.fromkeys(z, 0)
    for step, names in enumerate(plan):
        for name in names:
            if not streams.has(name):
                state = None  # a fresh stream: its slot must be zero, even one that "a" or "c" used before
                if name == "d":
                    state = vae.new_stream_state(1, device=device)
                    vae.decode_stream(warm, state)
                streams.admit(name, state)
        frames = torch.cat([z[n][..., pos[n] * patch : (pos[n] + 1) * patch] for n in names])
        out = streams.decode(names, frames).clone()
        for row, name in enumerate(names):
            ref = vae.decode_stream(z[name][..., pos[name] * patch : (pos[name] + 1) * patch], ref_state[name])
            torch.testing.assert_close(out[row], ref[0, 0], rtol=0, atol=atol, msg=f"step {step} stream {name}")
            pos[name] += 1
        if step == 1:
            streams.release("a")
            streams.release("c")
    assert streams.num_held == 3 and streams.num_held + streams.num_free == streams.num_slots


def test_slots_and_padding_equal_the_models_streaming_decode(vae_and_patch):
    vae, patch = vae_and_patch
    _check_against_decode_stream(vae, patch, VaeStreams(vae, patch, max_batch=4, capture=False))


def test_limits_and_double_admit(vae_and_patch):
    vae, patch = vae_and_patch
    streams = VaeStreams(vae, patch, max_batch=1, capture=False)
    streams.admit("a", vae.new_stream_state(1))
    with pytest.raises(ValueError, match="already has a VAE slot"):
        streams.admit("a", vae.new_stream_state(1))
    streams.admit("b", vae.new_stream_state(1))
    with pytest.raises(ValueError, match="more than max_batch"):
        streams.decode(["a", "b"], torch.zeros(2, vae.latent_dim, patch))
    streams.release("a")
    streams.release("a")  # no-op
    assert streams.num_held == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_captured_graphs_equal_the_models_streaming_decode(tiny_v2):
    ckpt = load_checkpoint(tiny_v2, device="cuda", dtype="float32")
    streams = VaeStreams(ckpt.vae, ckpt.config.patch_size, max_batch=4, capture=True)
    assert sorted(streams.graphs) == [1, 2, 4]
    # cuDNN picks its fp32 algorithms per batch size: a padded batch of 4 and a single stream round differently.
    _check_against_decode_stream(ckpt.vae, ckpt.config.patch_size, streams, device="cuda", atol=1e-4)
