"""MiniCPM4 stack: RMSNorm, LongRoPE tables, attention masks, GQA, KV-cache decoding, muP."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from tests.voxcpm_engine.tiny_configs import randomize_, shared_models_dir, tiny_config
from voxcpm_engine.model.transformer import MiniCPM, RMSNorm, RotaryEmbedding, longrope_tables


def _lm(kind: str = "v2"):
    return tiny_config(kind).base_lm_config()


def _stack(cfg, *, causal: bool, dtype=torch.float32, max_positions: int = 64, seed: int = 0) -> MiniCPM:
    return randomize_(MiniCPM(cfg, causal=causal, max_positions=max_positions).to(dtype), seed).eval()


def test_rmsnorm_rounds_before_weight():
    norm = RMSNorm(8, 1e-5).to(torch.bfloat16)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 1.5, 8))
    x = torch.randn(3, 8).to(torch.bfloat16)
    var = x.float().pow(2).mean(-1, keepdim=True)
    expected = (x.float() * torch.rsqrt(var + 1e-5)).to(torch.bfloat16) * norm.weight
    assert torch.equal(norm(x), expected)


@pytest.mark.parametrize("kind", ["v1_15", "v2"])
def test_rope_table_equals_rowwise_fp32_recomputation(kind):
    cfg = _lm(kind)
    rope = RotaryEmbedding(cfg, 200).to(torch.bfloat16)
    dim = cfg.head_dim
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    recip = 1.0 / torch.tensor(cfg.rope_scaling.short_factor, dtype=torch.float32)
    for p in range(200):
        freqs = (torch.tensor(float(p)) * recip) * inv_freq  # p * (1/f) first, then * inv_freq (spec §4.2)
        emb = torch.cat((freqs, freqs))
        assert torch.equal(rope.cos[p], emb.cos().to(torch.bfloat16)), p
        assert torch.equal(rope.sin[p], emb.sin().to(torch.bfloat16)), p


def test_rope_table_prefix_of_full_table():
    """A short table equals the first rows of the reference-sized (max_position_embeddings) table."""
    models = shared_models_dir()
    if models is None:
        pytest.skip("shared/models not found")
    from voxcpm_engine.config.model_config import ModelConfig

    cfg = ModelConfig.from_json(models / "voxcpm2" / "config.json").lm
    full_cos, full_sin = longrope_tables(cfg, cfg.max_position_embeddings)
    cos, sin = longrope_tables(cfg, 300)
    assert torch.equal(cos, full_cos[:300]) and torch.equal(sin, full_sin[:300])


def test_rope_buffers_are_not_persistent_and_no_rope_has_none():
    cfg = tiny_config("v2")
    assert not any("rotary" in k for k in MiniCPM(cfg.base_lm_config(), causal=True, max_positions=8).state_dict())
    assert MiniCPM(cfg.residual_lm_config(), causal=True, max_positions=8).rotary is None


def test_rope_long_factor_chosen_by_configured_length():
    cfg = _lm("v2")
    long_cfg = replace(
        cfg,
        max_position_embeddings=2 * cfg.rope_scaling.original_max_position_embeddings,
        rope_scaling=replace(cfg.rope_scaling, long_factor=tuple(2.0 * f for f in cfg.rope_scaling.short_factor)),
    )
    cos_long, _ = longrope_tables(long_cfg, 50)
    cos_short, _ = longrope_tables(cfg, 50)
    assert not torch.equal(cos_long, cos_short)
    scaling = math.sqrt(1 + math.log(2) / math.log(long_cfg.rope_scaling.original_max_position_embeddings))
    assert cos_long[0, 0].item() == pytest.approx(scaling)


def test_causal_vs_bidirectional():
    cfg = _lm()
    x = torch.randn(1, 7, cfg.hidden_size)
    x2 = x.clone()
    x2[:, 5:] += 1.0
    causal, bidir = _stack(cfg, causal=True), _stack(cfg, causal=False)
    with torch.no_grad():
        assert torch.equal(causal(x)[:, :5], causal(x2)[:, :5])
        assert not torch.allclose(bidir(x)[:, :5], bidir(x2)[:, :5])


def _reference_attention_stack(stack: MiniCPM, x: torch.Tensor) -> torch.Tensor:
    """Plain fp32 transformer with explicit repeat_interleave GQA and a causal mask."""
    cfg = stack.cfg
    cos, sin = stack.rotary.cos[: x.size(1)], stack.rotary.sin[: x.size(1)]

    def rot(t):
        t1, t2 = t.chunk(2, dim=-1)
        return t * cos + torch.cat((-t2, t1), dim=-1) * sin

    for layer in stack.layers:
        att = layer.self_attn
        h = layer.input_layernorm(x)
        q = att.q_proj(h).view(1, -1, cfg.num_attention_heads, cfg.head_dim).transpose(1, 2)
        k = att.k_proj(h).view(1, -1, cfg.num_key_value_heads, cfg.head_dim).transpose(1, 2)
        v = att.v_proj(h).view(1, -1, cfg.num_key_value_heads, cfg.head_dim).transpose(1, 2)
        group = cfg.num_attention_heads // cfg.num_key_value_heads
        k, v = rot(k).repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        scores = rot(q) @ k.transpose(-1, -2) / math.sqrt(cfg.head_dim)
        scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), float("-inf"))
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(1, -1, cfg.num_attention_heads * cfg.head_dim)
        x = x + att.o_proj(out)
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return stack.norm(x)


@pytest.mark.parametrize("kind", ["v1_15", "v2"])
def test_gqa_grouping_matches_explicit_implementation(kind):
    cfg = _lm(kind)
    assert cfg.num_attention_heads != cfg.num_key_value_heads
    stack = _stack(cfg, causal=True)
    x = torch.randn(1, 6, cfg.hidden_size)
    with torch.no_grad():
        torch.testing.assert_close(stack(x), _reference_attention_stack(stack, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("stack_name", ["base", "residual_no_rope"])
def test_kv_cache_decode_equals_full_recompute(stack_name):
    cfg = tiny_config("v2")
    lm = cfg.base_lm_config() if stack_name == "base" else cfg.residual_lm_config()
    stack = _stack(lm, causal=True)
    x = torch.randn(1, 9, lm.hidden_size)
    with torch.no_grad():
        full = stack(x)
        cache = stack.new_kv_cache(32)
        outs = [stack(x[:, :5], *cache.append(5))]
        outs += [stack(x[:, i : i + 1], *cache.append(1)) for i in range(5, 8)]
        outs.append(stack(x[:, 8:], *cache.append(1)))
    assert cache.length == 9
    torch.testing.assert_close(torch.cat(outs, dim=1), full, atol=1e-5, rtol=1e-5)


def test_kv_cache_multi_token_append_and_overflow():
    lm = _lm()
    stack = _stack(lm, causal=True)
    x = torch.randn(1, 8, lm.hidden_size)
    with torch.no_grad():
        cache = stack.new_kv_cache(8)
        first = stack(x[:, :3], *cache.append(3))
        rest = stack(x[:, 3:], *cache.append(5))
        torch.testing.assert_close(torch.cat([first, rest], 1), stack(x), atol=1e-5, rtol=1e-5)
        with pytest.raises(RuntimeError, match="KV cache is full"):
            cache.append(1)


def test_kv_cache_in_model_dtype():
    stack = _stack(_lm(), causal=True, dtype=torch.bfloat16)
    cache = stack.new_kv_cache(4)
    assert cache.k.dtype == torch.bfloat16 and cache.k.shape == (2, 1, 2, 4, 32) and not cache.k.any()


def test_mup_scales_embeddings_and_branches():
    cfg = _lm()
    plain = _stack(cfg, causal=True)
    mup_cfg = replace(cfg, use_mup=True)
    mup = MiniCPM(mup_cfg, causal=True, max_positions=64)
    mup.load_state_dict(plain.state_dict())
    ids = torch.tensor([[3, 4]])
    with torch.no_grad():
        assert torch.equal(mup.embed(ids), plain.embed(ids) * cfg.scale_emb)
        x = torch.randn(1, 3, cfg.hidden_size)
        layer, scale = plain.layers[0], cfg.scale_depth / math.sqrt(cfg.num_hidden_layers)
        rope = plain.rotary(torch.arange(3))
        h = x + layer.self_attn(layer.input_layernorm(x), rope, plain._dense_attention) * scale
        expected = h + layer.mlp(layer.post_attention_layernorm(h)) * scale
        torch.testing.assert_close(mup.layers[0](x, rope, mup._dense_attention), expected)


def test_batched_positions_broadcast_over_heads():
    lm = _lm()
    stack = _stack(lm, causal=False)
    x = torch.randn(2, 4, lm.hidden_size)
    with torch.no_grad():
        per_row = stack(x, positions=torch.arange(4).expand(2, 4))
        torch.testing.assert_close(per_row, stack(x))
