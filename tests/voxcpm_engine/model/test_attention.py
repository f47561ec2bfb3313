"""Tests of voxcpm_engine.model.attention: dense (GQA) attention, DenseAttention and the contiguous KVCache."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from voxcpm_engine.config.model_config import ModelConfig
from voxcpm_engine.config.presets import preset_config
from voxcpm_engine.model.attention import DenseAttention, KVCache, dense_attention

LM = ModelConfig.from_dict(preset_config("tiny-v2")).base_lm_config()


def _explicit(q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
    rep = q.shape[1] // k.shape[1]
    kk, vv = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    scores = q @ kk.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        t = q.shape[2]
        scores = scores.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
    return F.softmax(scores, -1) @ vv


def test_sdpa_default_scale_and_no_dropout():
    """The attention scale is 1/sqrt(head_dim), even when head_dim != hidden / heads (v2 kv_channels)."""
    lm = LM
    assert lm.head_dim != lm.hidden_size // lm.num_attention_heads
    q, k, v = torch.randn(1, 4, 3, lm.head_dim), torch.randn(1, 2, 3, lm.head_dim), torch.randn(1, 2, 3, lm.head_dim)
    kk, vv = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    expected = F.softmax(q @ kk.transpose(-1, -2) / math.sqrt(lm.head_dim), -1) @ vv
    torch.testing.assert_close(dense_attention(q, k, v, causal=False), expected)


@pytest.mark.parametrize("causal", [True, False])
def test_dense_attention_fn_masks_as_asked_and_ignores_the_layer(causal):
    gen = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, 4, 5, 16, generator=gen), *torch.randn(2, 2, 2, 5, 16, generator=gen)
    fn = DenseAttention(causal)
    out = fn(0, q, k, v)
    torch.testing.assert_close(out, _explicit(q, k, v, causal))
    assert torch.equal(fn(7, q, k, v), out)
    other = _explicit(q, k, v, not causal)
    assert (out[:, :, :-1] - other[:, :, :-1]).abs().max() > 1e-2  # the mask matters (last row sees all keys)


def test_kv_cache_chunks_equal_one_causal_pass_and_store_every_layer():
    gen = torch.Generator().manual_seed(1)
    n, heads, kv_heads, d = 7, 4, 2, 16
    q, k, v = torch.randn(1, heads, n, d, generator=gen), *torch.randn(2, 1, kv_heads, n, d, generator=gen)
    cache = KVCache(num_layers=2, num_kv_heads=kv_heads, head_dim=d, capacity=10, dtype=torch.float32, device="cpu")
    assert cache.k.shape == (2, 1, kv_heads, 10, d) and not cache.k.any() and cache.length == 0
    outs = []
    for start, count in ((0, 3), (3, 1), (4, 3)):  # a prefill, a decode, a multi-token append
        positions, attend = cache.append(count)
        assert positions.tolist() == list(range(start, start + count)) and cache.length == start + count
        sl = slice(start, start + count)
        outs.append(attend(1, q[:, :, sl], k[:, :, sl], v[:, :, sl]))
    torch.testing.assert_close(torch.cat(outs, 2), _explicit(q, k, v, causal=True), atol=1e-5, rtol=1e-5)
    assert torch.equal(cache.k[1, :, :, :n], k) and torch.equal(cache.v[1, :, :, :n], v)
    assert not cache.k[0].any() and not cache.k[1, :, :, n:].any()  # other layer and free slots untouched
    with pytest.raises(RuntimeError, match=r"KV cache is full \(7 \+ 4 tokens > capacity 10\)"):
        cache.append(4)
    assert cache.length == 7  # a refused append reserves nothing
