"""The fused path of the model (``VoxCPMModel.use_fused_kernels``) against the op-by-op path.

fp32 tiny models of every kind, Triton kernels in the interpreter on the CPU: each stack, the local
encoder and the sampler agree up to fp32 rounding order; LoRA rows add their adapter terms to
the fused GEMMs' slices (and the time MLPs fall back to per-call evaluation) and still agree.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

import triton

from tests.voxcpm_engine.tiny_configs import KINDS, tiny_model
from voxcpm_engine.kernels import fused
from voxcpm_engine.lora.layers import LoRALinear, enable_lora, lora_rows
from voxcpm_engine.model.sampler import euler_schedule, sample_euler, sway_timesteps

if not torch.cuda.is_available() and isinstance(fused._rms_norm_kernel, triton.runtime.JITFunction):
    pytest.skip("Triton kernels were imported without TRITON_INTERPRET=1", allow_module_level=True)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ATOL = 1e-5 if DEVICE == "cpu" else 1e-4  # CUDA: fused GEMMs may pick other fp32 kernels
STEPS = 4  # the interpreter runs every kernel program in Python: keep the sampler short


def _pair(kind):
    plain = tiny_model(kind, dtype=torch.float32).to(DEVICE)
    fast = tiny_model(kind, dtype=torch.float32).to(DEVICE)
    fast.use_fused_kernels()
    return plain, fast


def _inputs(model, b=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    cfg = model.config
    hidden = cfg.base_lm_config().hidden_size
    shapes = {
        "x": (b, 5, hidden),
        "patches": (b, 1, cfg.patch_size, cfg.feat_dim),
        "noise": (b, cfg.feat_dim, cfg.patch_size),
        "lm": (b, hidden),
        "res": (b, cfg.residual_lm_config().hidden_size),
        "cond": (b, cfg.feat_dim, cfg.patch_size),
    }
    return {k: torch.randn(*shape, generator=gen).to(DEVICE) for k, shape in shapes.items()}


def _outputs(model, t):
    cfg_value = torch.tensor([2.0, 1.5, 3.0], device=DEVICE)
    positions = torch.tensor([[3], [7], [1]], device=DEVICE)
    mu = model.dit_condition(t["lm"], t["res"])
    return {
        "base_lm": model.base_lm(t["x"]),
        "base_lm_decode": model.base_lm(t["x"][:, :1], positions),
        "residual_lm": model.residual_lm(t["x"][:, :2]),
        "encoder": model.encode_patches(t["patches"]),
        "sample": model.sample_patch(t["noise"], mu, t["cond"], n_timesteps=STEPS, cfg_value=cfg_value),
    }


@pytest.mark.parametrize("kind", KINDS)
@torch.inference_mode()
def test_fused_path_equals_the_op_by_op_path(kind):
    plain, fast = _pair(kind)
    assert fast.base_lm.fused and fast.feat_decoder.fused and not plain.base_lm.fused
    t = _inputs(plain)
    want, got = _outputs(plain, t), _outputs(fast, t)
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=ATOL, rtol=0, msg=name)


def test_fusing_keeps_parameters_and_state_dict():
    plain, fast = _pair("v2")
    attn = fast.base_lm.layers[0].self_attn
    assert attn.q_proj.weight.data_ptr() == attn.qkv_weight.data_ptr()  # a view, no copy kept
    fast.use_fused_kernels()  # idempotent
    assert attn.q_proj.weight.data_ptr() == attn.qkv_weight.data_ptr()
    want = plain.state_dict()
    got = fast.state_dict()
    assert list(got) == list(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key


def test_euler_schedule_is_the_loops_arithmetic():
    times, steps = euler_schedule(10, torch.bfloat16)
    t_span = sway_timesteps(10, dtype=torch.bfloat16, device="cpu")
    assert len(steps) == 9 and times[0] == t_span[1]  # the zero-init step makes no call
    assert times.dtype == torch.bfloat16
    assert sum(steps) == pytest.approx(float(t_span[1]), abs=1e-2)


@torch.inference_mode()
def test_time_table_equals_the_per_call_time_token():
    _, fast = _pair("v1_15")
    dit = fast.feat_decoder.estimator
    times, _ = euler_schedule(STEPS, torch.float32)
    table = dit.time_table(STEPS, times)
    assert table is dit.time_table(STEPS, times)  # cached per step count
    for i, t in enumerate(times):
        torch.testing.assert_close(
            table[i : i + 1].expand(2, -1), dit.time_row(t.to(DEVICE), 2), atol=ATOL / 10, rtol=0
        )


def _load_same_adapters(models, seed=0):
    for slot in (1, 2):
        gen = torch.Generator().manual_seed(seed + slot)
        layers = [dict(m.named_modules()) for m in models]
        for name, module in models[0].named_modules():
            if isinstance(module, LoRALinear):
                a = (torch.randn(4, module.in_features, generator=gen) * 0.3).to(DEVICE)
                b = (torch.randn(module.out_features, 4, generator=gen) * 0.3).to(DEVICE)
                for mods in layers:
                    mods[name].load_slot(slot, a, b, 0.5)


@torch.inference_mode()
def test_lora_rows_on_fused_gemms_and_per_call_time_tokens():
    plain, fast = _pair("v2")
    targets = [
        n
        for n, _ in plain.named_modules()
        if n.endswith(("q_proj", "v_proj", "gate_proj")) or n == "feat_decoder.estimator.time_mlp.linear_1"
    ]
    for model in (plain, fast):
        enable_lora(model, 3, 4, targets)
    _load_same_adapters([plain, fast])
    assert fast.feat_decoder.estimator.time_table(STEPS, euler_schedule(STEPS, torch.float32)[0]) is None
    t = _inputs(plain)
    mu = {}
    with lora_rows([1, 0, 2]):
        want = {"lm": plain.base_lm(t["x"][:, :1]), "enc": plain.encode_patches(t["patches"])}
        got = {"lm": fast.base_lm(t["x"][:, :1]), "enc": fast.encode_patches(t["patches"])}
        mu = plain.dit_condition(t["lm"], t["res"])
    with lora_rows([1, 0, 2, 1, 0, 2]):
        args = (t["noise"], mu, t["cond"])
        want["sample"] = plain.sample_patch(*args, n_timesteps=STEPS, cfg_value=2.0)
        got["sample"] = fast.sample_patch(*args, n_timesteps=STEPS, cfg_value=2.0)
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=ATOL, rtol=0, msg=name)
    # and the adapters really act: slot 0 everywhere gives other numbers
    with lora_rows(0):
        assert not torch.allclose(fast.base_lm(t["x"][:, :1]), got["lm"], atol=1e-3)


def test_sample_euler_fused_equals_sample_euler_with_float_guidance():
    plain, fast = _pair("v1_05b")
    t = _inputs(plain)
    mu = plain.dit_condition(t["lm"], t["res"])
    with torch.inference_mode():
        want = sample_euler(plain.feat_decoder.estimator, t["noise"], mu, t["cond"], n_timesteps=3, cfg_value=2.5)
        got = fast.sample_patch(t["noise"], mu, t["cond"], n_timesteps=3, cfg_value=2.5)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
