"""AudioVAE: state-dict layout, shapes, streaming == whole decode, causality, weight-norm folding, bf16 decodes.

Tiny widths with the three releases' rate lists keep every test on CPU under a second or two.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.voxcpm_engine.tiny_configs import RELEASES, TINY, randomize
from tests.voxcpm_engine.vae_bf16 import (
    RELEASE_SNR_DB,
    STREAM_SNR_DB,
    TINY_SNR_DB,
    bf16_latents,
    release_vae,
    snr_db,
)
from voxcpm_engine.model.audio_vae import AudioVAE, StreamingDecoderState
from voxcpm_engine.model.vae_convs import CausalConv1d, CausalConvTranspose1d

# Streamed chunks vs a whole decode: same math, different conv/GEMM blocking (measured <= 1.7e-7 here).
STREAM_ATOL = 1e-6

# (tensor count, element count) of audiovae.pth, spec §7.4.
RELEASE_SIZES = {"voxcpm-0.5b": (243, 75_355_202), "voxcpm1.5": (299, 86_483_330), "voxcpm2": (312, 94_213_957)}


def tiny(name: str, seed: int = 0) -> AudioVAE:
    torch.manual_seed(seed)
    return randomize(AudioVAE(TINY[name]), seed).eval()


@pytest.mark.parametrize("release", list(RELEASES))
def test_full_size_state_dict_layout(release: str) -> None:
    cfg = RELEASES[release]
    with torch.device("meta"):
        sd = AudioVAE(cfg).state_dict()
    count, elements = RELEASE_SIZES[release]
    assert len(sd) == count
    assert sum(t.numel() for t in sd.values()) == elements
    for key, t in sd.items():
        if key == "decoder.sr_bin_boundaries":
            assert t.dtype == torch.int32 and tuple(t.shape) == (3,)
        else:
            assert t.dtype == torch.float32, key
            assert key.rsplit(".", 1)[1] in {"alpha", "weight_g", "weight_v", "bias", "weight"}, key
    assert not any(k.endswith(".weight") and "embed" not in k for k in sd)
    n = len(cfg.decoder_rates)
    last = cfg.decoder_dim // 2**n
    assert sd[f"decoder.model.{n + 3}.weight_v"].shape == (1, last, 7)
    assert sd[f"decoder.model.{n + 2}.alpha"].shape == (1, last, 1)
    # Transposed conv: weight_g over dim 0 = input channels.
    assert sd["decoder.model.2.block.1.weight_g"].shape == (cfg.decoder_dim, 1, 1)
    assert sd["decoder.model.2.block.1.weight_v"].shape == (
        cfg.decoder_dim,
        cfg.decoder_dim // 2,
        2 * cfg.decoder_rates[0],
    )
    assert sd["decoder.model.0.weight_v"].shape == (64, 1, 7)  # depthwise
    assert sd["encoder.fc_logvar.weight_v"].shape == (64, 2048, 3)
    assert sd["encoder.block.1.block.0.block.1.weight_v"].shape == (cfg.encoder_dim, 1, 7)
    if cfg.version == 2:
        assert sd["decoder.sr_cond_model.2.scale_embed.weight"].shape == (4, 2048)
        assert sd["decoder.sr_cond_model.7.bias_embed.weight"].shape == (4, 64)
        assert "decoder.sr_cond_model.8.scale_embed.weight" not in sd
    else:
        assert not any("sr_" in k for k in sd)


def test_sr_boundaries_buffer_value() -> None:
    sd = AudioVAE(TINY["v2"]).state_dict()
    assert sd["decoder.sr_bin_boundaries"].tolist() == [20000, 30000, 40000]
    assert sd["decoder.sr_bin_boundaries"].dtype == torch.int32


@pytest.mark.parametrize("name", list(TINY))
def test_encode_decode_lengths(name: str) -> None:
    vae = tiny(name)
    hop = vae.encode_hop
    with torch.no_grad():
        for length in (1, hop, 3 * hop + 1):
            z = vae.encode(torch.randn(2, 1, length))
            assert z.shape == (2, 64, -(-length // hop)) and z.dtype == torch.float32
        assert vae.encode(torch.randn(2, hop)).shape == (2, 64, 1)  # [B, T] accepted
        assert vae.decode(torch.randn(3, 64, 5).bfloat16()).shape == (3, 1, 5 * vae.decode_hop)
    assert vae.decode_hop == TINY[name].decode_hop


def test_encode_right_pads_with_zeros() -> None:
    vae = tiny("v2")
    wav = torch.randn(2, 1, 3 * vae.encode_hop - 100)
    with torch.no_grad():
        assert torch.equal(vae.encode(wav), vae.encode(F.pad(wav, (0, 100))))
    with pytest.raises(ValueError):
        vae.encode(wav, sample_rate=48000)


@pytest.mark.parametrize("name", list(TINY))
def test_decoder_is_causal(name: str) -> None:
    vae = tiny(name)
    z = torch.randn(2, 64, 6)
    z2 = z.clone()
    z2[:, :, 3:] = torch.randn(2, 64, 3)
    with torch.no_grad():
        a, b = vae.decode(z), vae.decode(z2)
    cut = 3 * vae.decode_hop
    assert torch.equal(a[..., :cut], b[..., :cut])
    assert not torch.equal(a[..., cut:], b[..., cut:])


@pytest.mark.parametrize("name", ["v1-1.5", "v2"])
def test_encoder_is_causal(name: str) -> None:
    vae = tiny(name)
    hop = vae.encode_hop
    wav = torch.randn(1, 1, 5 * hop)
    wav2 = wav.clone()
    wav2[..., 2 * hop :] = torch.randn(3 * hop)
    with torch.no_grad():
        a, b = vae.encode(wav), vae.encode(wav2)
    assert torch.equal(a[..., :2], b[..., :2])
    assert not torch.equal(a[..., 2:], b[..., 2:])


def _run_streams(vae: AudioVAE, latents: list[torch.Tensor], starts: list[int], chunk: int) -> list[torch.Tensor]:
    """Stream each latent sequence (joining at step starts[i]) through one dynamic batch.

    Rows are appended with ``concat`` when a stream starts and dropped with ``select`` when it ends,
    as a batching engine would do.
    """
    state = vae.new_stream_state(0)
    active: list[int] = []
    pos = [0] * len(latents)
    outs: list[list[torch.Tensor]] = [[] for _ in latents]
    step = 0
    while any(p < z.shape[-1] for p, z in zip(pos, latents, strict=True)):
        for i, s in enumerate(starts):
            if s == step:
                active.append(i)
                state = StreamingDecoderState.concat([state, vae.new_stream_state(1)])
        if active:
            z = torch.stack([latents[i][:, pos[i] : pos[i] + chunk] for i in active])
            audio = vae.decode_stream(z, state)
            for row, i in enumerate(active):
                outs[i].append(audio[row])
                pos[i] += chunk
            keep = [row for row, i in enumerate(active) if pos[i] < latents[i].shape[-1]]
            active = [active[row] for row in keep]
            state = state.select(keep)
        step += 1
    return [torch.cat(o, dim=-1) for o in outs]


@pytest.mark.parametrize("chunk", [1, 2, 4])
@pytest.mark.parametrize("name", list(TINY))
def test_streaming_matches_whole_decode(name: str, chunk: int) -> None:
    vae = tiny(name)
    n_chunks, starts = [3, 1, 4], [0, 1, 1]
    latents = [torch.randn(64, n * chunk) for n in n_chunks]
    streamed = _run_streams(vae, latents, starts, chunk)
    with torch.no_grad():
        for z, out in zip(latents, streamed, strict=True):
            whole = vae.decode(z[None])[0]
            assert out.shape == whole.shape
            torch.testing.assert_close(out, whole, atol=STREAM_ATOL, rtol=0)


def test_streaming_slot_reuse_and_rates() -> None:
    """Fixed slots: a finished stream's slot restarts via reset_rows; assign_rows moves a stream."""
    vae = tiny("v2")
    z = torch.randn(3, 64, 6)
    with torch.no_grad():
        whole = vae.decode(z, torch.tensor([48000, 16000, 48000]))
        state = vae.new_stream_state(2)
        a = vae.decode_stream(z[:2, :, :3], state, torch.tensor([48000, 16000]))
        # Slot 0 ends after 3 frames; stream 2 starts in it. Stream 1 continues in slot 1.
        state.reset_rows([0])
        b = vae.decode_stream(torch.stack([z[2, :, :3], z[1, :, 3:]]), state, torch.tensor([48000, 16000]))
        # Move stream 1 (slot 1) to a fresh 1-row state and finish it there.
        solo = vae.new_stream_state(1).assign_rows([0], state.select([1]))
        state = state.select([0])
        c = vae.decode_stream(z[2:, :, 3:], state)
        d = vae.decode_stream(z[1:2, :, 3:3], solo, 16000)  # zero frames is a no-op
    assert d.shape == (1, 1, 0)
    torch.testing.assert_close(torch.cat([a[1], b[1]], -1), whole[1], atol=STREAM_ATOL, rtol=0)
    torch.testing.assert_close(torch.cat([b[0], c[0]], -1), whole[2], atol=STREAM_ATOL, rtol=0)
    torch.testing.assert_close(a[0], whole[0, :, : 3 * vae.decode_hop], atol=STREAM_ATOL, rtol=0)


def test_state_row_operations() -> None:
    vae = tiny("v1-0.5b")
    with torch.inference_mode():
        state = vae.new_stream_state(3)
        vae.decode_stream(torch.randn(3, 64, 2), state)
    # Created under inference_mode, edited outside it: all updates are out of place.
    snapshot = state.clone()
    assert state.batch_size == 3 and all(b.shape[0] == 3 for b in state.buffers)
    picked = state.select([2, 0])
    assert all(torch.equal(p, s[[2, 0]]) for p, s in zip(picked.buffers, snapshot.buffers, strict=True))
    assert state.select(slice(1, None)).batch_size == 2
    assert state.select(torch.tensor([True, False, True])).batch_size == 2
    assert StreamingDecoderState.concat([state, picked]).batch_size == 5
    state.reset_rows(-1)
    assert all(
        not b[2].any() and torch.equal(b[:2], s[:2]) for b, s in zip(state.buffers, snapshot.buffers, strict=True)
    )
    state.assign_rows([2], snapshot.select([0]))
    assert all(torch.equal(b[2], s[0]) for b, s in zip(state.buffers, snapshot.buffers, strict=True))
    with pytest.raises(ValueError):
        state.assign_rows([0, 1], snapshot.select([0]))
    with pytest.raises(ValueError):
        vae.decode_stream(torch.randn(2, 64, 1), state)


def test_sample_rate_buckets() -> None:
    vae = tiny("v2")
    rates = torch.tensor([16000, 20000, 20001, 40000, 44100, 48000])
    assert vae.sample_rate_bucket(rates, torch.device("cpu")).tolist() == [0, 0, 1, 2, 3, 3]
    assert vae.sample_rate_bucket(None, torch.device("cpu")).tolist() == [3]
    z = torch.randn(2, 64, 3)
    with torch.no_grad():
        assert torch.equal(vae.decode(z), vae.decode(z, 48000))
        assert not torch.equal(vae.decode(z, 16000), vae.decode(z, 48000))
        per_row = vae.decode(z, torch.tensor([16000, 48000]))
        torch.testing.assert_close(per_row[0], vae.decode(z[:1], 16000)[0], atol=1e-6, rtol=0)
    v1 = tiny("v1-0.5b")
    assert v1.sample_rate_bucket(None, torch.device("cpu")) is None
    with pytest.raises(ValueError):
        v1.decode(z, 48000)


@pytest.mark.parametrize("name", list(TINY))
def test_fold_weight_norm_is_exact(name: str) -> None:
    vae = tiny(name)
    keys = list(vae.state_dict())
    z, wav = torch.randn(2, 64, 3), torch.randn(2, 1, 2 * vae.encode_hop)
    with torch.no_grad():
        ref_dec, ref_enc = vae.decode(z), vae.encode(wav)
        vae.fold_weight_norm()
        assert list(vae.state_dict()) == keys  # the cache is not persistent
        # Folding caches the output of the very same _weight_norm call: tolerance 0.
        assert torch.equal(vae.decode(z), ref_dec) and torch.equal(vae.encode(wav), ref_enc)
        other = tiny(name, seed=1)
        vae.load_state_dict(other.state_dict())  # refreshes the cache
        assert torch.equal(vae.decode(z), other.decode(z))
        vae.unfold_weight_norm()
        assert torch.equal(vae.decode(z), other.decode(z))


# --- bf16 decodes (AudioVAE.set_decode_dtype; bounds in tests/voxcpm_engine/vae_bf16.py) --------------


@pytest.mark.parametrize("name", list(TINY))
def test_bf16_decode_is_close_to_fp32_and_leaves_encoding_alone(name: str) -> None:
    vae = tiny(name)
    z, wav = bf16_latents(vae, 2, 8), torch.randn(2, 1, 2 * vae.encode_hop)
    with torch.no_grad():
        ref_dec, ref_enc = vae.decode(z), vae.encode(wav)
        vae.set_decode_dtype(torch.bfloat16)
        got = vae.decode(z)
        assert vae.decode_dtype == torch.bfloat16 and vae.dtype == torch.float32
        assert got.dtype == torch.float32 and got.shape == ref_dec.shape  # the waveform comes back in fp32
        assert snr_db(got, ref_dec) >= TINY_SNR_DB
        assert torch.equal(vae.encode(wav), ref_enc)  # the encoder is untouched: still exact fp32
        vae.set_decode_dtype(torch.float32)  # back to fp32: the folded fp32 weights, bit for bit
        assert vae.decode_dtype == torch.float32 and torch.equal(vae.decode(z), ref_dec)


def test_bf16_weights_are_folded_from_fp32_math_and_kept_across_reloads() -> None:
    vae = tiny("v2")
    vae.set_decode_dtype(torch.bfloat16)
    convs = [m for m in vae.decoder.modules() if isinstance(m, CausalConv1d | CausalConvTranspose1d)]
    for conv in convs:
        want = torch._weight_norm(conv.weight_v, conv.weight_g, 0).detach().bfloat16()
        assert conv.weight_v.dtype == torch.float32  # parameters stay fp32 (state dict, reloads)
        assert torch.equal(conv.weight(), want) and conv.conv_bias().dtype == torch.bfloat16
    encoder_convs = [m for m in vae.encoder.modules() if isinstance(m, CausalConv1d | CausalConvTranspose1d)]
    assert encoder_convs and all(m.compute_dtype is None and m.folded_weight is None for m in encoder_convs)
    other = tiny("v2", seed=1)
    vae.load_state_dict(other.state_dict())  # refolds from the new fp32 parameters, still in bf16
    vae.unfold_weight_norm()  # a bf16 decoder stays folded: no bf16 norm recomputed per call
    conv = convs[0]
    assert torch.equal(conv.weight(), torch._weight_norm(conv.weight_v, conv.weight_g, 0).detach().bfloat16())
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        vae.set_decode_dtype(torch.float16)


@pytest.mark.parametrize("name", ["v1-1.5", "v2"])
def test_bf16_streamed_decode_equals_the_bf16_whole_decode(name: str) -> None:
    vae = tiny(name)
    vae.set_decode_dtype(torch.bfloat16)
    z = bf16_latents(vae, 2, 7)
    state = vae.new_stream_state(2)
    assert all(b.dtype == torch.bfloat16 for b in state.buffers)
    with torch.no_grad():
        whole = vae.decode(z)
        streamed = torch.cat([vae.decode_stream(z[..., a:b], state) for a, b in ((0, 1), (1, 4), (4, 7))], dim=-1)
    assert streamed.dtype == torch.float32 and streamed.shape == whole.shape
    assert snr_db(streamed, whole) >= STREAM_SNR_DB


def test_bf16_decode_of_voxcpm15_shapes_is_close_to_fp32() -> None:
    vae = release_vae("voxcpm1.5")
    z = bf16_latents(vae, 1, 8)  # two VoxCPM1.5 patches
    with torch.no_grad():
        ref = vae.decode(z)
        vae.set_decode_dtype(torch.bfloat16)
        state = vae.new_stream_state(1)
        streamed = torch.cat([vae.decode_stream(z[..., i : i + 4], state) for i in (0, 4)], dim=-1)
        whole = vae.decode(z)
    assert torch.isfinite(streamed).all() and streamed.shape == ref.shape == (1, 1, 8 * vae.decode_hop)
    assert snr_db(whole, ref) >= RELEASE_SNR_DB and snr_db(streamed, ref) >= RELEASE_SNR_DB
    assert snr_db(streamed, whole) >= STREAM_SNR_DB
