"""The closed-form FLOP model against torch's FLOP counter on the real modules.

Tiny presets: on the CPU, through the component calls (``count_step_flops``) and through a whole
engine step (``Engine.step`` under ``FlopCounterMode``), exactly. Full-size VoxCPM1.5 / VoxCPM2: on
the meta device, exactly; and the performance issue's reference counts (44.6 / 90.8 GFLOP per
step) are what the same model gives with a whole-utterance VAE decode and without the attention
products, which the counter cannot see in the CPU's fused SDPA kernel.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from perf.flops import PARTS, achieved_figures, build_meta, count_step_flops, step_flops
from voxcpm_engine.config.engine_config import EngineConfig
from voxcpm_engine.config.model_config import ModelConfig
from voxcpm_engine.config.presets import preset_config
from voxcpm_engine.engine import Engine
from voxcpm_engine.io.checkpoint import load_checkpoint
from voxcpm_engine.model.audio_vae import AudioVAE
from voxcpm_engine.model.voxcpm import VoxCPMModel
from voxcpm_engine.types import GenerationParams


def _cfg(name: str) -> ModelConfig:
    return ModelConfig.from_dict(preset_config(name), where=name)


@pytest.mark.parametrize("name", ["tiny-v1", "tiny-v2"])
def test_tiny_components_on_cpu_exact(name):
    cfg = _cfg(name)
    model = VoxCPMModel.build(cfg, device="cpu", init_weights=True)
    vae = AudioVAE(cfg.audio_vae)
    for context in (0, 37):
        for timesteps in (10, 4):
            counted = count_step_flops(model, vae, inference_timesteps=timesteps, context_len=context)
            assert counted == step_flops(cfg, inference_timesteps=timesteps, context_len=context)
    # The CPU's fused SDPA kernel is invisible to the counter: what it sees is the model without attention.
    blind = count_step_flops(model, vae, context_len=37, math_sdpa=False)
    assert blind == step_flops(cfg, context_len=37, attention_products=False)


@pytest.mark.parametrize("ckpt", ["tiny_v1", "tiny_v2"])
def test_engine_step_on_cpu_exact(ckpt, request):
    """A whole decode step of the batched engine (two requests, different contexts) equals the model."""
    loaded = load_checkpoint(request.getfixturevalue(ckpt))
    engine = Engine(loaded, EngineConfig(max_num_seqs=4, max_model_len=256), attention_backend="torch")
    for rid, text in (("a", "Hello there."), ("b", "A different and somewhat longer prompt text.")):
        engine.add_request(rid, text, params=GenerationParams(min_steps=4, max_steps=4, seed=1))
    engine.step()  # prefill + first patch
    contexts = [engine.requests[r].num_positions - 1 for r in ("a", "b")]
    assert contexts[0] != contexts[1]
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        outputs = engine.step()
    assert [o.audio is not None for o in outputs] == [True, True]
    expected = sum(step_flops(loaded.config, context_len=c)["total"] for c in contexts)
    assert counter.get_total_flops() == expected


@pytest.mark.parametrize(
    ("name", "reference_gflop", "total_gflop"),
    [("voxcpm1.5", 44.6, 44.6835), ("voxcpm2", 90.8, 91.0888)],
)
def test_full_size_on_meta_and_the_issue_reference(name, reference_gflop, total_gflop):
    cfg = _cfg(name)
    model, vae = build_meta(cfg)
    counted = count_step_flops(model, vae)
    parts = step_flops(cfg)
    assert counted == parts
    assert parts["total"] / 1e9 == pytest.approx(total_gflop, abs=1e-4)
    assert parts["total"] == pytest.approx(sum(parts[p] for p in PARTS))
    assert 0.85 < parts["dit_sampler"] / parts["total"] < 0.92  # "the DiT sampler is about 90% of it"
    reference = step_flops(cfg, vae_streaming=False, attention_products=False)["total"] / 1e9
    assert round(reference, 1) == reference_gflop
    # 6.25 patches per second of audio: 0.28 / 0.57 TFLOP per audio second, as in the issue.
    per_audio_s = achieved_figures(cfg, timesteps=10, steps=0, patches=1, wall_s=1.0, peak_tflops=None)
    assert round(per_audio_s["tflop_per_audio_s"], 2) == {"voxcpm1.5": 0.28, "voxcpm2": 0.57}[name]


def test_the_parts_move_as_expected():
    cfg = _cfg("voxcpm1.5")
    base = step_flops(cfg)
    longer = step_flops(cfg, context_len=1000)
    # Only the LMs' attention grows with the context: 4 * heads * head_dim FLOPs per key per layer.
    lm = cfg.base_lm_config()
    per_key = 4 * lm.num_attention_heads * lm.head_dim
    assert longer["base_lm"] - base["base_lm"] == 1000 * per_key * lm.num_hidden_layers
    assert longer["residual_lm"] - base["residual_lm"] == 1000 * per_key * cfg.residual_lm_num_layers
    assert longer["dit_sampler"] == base["dit_sampler"]
    # The sampler scales with the estimator calls: n - zero_init_steps(n) (9 for 10, 3 for 4).
    assert step_flops(cfg, inference_timesteps=4)["dit_sampler"] * 3 == base["dit_sampler"]
    figures = achieved_figures(cfg, timesteps=10, steps=50, patches=6400, wall_s=2.0, peak_tflops=989.0)
    per_patch = step_flops(cfg, context_len=25)["total"]
    assert figures["achieved_tflops"] == pytest.approx(per_patch * 3200 / 1e12)
    assert figures["mfu"] == pytest.approx(figures["achieved_tflops"] / 989.0)
    assert torch.isfinite(torch.tensor(figures["gflop_per_patch"]))
