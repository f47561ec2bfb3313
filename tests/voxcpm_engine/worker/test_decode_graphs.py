"""The static-buffer decode step of ``voxcpm_engine.worker.decode_graphs`` (run eagerly on the CPU).

On CUDA the same forward is captured and replayed (``test_cuda_graphs_cuda.py``); here it runs
without capture so padding rows, buffer filling and per-row LoRA routing are checked in CI. fp32
models and the tolerance of ``test_engine.py``.
"""

import numpy as np
import pytest

from tests.voxcpm_engine.test_engine import BATCH_ATOL, _run
from voxcpm_engine.config.engine_config import EngineConfig
from voxcpm_engine.engine import Engine
from voxcpm_engine.io.checkpoint import load_checkpoint
from voxcpm_engine.tools.synthetic_lora import write_lora
from voxcpm_engine.types import GenerationParams
from voxcpm_engine.worker.decode_graphs import DecodeGraphs, batch_buckets

CONFIG = dict(max_num_seqs=8, max_num_batched_tokens=64, max_model_len=256)


def _params(n, seed, **kw):
    return GenerationParams(min_steps=n, max_steps=n, seed=seed, **kw)


def _engine(ckpt, static, timesteps=(10,), **kw):
    engine = Engine(ckpt, EngineConfig(**{**CONFIG, **kw}))
    if static:
        engine.runner.graphs = DecodeGraphs(
            engine.runner, engine.config.max_num_seqs, engine.config.max_model_len, timesteps, capture=False
        )
    return engine


def _crowd(engine, lora=(None, None, None)):
    # Different lengths: the decode batch shrinks 3 -> 2 -> 1, padded to buckets 4, 2, 1.
    engine.add_request("a", "Another, longer request that keeps going.", params=_params(9, 1), lora=lora[0])
    engine.add_request("x", "The request under test.", params=_params(6, 5), lora=lora[1])
    engine.add_request("b", "Short.", params=_params(3, 2, cfg_value=1.5, temperature=0.7), lora=lora[2])
    return _run(engine)[0]


def test_batch_buckets():
    assert batch_buckets(1) == [1]
    assert batch_buckets(8) == [1, 2, 4, 8]
    assert batch_buckets(50) == [1, 2, 4, 8, 16, 32, 48, 50]
    assert batch_buckets(64) == [1, 2, 4, 8, 16, 32, 48, 64]


@pytest.mark.parametrize("name", ["tiny_v1", "tiny_v2"])
def test_static_decode_equals_eager_with_padding_rows(request, name):
    ckpt = load_checkpoint(request.getfixturevalue(name), dtype="float32")
    eager = _crowd(_engine(ckpt, static=False))
    static_engine = _engine(ckpt, static=True)
    static = _crowd(static_engine)
    assert static_engine.runner.graph_steps >= 6  # most steps after the prompts went the static way
    assert static_engine.runner.graph_samples >= 1  # prompt steps sampled on the static sampler path
    for rid in ("a", "x", "b"):
        np.testing.assert_allclose(static[rid], eager[rid], atol=BATCH_ATOL, rtol=0)


def test_static_decode_with_mixed_lora_rows_equals_eager(tiny_v2, tmp_path):
    paths = {n: write_lora(tiny_v2, tmp_path / n, rank=4, seed=i) for i, n in enumerate(("v0", "v1"))}
    outs = []
    for static in (False, True):  # LoRA layers change the model in place: one checkpoint per engine
        engine = _engine(load_checkpoint(tiny_v2, dtype="float32"), static=static, max_loras=2)
        for n, p in paths.items():
            engine.register_voice(n, p)
        outs.append(_crowd(engine, lora=("v0", None, "v1")))
        assert engine.runner.graph_steps >= (6 if static else 0)
        engine.check_invariants()
    for rid in ("a", "x", "b"):
        np.testing.assert_allclose(outs[1][rid], outs[0][rid], atol=BATCH_ATOL, rtol=0)


def test_other_timesteps_and_prefill_steps_run_eager(tiny_v1):
    ckpt = load_checkpoint(tiny_v1, dtype="float32")
    engine = _engine(ckpt, static=True, timesteps=(4,))
    engine.add_request("x", "Steps the graphs do not cover.", params=_params(4, 1, inference_timesteps=6))
    _run(engine)
    assert engine.runner.graph_steps == engine.runner.graph_samples == 0
    engine.add_request("y", "Steps they do.", params=_params(4, 1, inference_timesteps=4))
    _run(engine)
    # The first step is the prompt: eager LMs, then the static sampler; then three static decode steps.
    assert (engine.runner.graph_steps, engine.runner.graph_samples) == (3, 1)
    assert engine.stats()["graph_steps"] == 3
