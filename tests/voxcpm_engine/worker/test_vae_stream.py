"""VaeStreams: slot-held decoder states and the static-buffer batched decode (eager on the CPU; graphs on CUDA)."""

import os

import pytest
import torch

from tests.voxcpm_engine.vae_bf16 import (
    CUDA_STREAM_SNR_DB,
    RELEASE_SNR_DB,
    STREAM_SNR_DB,
    SYNTHETIC_TINY_SNR_DB,
    release_vae,
    snr_db,
)
from voxcpm_engine.io.checkpoint import CheckpointFiles, load_checkpoint, read_config, read_tensors
from voxcpm_engine.model.audio_vae import AudioVAE
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


# --- bf16 decodes (EngineConfig.vae_dtype; bounds in tests/voxcpm_engine/vae_bf16.py) ----------------


def _run_plan(streams, z, patch):
    """Streams join and leave between steps (as in _check_against_decode_stream); returns each stream's audio."""
    plan = [["a", "b"], ["a", "b", "c"], ["b", "c"], ["c", "b", "d"], ["d"]]
    pos, audio = dict.fromkeys(z, 0), {name: [] for name in z}
    for names in plan:
        for name in names:
            if not streams.has(name):
                streams.admit(name, None)
        frames = torch.cat([z[n][..., pos[n] * patch : (pos[n] + 1) * patch] for n in names])
        out = streams.decode(names, frames)
        assert out.dtype == torch.float32  # what the host gets stays fp32
        for row, name in enumerate(names):
            audio[name].append(out[row].clone())
            pos[name] += 1
        if names == ["b", "c"]:
            streams.release("a")  # "d" then takes a's slot: zeroed in bf16 too
    return {name: torch.cat(chunks) for name, chunks in audio.items()}, pos


def _bf16_vs_fp32_streams(vae, patch, device, capture, snr_bound, stream_bound=STREAM_SNR_DB):
    """The same plan through fp32 and bf16 slots: bf16 close to fp32, and equal to the model's own bf16 stream."""
    torch.manual_seed(0)
    z = {n: torch.randn(1, vae.latent_dim, patch * 4, device=device).bfloat16().float() for n in "abcd"}
    ref, _ = _run_plan(VaeStreams(vae, patch, max_batch=4, capture=capture), z, patch)
    vae.set_decode_dtype(torch.bfloat16)
    try:
        streams = VaeStreams(vae, patch, max_batch=4, capture=capture)
        assert streams._slots.dtype == streams._state.dtype == streams._z.dtype == torch.bfloat16
        got, pos = _run_plan(streams, z, patch)
        for name in z:
            assert torch.isfinite(got[name]).all() and got[name].shape == ref[name].shape
            assert snr_db(got[name], ref[name]) >= snr_bound, name
            state = vae.new_stream_state(1, device=device)
            own = vae.decode_stream(z[name][..., : pos[name] * patch], state)[0, 0]
            assert snr_db(got[name], own) >= stream_bound, name  # slots and padding add no error of their own
    finally:
        vae.set_decode_dtype(torch.float32)  # module-scoped fixtures share the VAE


def test_bf16_slots_decode_close_to_fp32_and_hand_out_fp32(vae_and_patch):
    vae, patch = vae_and_patch
    _bf16_vs_fp32_streams(vae, patch, "cpu", capture=False, snr_bound=SYNTHETIC_TINY_SNR_DB)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_captured_graphs_close_to_fp32_on_voxcpm15_shapes():
    """bf16 vs fp32 through the captured graphs and the fused kernels, as the engine runs them (TF32 off)."""
    vae = release_vae("voxcpm1.5").cuda()
    vae.use_fused_kernels()
    _bf16_vs_fp32_streams(vae, 4, "cuda", capture=True, snr_bound=RELEASE_SNR_DB, stream_bound=CUDA_STREAM_SNR_DB)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.skipif(not os.environ.get("VOXCPM_VAE_CHECKPOINT"), reason="set VOXCPM_VAE_CHECKPOINT to a release dir")
def test_bf16_decode_of_the_released_weights_is_within_30_db_of_fp32():
    """The gate for a bf16 default: the real VAE decoding latents of real-like audio, bf16 vs fp32 graphs."""
    root = os.environ["VOXCPM_VAE_CHECKPOINT"]
    config = read_config(root)
    vae = AudioVAE(config.audio_vae)
    vae.load_state_dict(read_tensors(CheckpointFiles.find(root).vae_weights))
    vae = vae.cuda().eval()
    vae.use_fused_kernels()
    t = torch.arange(4 * vae.sample_rate, device="cuda") / vae.sample_rate  # 4 s of a voiced-like signal
    f0 = 140 + 30 * torch.sin(2 * torch.pi * 0.7 * t)
    wav = sum(0.3 / k * torch.sin(2 * torch.pi * k * torch.cumsum(f0, 0) / vae.sample_rate) for k in range(1, 12))
    wav = wav * (0.6 + 0.4 * torch.sin(2 * torch.pi * 3 * t)) + 0.003 * torch.randn_like(t)
    with torch.no_grad():
        z = vae.encode(wav[None, None]).bfloat16().float()
    patch = config.patch_size
    frames = z.shape[-1] // patch * patch
    snrs = []
    for dtype in (torch.float32, torch.bfloat16):
        vae.set_decode_dtype(dtype)
        streams = VaeStreams(vae, patch, max_batch=1, capture=True)
        streams.admit("x", None)
        snrs.append(torch.cat([streams.decode(["x"], z[..., i : i + patch]).clone() for i in range(0, frames, patch)]))
    print(f"released VAE, bf16 vs fp32 streamed decode: {snr_db(snrs[1], snrs[0]):.1f} dB")
    assert snr_db(snrs[1], snrs[0]) >= 30.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("units", ["gemm", "one-kernel"])
def test_unit_kernels_in_captured_graphs_on_voxcpm15_shapes(units):
    """EngineConfig.vae_units through the captured graphs at the release's shapes (``one-kernel``: its
    units of 256, 128 and 64 channels as one kernel each; ``gemm``: every unit's 1x1 conv with its
    epilogue): the same plan as the three-pass units."""
    vae = release_vae("voxcpm1.5").cuda()
    vae.use_fused_kernels()
    torch.manual_seed(0)
    z = {n: torch.randn(1, vae.latent_dim, 4 * 4, device="cuda") for n in "abcd"}
    ref, _ = _run_plan(VaeStreams(vae, 4, max_batch=4, capture=True), z, 4)
    vae.use_fused_kernels(units=units)
    got, _ = _run_plan(VaeStreams(vae, 4, max_batch=4, capture=True), z, 4)
    for name in z:  # fp32 sums in another order only (ieee dot against cuBLAS), amplified by the network
        assert snr_db(got[name], ref[name]) >= 80.0, name
