"""CUDA graphs of the decode step on the GPU (marked ``gpu``): replay equals the eager engine.

fp32 tiny models (tolerance of ``test_engine_cuda.py``); the graphed and eager steps differ only in
the attention's split-KV reduction order. bf16 crowds are checked for shape and finiteness.
"""

import numpy as np
import pytest
import torch

from tests.voxcpm_engine.test_engine import _run
from tests.voxcpm_engine.test_engine_cuda import GPU_ATOL
from tests.voxcpm_engine.worker.test_decode_graphs import _crowd, _params
from voxcpm_engine.config.engine_config import EngineConfig
from voxcpm_engine.engine import Engine
from voxcpm_engine.io.checkpoint import load_checkpoint
from voxcpm_engine.tools.synthetic_lora import write_lora

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CONFIG = dict(max_num_seqs=8, max_num_batched_tokens=64, max_model_len=256, vae_tf32=False)  # exact VAE


def _engine(ckpt, **kw):
    return Engine(ckpt, EngineConfig(**{**CONFIG, **kw}))


@pytest.mark.parametrize("name", ["tiny_v1", "tiny_v2"])
def test_graph_replay_equals_eager(request, name):
    ckpt = load_checkpoint(request.getfixturevalue(name), device="cuda", dtype="float32")
    eager = _crowd(_engine(ckpt, enforce_eager=True))
    graphed_engine = _engine(ckpt)
    assert graphed_engine.runner.graphs is not None and graphed_engine.runner.graphs.graphs
    graphed = _crowd(graphed_engine)
    assert graphed_engine.runner.graph_steps >= 6
    for rid in ("a", "x", "b"):
        np.testing.assert_allclose(graphed[rid], eager[rid], atol=GPU_ATOL, rtol=0)


def test_graph_replay_with_mixed_lora_rows_equals_eager(tiny_v2, tmp_path):
    paths = {n: write_lora(tiny_v2, tmp_path / n, rank=4, seed=i) for i, n in enumerate(("v0", "v1"))}
    outs = []
    for eager in (True, False):
        engine = _engine(load_checkpoint(tiny_v2, device="cuda", dtype="float32"), max_loras=2, enforce_eager=eager)
        for n, p in paths.items():
            engine.register_voice(n, p)
        outs.append(_crowd(engine, lora=("v0", None, "v1")))
        assert engine.runner.graph_steps >= (0 if eager else 6)
    for rid in ("a", "x", "b"):
        np.testing.assert_allclose(outs[1][rid], outs[0][rid], atol=GPU_ATOL, rtol=0)


def test_bf16_crowd_through_graphs_with_arrivals_and_aborts(tiny_v2):
    ckpt = load_checkpoint(tiny_v2, device="cuda")
    engine = _engine(ckpt, max_num_seqs=32, max_num_batched_tokens=256)
    for i in range(24):
        engine.add_request(f"r{i}", f"Request {i}, " * (1 + i % 4), params=_params(6 + i % 5, i))
    chunks: dict[str, list[np.ndarray]] = {}
    step = 0
    while engine.has_unfinished():
        for out in engine.step():
            if out.audio is not None:
                chunks.setdefault(out.request_id, []).append(out.audio)
        step += 1
        if step == 3:  # arrivals and aborts between graph replays
            engine.abort("r0")
            engine.add_request("late", "A late arrival.", params=_params(5, 99))
        engine.check_invariants()
    assert engine.runner.graph_steps > 0
    assert engine.blocks.num_free == engine.blocks.num_blocks
    for i in range(1, 24):
        assert sum(len(c) for c in chunks[f"r{i}"]) == (6 + i % 5) * ckpt.config.samples_per_patch
    assert all(np.isfinite(np.concatenate(c)).all() for c in chunks.values())
    _run(engine)


@pytest.mark.parametrize("name", ["tiny_v1", "tiny_v2"])
def test_fused_kernels_equal_the_op_by_op_engine(request, name):
    path = request.getfixturevalue(name)
    plain = _crowd(_engine(load_checkpoint(path, device="cuda", dtype="float32"), fused_kernels=False))
    fused_engine = _engine(load_checkpoint(path, device="cuda", dtype="float32"))
    assert fused_engine.runner.model.feat_decoder.fused  # the default on CUDA
    fused = _crowd(fused_engine)
    assert fused_engine.runner.graph_steps >= 6
    for rid in ("a", "x", "b"):
        np.testing.assert_allclose(fused[rid], plain[rid], atol=GPU_ATOL, rtol=0)
