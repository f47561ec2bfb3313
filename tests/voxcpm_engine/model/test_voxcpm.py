"""VoxCPMModel: state-dict layout of the released checkpoints, build, FSQ, v1/v2 fusion."""

from __future__ import annotations

import pytest
import torch

from tests.voxcpm_engine.tiny_configs import (
    KINDS,
    RELEASED,
    RELEASED_TENSOR_COUNTS,
    shared_models_dir,
    tiny_config,
)
from voxcpm_engine.config.model_config import ModelConfig
from voxcpm_engine.model.transformer import RotaryEmbedding
from voxcpm_engine.model.voxcpm import ScalarQuantizer, VoxCPMModel

BF16 = torch.bfloat16
PARAM_TOTALS = {"voxcpm-0.5b": 652_287_296, "voxcpm1.5": 801_729_856, "voxcpm2": 2_290_004_544}
SHAPES = {
    "voxcpm-0.5b": {
        "base_lm.embed_tokens.weight": (73448, 1024),
        "base_lm.layers.23.self_attn.k_proj.weight": (128, 1024),
        "residual_lm.layers.5.mlp.down_proj.weight": (1024, 4096),
        "feat_encoder.special_token": (1, 1, 1, 1024),
        "feat_decoder.estimator.decoder.layers.3.self_attn.q_proj.weight": (1024, 1024),
        "fsq_layer.in_proj.weight": (256, 1024),
        "stop_head.weight": (2, 1024),
    },
    "voxcpm2": {
        "base_lm.embed_tokens.weight": (73448, 2048),
        "base_lm.layers.27.self_attn.q_proj.weight": (2048, 2048),
        "feat_encoder.encoder.layers.11.self_attn.q_proj.weight": (2048, 1024),
        "feat_decoder.estimator.decoder.layers.11.self_attn.o_proj.weight": (1024, 2048),
        "feat_decoder.estimator.time_mlp.linear_2.bias": (1024,),
        "fsq_layer.out_proj.weight": (2048, 512),
        "lm_to_dit_proj.weight": (1024, 2048),
        "fusion_concat_proj.weight": (2048, 4096),
        "stop_proj.bias": (2048,),
    },
}


def _expected_keys(cfg: ModelConfig) -> set[str]:
    """The official key set, spelled out from spec §3 independently of the module code."""
    layer = [f"self_attn.{p}_proj.weight" for p in "qkvo"] + [f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")]
    layer += ["input_layernorm.weight", "post_attention_layernorm.weight"]
    stacks = {
        "base_lm": cfg.lm.num_hidden_layers,
        "residual_lm": cfg.residual_lm_num_layers,
        "feat_encoder.encoder": cfg.encoder.num_layers,
        "feat_decoder.estimator.decoder": cfg.dit.num_layers,
    }
    keys = {f"{s}.layers.{i}.{k}" for s, n in stacks.items() for i in range(n) for k in layer}
    keys |= {f"{s}.norm.weight" for s in stacks}
    keys |= {"base_lm.embed_tokens.weight", "feat_encoder.special_token", "stop_head.weight"}
    linears = ["feat_encoder.in_proj", "fsq_layer.in_proj", "fsq_layer.out_proj", "stop_proj"]
    linears += ["enc_to_lm_proj", "lm_to_dit_proj", "res_to_dit_proj"]
    linears += [f"feat_decoder.estimator.{n}" for n in ("in_proj", "cond_proj", "out_proj")]
    linears += [f"feat_decoder.estimator.{m}.linear_{i}" for m in ("time_mlp", "delta_time_mlp") for i in (1, 2)]
    if cfg.version == 2:
        linears.append("fusion_concat_proj")
    keys |= {f"{n}.{w}" for n in linears for w in ("weight", "bias")}
    return keys


@pytest.mark.parametrize("name", RELEASED)
def test_released_layout_on_meta(name):
    models = shared_models_dir()
    if models is None:
        pytest.skip("shared/models not found")
    cfg = ModelConfig.from_json(models / name / "config.json")
    state = VoxCPMModel.build(cfg, device="meta").state_dict()
    assert len(state) == RELEASED_TENSOR_COUNTS[name]
    assert set(state) == _expected_keys(cfg)
    assert sum(t.numel() for t in state.values()) == PARAM_TOTALS[name]
    assert {t.dtype for t in state.values()} == {BF16} and all(t.is_meta for t in state.values())
    for key, shape in SHAPES.get(name, {}).items():
        assert tuple(state[key].shape) == shape, key


@pytest.mark.parametrize("kind", KINDS)
def test_tiny_layout_matches_spec_keys(kind):
    cfg = tiny_config(kind)
    assert set(VoxCPMModel.build(cfg, device="meta").state_dict()) == _expected_keys(cfg)


def test_build_materialises_in_target_dtype_with_reference_rope_tables():
    cfg = tiny_config("v2")
    built = VoxCPMModel.build(cfg, dtype=BF16, init_weights=True)
    assert all(p.dtype == BF16 and torch.isfinite(p).all() for p in built.parameters())
    # The reference builds in fp32 and casts the whole model, buffers included.
    eager = VoxCPMModel(cfg).to(BF16)
    ropes = [(n, m) for n, m in built.named_modules() if isinstance(m, RotaryEmbedding)]
    assert len(ropes) == 3  # base, encoder, DiT (the v2 residual LM has no RoPE)
    eager_modules = dict(eager.named_modules())
    for name, rope in ropes:
        assert torch.equal(rope.cos, eager_modules[name].cos) and torch.equal(rope.sin, eager_modules[name].sin)
    assert built.base_lm.rotary.cos.shape == (cfg.max_length, cfg.lm.head_dim)


def test_build_without_init_is_loadable():
    cfg = tiny_config("v1_15")
    source = VoxCPMModel.build(cfg, init_weights=True)
    target = VoxCPMModel.build(cfg)
    target.load_state_dict(source.state_dict(), strict=True)
    loaded = target.state_dict()
    assert all(torch.equal(value, loaded[key]) for key, value in source.state_dict().items())
    assert not target.training and target.dtype == BF16 and target.device.type == "cpu"


def _bias_hitting(targets: list[float]) -> dict[float, float]:
    """bf16 inputs b with bf16(bf16(tanh(b)) * 9) equal to each target (a .5 tie)."""
    b = torch.linspace(-3, 3, 20001).to(BF16).unique()
    q = torch.tanh(b) * 9
    found = {}
    for target in targets:
        hits = (q == target).nonzero()
        if hits.numel():
            found[target] = b[hits[0, 0]].item()
    return found


def test_fsq_rounds_half_to_even_in_bf16():
    fsq = ScalarQuantizer(4, 4, 9).to(BF16)
    ties = _bias_hitting([2.5, -2.5, 3.5, 8.5])
    assert len(ties) == 4
    with torch.no_grad():
        fsq.in_proj.weight.zero_()
        fsq.in_proj.bias.copy_(torch.tensor(list(ties.values())))
        fsq.out_proj.weight.copy_(torch.eye(4))
        fsq.out_proj.bias.zero_()
        out = fsq(torch.zeros(1, 4, dtype=BF16))
    expected = torch.tensor([[2.0, -2.0, 4.0, 8.0]]).to(BF16) / 9  # half away from zero would give 3, -3, 4, 9
    assert torch.equal(out, expected)


def test_v1_v2_fusion_and_conditioning():
    for kind, has_fusion in (("v1_15", False), ("v2", True)):
        model = VoxCPMModel.build(tiny_config(kind), init_weights=True)
        assert (model.fusion_concat_proj is not None) == has_fusion
        h, a = torch.randn(1, 64).to(BF16), torch.randn(1, 64).to(BF16)
        mu = model.dit_condition(h, a)
        with torch.no_grad():
            if has_fusion:
                assert torch.equal(model.residual_input(h, a), model.fusion_concat_proj(torch.cat([h, a], -1)))
                assert torch.equal(mu, torch.cat([model.lm_to_dit_proj(h), model.res_to_dit_proj(a)], -1))
            else:
                assert torch.equal(model.residual_input(h, a), h + a)
                assert torch.equal(mu, model.lm_to_dit_proj(h) + model.res_to_dit_proj(a))
        assert model.stop_logits(h).shape == (1, 2)
