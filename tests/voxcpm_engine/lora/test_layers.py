"""Tests of voxcpm_engine.lora.layers: LoRALinear slots, batched per-row adapters, enable/disable on the model."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from voxcpm_engine.config.model_config import ModelConfig
from voxcpm_engine.config.presets import preset_config
from voxcpm_engine.io.checkpoint import load_checkpoint
from voxcpm_engine.io.lora_files import (
    Adapter,
    AdapterError,
    LoRAConfig,
    adapter_from_state_dict,
    load_adapter,
    lora_targets,
)
from voxcpm_engine.lora.layers import (
    LoRALinear,
    apply_single_adapter,
    disable_lora,
    enable_lora,
    lora_rows,
    set_lora_rows,
)
from voxcpm_engine.single.synthesizer import Synthesizer
from voxcpm_engine.tools.synthetic_lora import synthetic_lora_tensors
from voxcpm_engine.types import GenerationParams

V1 = ModelConfig.from_dict(preset_config("tiny-v1"))
V2 = ModelConfig.from_dict(preset_config("tiny-v2"))


@pytest.fixture(autouse=True)
def _no_rows_leak():
    yield
    set_lora_rows(None)


# ------------------------------------------------------------------------- batched application


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(48, 40, bias=False)
        self.out = nn.Linear(40, 24)

    def forward(self, x):
        return self.out(self.q_proj(x))


TOY_LAYOUT = {"q_proj": (48, 40), "out": (40, 24)}


def _toy_adapter(rank, seed, targets=("q_proj", "out")):
    cfg = LoRAConfig(enable_proj=True, r=rank, alpha=2 * rank + 1)  # scaling 2.125 / 2.25: not a power of 2
    tensors = synthetic_lora_tensors({t: TOY_LAYOUT[t] for t in targets}, cfg, seed)
    # 20x stronger than the synthetic default, so a row given the wrong slot cannot pass.
    return Adapter(cfg, {t: (tensors[f"{t}.lora_A"] * 20, tensors[f"{t}.lora_B"] * 20) for t in targets}, "toy")


def _reference(layer: nn.Linear, x, adapter, name):
    """The reference LoRALinear formula in the layer dtype (spec §9)."""
    a, b = (t.to(layer.weight) for t in adapter.weights[name])
    scaling = torch.tensor(adapter.scaling, dtype=torch.float32).to(layer.weight)
    return F.linear(x, layer.weight, layer.bias) + F.linear(F.linear(x, a), b) * scaling


def _toy():
    torch.manual_seed(0)
    return Toy().to(torch.bfloat16)


@pytest.mark.parametrize("shape", [(5, 7, 48), (5, 48)])
def test_mixed_slots_equal_per_row_reference_and_slot0_is_base(shape):
    model = _toy()
    base_q = model.q_proj
    slots = enable_lora(model, num_slots=4, max_rank=8, targets=["q_proj", "out"])
    assert isinstance(model.q_proj, LoRALinear) and model.q_proj.weight is base_q.weight
    ads = {1: _toy_adapter(8, 1), 2: _toy_adapter(4, 2), 3: _toy_adapter(8, 3, targets=("out",))}
    for slot, ad in ads.items():
        slots.load(slot, ad)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
    ids = [2, 0, 1, 3, 2]
    with lora_rows(ids), torch.no_grad():
        q = model.q_proj(x)
    for row, slot in enumerate(ids):
        if slot in (0, 3):  # no adapter, or an adapter without this layer: the base output exactly
            assert torch.equal(q[row], F.linear(x[row], base_q.weight))
            continue
        expected = _reference(model.q_proj, x[row], ads[slot], "q_proj")
        # bmm vs the reference's two F.linear calls: the same sums, occasionally 1 bf16 ulp apart.
        torch.testing.assert_close(q[row], expected, rtol=8e-3, atol=8e-3)
        assert (q[row] != F.linear(x[row], base_q.weight)).float().mean() > 0.5


def test_uniform_slot_is_bit_exact_with_the_reference_including_padded_rank():
    model = _toy()
    slots = enable_lora(model, num_slots=3, max_rank=16, targets=["q_proj", "out"])
    adapter = _toy_adapter(4, 7)  # rank 4 in rank-16 slots: zero padding must not change bits
    slots.load(2, adapter)
    x = torch.randn(3, 9, 48, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    with lora_rows(2), torch.no_grad():
        assert torch.equal(model.q_proj(x), _reference(model.q_proj, x, adapter, "q_proj"))
        padded = torch.bmm(x, model.q_proj.lora_a[[2, 2, 2]].transpose(1, 2))  # mixed path sees the padding
    assert torch.equal(padded[..., 4:], torch.zeros_like(padded[..., 4:]))
    with lora_rows([2, 0, 2]), torch.no_grad():
        mixed = model.q_proj(x)
    torch.testing.assert_close(mixed[0], _reference(model.q_proj, x[0], adapter, "q_proj"), rtol=8e-3, atol=8e-3)


def test_views_follow_the_buffers_across_to():
    model = _toy()
    slots = enable_lora(model, num_slots=2, max_rank=8, targets=["q_proj", "out"])
    adapter = _toy_adapter(8, 1)
    slots.load(1, adapter)
    model.float()  # replaces the buffers; the cached per-slot views must follow
    a, b, scaling = model.q_proj._views[1]
    assert a._base is model.q_proj.lora_a and b._base is model.q_proj.lora_b and a.dtype == torch.float32
    x = torch.randn(2, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        with lora_rows(1):
            uniform = model.q_proj(x)
        with lora_rows([1, 0]):
            mixed = model.q_proj(x)  # gathers from the buffers directly
    torch.testing.assert_close(uniform[0], mixed[0])


def test_rows_must_match_leading_dim_and_slots_are_checked():
    model = _toy()
    slots = enable_lora(model, num_slots=3, max_rank=4, targets=["q_proj"])
    slots.load(1, _toy_adapter(4, 1, targets=("q_proj",)))
    with lora_rows([1, 0]), pytest.raises(ValueError, match="2 slot ids for an input of shape"):
        model.q_proj(torch.zeros(3, 48, dtype=torch.bfloat16))
    with pytest.raises(AdapterError, match="rank 8 exceeds"):
        slots.load(2, _toy_adapter(8, 1, targets=("q_proj",)))
    with pytest.raises(AdapterError, match="without LoRA enabled.*out"):
        slots.load(2, _toy_adapter(4, 1))
    with pytest.raises(ValueError, match="slot must be in"):
        slots.load(0, _toy_adapter(4, 1, targets=("q_proj",)))
    with pytest.raises(RuntimeError, match="already enabled"):
        enable_lora(model, 2, 4, targets=["out"])
    slots.clear(1)
    assert model.q_proj.slot_ranks == [0, 0, 0] and not model.q_proj.lora_a.any()


# ----------------------------------------------------------------------------- on the model


def test_state_dict_unchanged_and_slot0_model_is_base_exactly(tiny_v2):
    model = load_checkpoint(tiny_v2).model
    before = model.state_dict()
    x = torch.randn(2, 5, V2.lm.hidden_size, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    with torch.no_grad():
        base = model.base_lm(x)
        slots = enable_lora(model, num_slots=3, max_rank=8)
        after = model.state_dict()
        assert list(after) == list(before) and all(after[k] is not None and after[k].equal(before[k]) for k in before)
        with lora_rows([0, 0]):  # uniform 0: no LoRA work at all
            assert torch.equal(model.base_lm(x), base)
        slots.load(1, _model_adapter(V2, seed=3))
        with lora_rows(torch.tensor([0, 1])):  # mixed path: row 0 adds exact zeros
            mixed = model.base_lm(x)
        assert torch.equal(mixed[0], base[0]) and not torch.equal(mixed[1], base[1])
        disable_lora(model)
    assert type(model.base_lm.layers[0].self_attn.q_proj) is nn.Linear
    assert not any(isinstance(m, LoRALinear) for m in model.modules())


def _model_adapter(cfg, seed, rank=8):
    lora = LoRAConfig(enable_lm=True, enable_dit=True, enable_proj=True, r=rank, alpha=16)
    return adapter_from_state_dict(synthetic_lora_tensors(lora_targets(cfg, lora), lora, seed), lora, cfg)


def test_cfg_batch_rows_follow_the_request():
    """The DiT runs [cond rows | uncond rows]; with ids.repeat(2) each request gets its own adapter."""
    from tests.voxcpm_engine.tiny_configs import tiny_model

    model = tiny_model("v2", seed=0)
    cfg = model.config
    slots = enable_lora(model, num_slots=3, max_rank=8)
    slots.load(1, _model_adapter(cfg, 1))
    slots.load(2, _model_adapter(cfg, 2))
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(2, cfg.feat_dim, cfg.patch_size, generator=gen).to(torch.bfloat16)
    mu = torch.randn(2, 2 * cfg.dit.hidden_dim, generator=gen).to(torch.bfloat16)
    cond = torch.randn(2, cfg.feat_dim, cfg.patch_size, generator=gen).to(torch.bfloat16)
    with torch.no_grad():
        with lora_rows(torch.tensor([1, 2]).repeat(2)):
            both = model.sample_patch(noise, mu, cond, n_timesteps=4, cfg_value=2.0)
        for row, slot in enumerate([1, 2]):
            one = slice(row, row + 1)
            with lora_rows(slot):
                alone = model.sample_patch(noise[one], mu[one], cond[one], n_timesteps=4, cfg_value=2.0)
            torch.testing.assert_close(both[one], alone, rtol=3e-2, atol=3e-2)


def test_single_adapter_generation(tiny_v2, lora_v2):
    synth = Synthesizer.from_dir(tiny_v2, device="cpu")
    params = GenerationParams(min_steps=4, max_steps=4, seed=5)
    base = synth.generate("Hello adapter.", params=params)
    adapter = load_adapter(lora_v2, synth.config)
    with apply_single_adapter(synth.model, adapter):
        voiced = synth.generate("Hello adapter.", params=params)
        again = synth.generate("Hello adapter.", params=params)
    assert np.array_equal(voiced, again)
    assert np.abs(voiced - base).max() > 1e-2  # the adapter changes the audio
    assert np.array_equal(synth.generate("Hello adapter.", params=params), base)  # and is gone afterwards


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batched_slots_on_cuda(tiny_v2, lora_v2):
    model = _toy().cuda()
    slots = enable_lora(model, num_slots=3, max_rank=8, targets=["q_proj", "out"])
    ads = {1: _toy_adapter(8, 1), 2: _toy_adapter(4, 2)}
    for slot, ad in ads.items():
        slots.load(slot, ad)
    x = torch.randn(4, 6, 48, generator=torch.Generator().manual_seed(5)).to("cuda", torch.bfloat16)
    base = F.linear(x, model.q_proj.weight)
    for ids in ([1, 0, 2, 1], torch.tensor([1, 0, 2, 1], device="cuda")):  # host ids, and device ids (no sync)
        with lora_rows(ids), torch.no_grad():
            q = model.q_proj(x)
        assert torch.equal(q[1], base[1])
        for row in (0, 2, 3):
            expected = _reference(model.q_proj, x[row], ads[[1, 0, 2, 1][row]], "q_proj")
            torch.testing.assert_close(q[row], expected, rtol=8e-3, atol=8e-3)
    with lora_rows(2), torch.no_grad():
        assert torch.equal(model.q_proj(x), _reference(model.q_proj, x, ads[2], "q_proj"))
    synth = Synthesizer.from_dir(tiny_v2, device="cuda")
    params = GenerationParams(min_steps=4, max_steps=4, seed=5)
    with apply_single_adapter(synth.model, load_adapter(lora_v2, synth.config)):
        voiced = synth.generate("Hello adapter.", params=params)
    assert np.isfinite(voiced).all() and np.abs(voiced - synth.generate("Hello adapter.", params=params)).max() > 1e-2
