"""The segmented LoRA kernels of ``voxcpm_engine.kernels.lora`` against the per-row reference formula and torch.

Runs in Triton's interpreter without CUDA (set up by ``tests.voxcpm_engine.kernels.interpret``), compiled
with CUDA.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.voxcpm_engine.kernels.interpret import DEVICE, DTYPES, close, randn, skip_if_compiled
from voxcpm_engine.kernels import lora as lora_kernels
from voxcpm_engine.kernels.lora import add_lora_
from voxcpm_engine.lora.layers import LoRALinear, add_adapters_, enable_lora, lora_rows, set_lora_rows

skip_if_compiled(lora_kernels._shrink_kernel)


@pytest.fixture(autouse=True)
def _no_rows_leak():
    yield
    set_lora_rows(None)


def _slots(num_slots, rank, width, k, dtype, seed):
    """Random per-slot A, B, scaling with slot 0 zero (as LoRALinear keeps it) and slot 2 of lower rank."""
    a = randn(num_slots, rank, k, dtype=dtype, seed=seed) * 0.2
    b = randn(num_slots, width, rank, dtype=dtype, seed=seed + 1) * 0.2
    a[0], b[0] = 0, 0
    a[2, rank // 2 :], b[2, :, rank // 2 :] = 0, 0  # a rank-r/2 adapter zero-padded to the slot rank
    scaling = torch.tensor([0.0, 2.0, 0.5, 1.0][:num_slots], dtype=torch.float32).to(device=DEVICE, dtype=dtype)
    return a, b, scaling


def _per_row(x, base, a, b, scaling, ids):
    """``base + (B(Ax)) * scaling`` row by row in the model dtype: the reference's LoRALinear (spec §9)."""
    out = base.clone()
    for row, slot in enumerate(ids):
        if slot:
            out[row] = base[row] + F.linear(F.linear(x[row], a[slot]), b[slot]) * scaling[slot]
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("split_k", [False, True])
@pytest.mark.parametrize(("shape", "widths", "rank"), [((37, 48), (80,), 8), ((9, 5, 96), (64, 32, 32), 16)])
def test_group_equals_the_per_row_formula(shape, widths, rank, split_k, dtype, monkeypatch):
    if split_k:  # several K splits summed by the expand kernel, blocks of 16 rows
        monkeypatch.setitem(lora_kernels.TUNING, "block_k", 16)
        monkeypatch.setitem(lora_kernels.TUNING, "k_iters", 1)
        monkeypatch.setitem(lora_kernels.TUNING, "block_m", 16)
    ids = torch.tensor([(3 * i + 1) % 4 for i in range(shape[0])])  # interleaved slots, slot 0 included
    x = randn(*shape, dtype=dtype, seed=1)
    layers = [_slots(4, rank, w, shape[-1], dtype, seed=10 * g) for g, w in enumerate(widths)]
    base = randn(*shape[:-1], sum(widths), dtype=dtype, seed=2)
    out = base.clone()
    order, ordered = (t.to(DEVICE) for t in reversed(torch.sort(ids, stable=True)))
    add_lora_(x, out, *([layer[i] for layer in layers] for i in range(3)), order, ordered)
    start = 0
    for (a, b, scaling), width in zip(layers, widths, strict=True):
        part = slice(start, start + width)
        expect = _per_row(x, base[..., part], a, b, scaling, ids.tolist())
        tol = 1e-5 if dtype == torch.float32 else 2e-2  # fp32: K summed in another order (splits)
        torch.testing.assert_close(out[..., part].float(), expect.float(), atol=tol, rtol=tol)
        start += width
    untouched = ids == 0
    assert torch.equal(out[untouched.to(DEVICE)], base[untouched.to(DEVICE)])  # slot 0 rows: the base exactly


def test_group_checks_its_shapes():
    a, b, scaling = _slots(4, 8, 16, 32, torch.float32, seed=0)
    order = ordered = torch.zeros(4, dtype=torch.int64, device=DEVICE)
    with pytest.raises(ValueError, match="1 to 3 layers"):
        add_lora_(randn(4, 32), randn(4, 64), [a] * 4, [b] * 4, [scaling] * 4, order, ordered)
    with pytest.raises(ValueError, match="widths"):
        add_lora_(randn(4, 32), randn(4, 17), [a], [b], [scaling], order, ordered)


class _Attn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(48, 64, bias=False), nn.Linear(48, 32), nn.Linear(48, 32)


def test_kernel_path_equals_the_torch_path_of_a_module_group():
    torch.manual_seed(0)
    model = _Attn().to(DEVICE)
    slots = enable_lora(model, num_slots=4, max_rank=8, targets=["q_proj", "k_proj", "v_proj"])
    layers = [model.q_proj, model.k_proj, model.v_proj]
    assert all(isinstance(m, LoRALinear) for m in layers)
    for slot in (1, 2, 3):
        for g, layer in enumerate(layers):
            if (slot, g) != (3, 1):  # slot 3 leaves k_proj out: zero there
                a, b = randn(8, 48, seed=slot + 7 * g) * 0.1, randn(layer.out_features, 8, seed=slot + 9 * g) * 0.1
                layer.load_slot(slot, a, b, 0.5 * slot)
    x = randn(6, 3, 48, seed=4)
    ids = [3, 1, 0, 2, 3, 1]
    fused = torch.cat([F.linear(x, m.weight, m.bias) for m in layers], dim=-1)
    with torch.no_grad(), lora_rows(ids):
        plain = add_adapters_(layers, x, fused.clone())
        single = model.q_proj(x)
        slots.use_kernels()
        kernel = add_adapters_(layers, x, fused.clone())
        close(model.q_proj(x), single, torch.float32)
    close(kernel, plain, torch.float32)
    assert not torch.equal(kernel, fused)
