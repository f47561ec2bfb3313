"""AudioVAE parity with the reference ``voxcpm==2.0.3`` (V1 ``audio_vae``, V2 ``audio_vae_v2``).

The reference is built with random weights, its state dict is loaded into ours with ``strict=True``
and encode / decode / streaming outputs are compared on CPU in fp32. Both implementations run the
same kernels in the same order, so the expected difference is exactly 0 (``PARITY_ATOL``).
"""

from __future__ import annotations

import pytest
import torch

from tests.voxcpm_engine.tiny_configs import RELEASES, TINY, randomize
from voxcpm_engine.config.model_config import AudioVAEConfig
from voxcpm_engine.model.audio_vae import AudioVAE

ref_v1 = pytest.importorskip("voxcpm.modules.audiovae.audio_vae")
ref_v2 = pytest.importorskip("voxcpm.modules.audiovae.audio_vae_v2")

# The reference uses the deprecated legacy weight_norm on purpose (its checkpoint layout).
pytestmark = pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")

# Bit-exact: our forward computes the same torch ops in the same order as the reference.
PARITY_ATOL = 0.0
# Our streaming vs the reference's StreamingVAEDecoder: same cat/conv/trim sequence, also exact.
STREAM_PARITY_ATOL = 0.0


def build_reference(cfg: AudioVAEConfig) -> torch.nn.Module:
    common = dict(
        encoder_dim=cfg.encoder_dim,
        encoder_rates=list(cfg.encoder_rates),
        latent_dim=cfg.latent_dim,
        decoder_dim=cfg.decoder_dim,
        decoder_rates=list(cfg.decoder_rates),
        depthwise=cfg.depthwise,
        sample_rate=cfg.sample_rate,
    )
    if cfg.version == 1:
        return ref_v1.AudioVAE(ref_v1.AudioVAEConfig(**common))
    return ref_v2.AudioVAE(
        ref_v2.AudioVAEConfig(
            **common, out_sample_rate=cfg.out_sample_rate, sr_bin_boundaries=list(cfg.sr_bin_boundaries)
        )
    )


@torch.no_grad()
def random_pair(name: str, seed: int = 0) -> tuple[torch.nn.Module, AudioVAE]:
    """A randomly initialised reference VAE and ours loaded from its state dict (strict)."""
    torch.manual_seed(seed)
    ref = build_reference(TINY[name]).eval()
    randomize(ref, seed)
    ours = AudioVAE(TINY[name]).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def layout(sd: dict[str, torch.Tensor]) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    return [(k, tuple(v.shape), v.dtype) for k, v in sd.items()]


@pytest.mark.parametrize("release", list(RELEASES))
def test_full_size_state_dict_matches_reference(release: str) -> None:
    with torch.device("meta"):
        ref, ours = build_reference(RELEASES[release]), AudioVAE(RELEASES[release])
    assert layout(ours.state_dict()) == layout(ref.state_dict())  # same keys, order, shapes, dtypes


@pytest.mark.parametrize("name", list(TINY))
def test_tiny_state_dict_matches_reference(name: str) -> None:
    ref, ours = random_pair(name)
    assert layout(ours.state_dict()) == layout(ref.state_dict())
    for key, value in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key


@pytest.mark.parametrize("name", list(TINY))
def test_encode_parity(name: str) -> None:
    ref, ours = random_pair(name)
    wav = torch.randn(3, 1, 4 * ours.encode_hop + 123) * 0.3  # not a hop multiple: exercises the right pad
    with torch.no_grad():
        expected = ref.encode(wav, ours.sample_rate)
        got = ours.encode(wav)
    assert got.shape == expected.shape == (3, 64, 5)
    assert (got - expected).abs().max().item() <= PARITY_ATOL


@pytest.mark.parametrize("name", list(TINY))
def test_decode_parity(name: str) -> None:
    ref, ours = random_pair(name)
    z = torch.randn(2, 64, 7)
    with torch.no_grad():
        expected, got = ref.decode(z), ours.decode(z)  # V2: default 48 kHz conditioning on both sides
    assert got.shape == expected.shape == (2, 1, 7 * ours.decode_hop)
    assert (got - expected).abs().max().item() <= PARITY_ATOL


@pytest.mark.parametrize("rate", [16000, 24000, 40000, 44100, 48000])
def test_v2_decode_parity_per_rate(rate: int) -> None:
    ref, ours = random_pair("v2", seed=3)
    z = torch.randn(2, 64, 4)
    with torch.no_grad():
        expected = ref.decode(z, torch.tensor([rate], dtype=torch.int32))
        got = ours.decode(z, rate)
    assert (got - expected).abs().max().item() <= PARITY_ATOL


def test_v2_streaming_parity() -> None:
    ref, ours = random_pair("v2", seed=5)
    z = torch.randn(2, 64, 12)
    state = ours.new_stream_state(2)
    with torch.no_grad(), ref.streaming_decode() as dec:
        for start in range(0, 12, 4):  # one VoxCPM2 patch (4 frames) per step, as the reference streams
            expected = dec.decode_chunk(z[..., start : start + 4])
            got = ours.decode_stream(z[..., start : start + 4], state)
            assert (got - expected).abs().max().item() <= STREAM_PARITY_ATOL


@pytest.mark.parametrize("name", list(TINY))
def test_folded_weights_match_reference(name: str) -> None:
    ref, ours = random_pair(name)
    ours.fold_weight_norm()
    z = torch.randn(1, 64, 3)
    with torch.no_grad():
        assert (ours.decode(z) - ref.decode(z)).abs().max().item() <= PARITY_ATOL
