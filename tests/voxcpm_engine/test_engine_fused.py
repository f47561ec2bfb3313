"""The engine on the fused path (``EngineConfig.fused_kernels``) equals the op-by-op engine.

On the CPU the Triton kernels run in the interpreter; the static decode step (what CUDA graphs
capture) runs eagerly, so the fused q/k/v views through the paged caches, padding rows and the
fused sampler are all exercised in one crowd. fp32, the batch tolerance of ``test_engine.py``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

import triton

from tests.voxcpm_engine.test_engine import BATCH_ATOL, _run
from voxcpm_engine.config.engine_config import EngineConfig
from voxcpm_engine.engine import Engine
from voxcpm_engine.io.checkpoint import load_checkpoint
from voxcpm_engine.kernels import fused
from voxcpm_engine.model.vae_layers import ResidualUnit
from voxcpm_engine.tools.synthetic_lora import write_lora
from voxcpm_engine.types import GenerationParams
from voxcpm_engine.worker.decode_graphs import DecodeGraphs

if not torch.cuda.is_available() and isinstance(fused._rms_norm_kernel, triton.runtime.JITFunction):
    pytest.skip("Triton kernels were imported without TRITON_INTERPRET=1", allow_module_level=True)

STEPS = 2  # sampler steps: the interpreter is slow
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ATOL = BATCH_ATOL if DEVICE == "cpu" else 2e-3  # CUDA: the tolerance of test_engine_cuda.py


def _engine(path, fused_kernels, max_loras=0):
    ckpt = load_checkpoint(path, device=DEVICE, dtype="float32")
    engine = Engine(
        ckpt,
        EngineConfig(
            max_num_seqs=4,
            max_num_batched_tokens=64,
            max_model_len=128,
            fused_kernels=fused_kernels,
            cuda_graph_timesteps=(STEPS,),
            vae_tf32=False,
            max_loras=max_loras,
        ),
    )
    if fused_kernels and DEVICE == "cpu":  # on CUDA the engine captures its graphs itself
        engine.runner.graphs = DecodeGraphs(engine.runner, 4, 128, (STEPS,), capture=False)
        # The VAE's fused paths are checked on their own (tests/voxcpm_engine/kernels/test_fused.py); in
        # the interpreter they would make this crowd take minutes.
        for module in engine.vae.modules():
            if hasattr(module, "fused"):
                module.fused = False
    return engine


def _crowd(engine, voices=(None, None, None)):
    for (rid, text, n, seed), voice in zip(
        (("a", "A longer request that keeps going.", 5, 1), ("b", "Short.", 3, 2), ("c", "Hi.", 4, 3)),
        voices,
        strict=True,
    ):
        params = GenerationParams(min_steps=n, max_steps=n, seed=seed, inference_timesteps=STEPS)
        engine.add_request(rid, text, params=params, lora=voice)
    return _run(engine)[0]


@pytest.mark.parametrize("name", ["tiny_v1", "tiny_v2"])
def test_fused_engine_equals_the_op_by_op_engine(request, name):
    path = request.getfixturevalue(name)
    plain = _crowd(_engine(path, fused_kernels=False))
    fast_engine = _engine(path, fused_kernels=True)
    assert fast_engine.runner.model.feat_decoder.fused
    fast = _crowd(fast_engine)
    assert fast_engine.runner.graph_steps >= 3
    for rid in plain:
        np.testing.assert_allclose(fast[rid], plain[rid], atol=ATOL, rtol=0)


def test_fused_engine_with_mixed_lora_voices_equals_the_op_by_op_engine(tiny_v2, tmp_path):
    """Rows of different adapters (and none) in one graphed step: the segmented LoRA kernels."""
    paths = {name: write_lora(tiny_v2, tmp_path / name, rank=4 + 4 * i, seed=i) for i, name in enumerate("xy")}
    voices = ("x", None, "y")
    runs = {}
    for fused_kernels in (False, True):
        engine = _engine(tiny_v2, fused_kernels, max_loras=2)
        for name, path in paths.items():
            engine.register_voice(name, path)
        runs[fused_kernels] = _crowd(engine, voices)
    assert all(layer.kernels for layer in engine.adapters.slots.layers.values())
    for rid in runs[False]:
        np.testing.assert_allclose(runs[True][rid], runs[False][rid], atol=ATOL, rtol=0)


@pytest.mark.parametrize(("vae_dtype", "kernels"), [("float32", "passes"), ("bfloat16", "gemm")])
def test_the_default_vae_units_reach_every_residual_unit_by_the_vae_dtype(tiny_v1, vae_dtype, kernels):
    ckpt = load_checkpoint(tiny_v1, device=DEVICE, dtype="float32")
    Engine(ckpt, EngineConfig(max_num_seqs=2, max_model_len=64, fused_kernels=True, vae_dtype=vae_dtype, warm_up=False))
    units = [m for m in ckpt.vae.decoder.modules() if isinstance(m, ResidualUnit)]  # the encoder has no streamed units
    assert units and {unit.kernels for unit in units} == {kernels}
