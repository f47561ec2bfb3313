"""Local encoder and local DiT: token layout, per-patch independence, time embedding numerics."""

from __future__ import annotations

import math

import pytest
import torch

from tests.voxcpm_engine.tiny_configs import randomize_, tiny_config
from voxcpm_engine.model.local import LocalDiT, LocalEncoder, timestep_embedding

BF16 = torch.bfloat16


def _encoder(kind: str, dtype=torch.float32) -> LocalEncoder:
    cfg = tiny_config(kind)
    return randomize_(LocalEncoder(cfg.encoder_lm_config(), cfg.feat_dim, cfg.patch_size).to(dtype)).eval()


def _dit(kind: str, dtype=torch.float32) -> LocalDiT:
    cfg = tiny_config(kind)
    mu_tokens = 2 if cfg.version == 2 else 0
    return randomize_(LocalDiT(cfg.dit_lm_config(), cfg.feat_dim, cfg.patch_size, mu_tokens).to(dtype)).eval()


def test_time_embedding_bf16_op_order():
    t = torch.tensor([0.953125, 0.1884765625, 0.0], dtype=BF16)
    emb = timestep_embedding(t, 1024)
    assert emb.dtype == BF16 and emb.shape == (3, 1024)
    # Every op rounds to bf16, the arange included, and 1000 * t is rounded before * freqs.
    k = torch.arange(512, dtype=BF16)
    freqs = torch.exp(k * -(math.log(10000) / 511))
    args = (1000 * t).unsqueeze(1) * freqs.unsqueeze(0)
    assert torch.equal(emb, torch.cat((args.sin(), args.cos()), dim=-1))
    assert k.unique().numel() == 385  # bf16 arange(512) collapses integers above 256
    assert torch.equal(emb[2], torch.cat((torch.zeros(512, dtype=BF16), torch.ones(512, dtype=BF16))))


def test_time_embedding_other_order_differs():
    """Guard for the order of ops: 1000 * (t * f) gives different bf16 args for many entries."""
    t = torch.tensor([0.7890625], dtype=BF16)
    freqs = torch.exp(torch.arange(512, dtype=BF16) * -(math.log(10000) / 511))
    good = (1000 * t).unsqueeze(1) * freqs
    bad = 1000 * (t.unsqueeze(1) * freqs)
    assert (good != bad).sum() > 50


@pytest.mark.parametrize("kind", ["v1_05b", "v2"])
def test_encoder_patches_are_independent(kind):
    enc = _encoder(kind)
    cfg = tiny_config(kind)
    x = torch.randn(2, 3, cfg.patch_size, cfg.feat_dim)
    y = x.clone()
    y[1, 2] += 1.0
    with torch.no_grad():
        a, b = enc(x), enc(y)
    assert a.shape == (2, 3, cfg.encoder.hidden_dim)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1, :2], b[1, :2]) and not torch.equal(a[1, 2], b[1, 2])


def test_encoder_takes_cls_output_over_bidirectional_stack():
    enc = _encoder("v1_15")
    cfg = tiny_config("v1_15")
    x = torch.randn(1, 1, cfg.patch_size, cfg.feat_dim)
    with torch.no_grad():
        tokens = torch.cat([enc.special_token[0], enc.in_proj(x[0])], dim=1)
        expected = enc.encoder(tokens)[:, 0]
        torch.testing.assert_close(enc(x)[0], expected)
        # bidirectional: the CLS output depends on every frame, including the last
        x2 = x.clone()
        x2[..., -1, :] += 1
        assert not torch.allclose(enc(x), enc(x2))


def test_encoder_accepts_transposed_view():
    enc = _encoder("v2", BF16)
    sample = torch.randn(1, 64, 4).to(BF16)
    with torch.no_grad():
        out = enc(sample.transpose(1, 2).unsqueeze(1))
    assert out.shape == (1, 1, 32)


@pytest.mark.parametrize("kind", ["v1_15", "v2"])
def test_dit_token_layout(kind):
    """v1: [mu + t | cond | x]; v2: [mu_1 | mu_2 | t | cond | x]; output = last P tokens."""
    dit = _dit(kind)
    cfg = tiny_config(kind)
    n_mu = 2 if kind == "v2" else 1
    h, p = cfg.dit.hidden_dim, cfg.patch_size
    x, cond = torch.randn(2, cfg.feat_dim, p), torch.randn(2, cfg.feat_dim, p)
    mu, t, dt = torch.randn(2, n_mu * h), torch.tensor([0.5, 0.25]), torch.zeros(2)
    with torch.no_grad():
        out = dit(x, mu, t, cond, dt)
        time = dit.time_mlp(timestep_embedding(t, h)) + dit.delta_time_mlp(timestep_embedding(dt, h))
        if kind == "v2":
            prefix = [mu.view(2, 2, h), time[:, None]]
        else:
            prefix = [(mu + time)[:, None]]
        seq = torch.cat([*prefix, dit.cond_proj(cond.transpose(1, 2)), dit.in_proj(x.transpose(1, 2))], 1)
        assert seq.size(1) == (3 if kind == "v2" else 1) + 2 * p
        expected = dit.out_proj(dit.decoder(seq)[:, -p:]).transpose(1, 2)
    assert out.shape == (2, cfg.feat_dim, p) and out.is_contiguous()
    torch.testing.assert_close(out, expected)


def test_dit_v2_mu_halves_are_separate_tokens():
    dit = _dit("v2")
    x, cond = torch.randn(1, 64, 4), torch.randn(1, 64, 4)
    mu = torch.randn(1, 64)
    swapped = torch.cat([mu[:, 32:], mu[:, :32]], -1)
    t, dt = torch.tensor([0.3]), torch.zeros(1)
    with torch.no_grad():
        assert not torch.allclose(dit(x, mu, t, cond, dt), dit(x, swapped, t, cond, dt))


def test_dit_rows_independent_in_bf16_batch():
    """Rows of a batch do not interact (the sampler relies on it for CFG and request batching)."""
    dit = _dit("v2", BF16)
    x, cond = torch.randn(4, 64, 4).to(BF16), torch.randn(4, 64, 4).to(BF16)
    mu, t, dt = torch.randn(4, 64).to(BF16), torch.full((4,), 0.5, dtype=BF16), torch.zeros(4, dtype=BF16)
    with torch.no_grad():
        full = dit(x, mu, t, cond, dt)
        single = dit(x[2:3], mu[2:3], t[2:3], cond[2:3], dt[2:3])
    torch.testing.assert_close(full[2:3], single, atol=2e-2, rtol=2e-2)
