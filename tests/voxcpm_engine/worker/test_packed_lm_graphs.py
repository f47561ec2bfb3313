"""The static-buffer packed LM of ``voxcpm_engine.worker.packed_lm_graphs`` (run eagerly on the CPU).

On CUDA the same forward is captured and replayed (``test_lm_graphs_cuda.py``); here it runs
without capture, so the padding sequences, the buffer filling and the fallback for LoRA rows are
checked in CI against the op-by-op LMs (fp32, the tolerance of ``test_engine.py``).
"""

import numpy as np
import pytest

from tests.voxcpm_engine.test_engine import BATCH_ATOL, _run
from voxcpm_engine.config.engine_config import EngineConfig
from voxcpm_engine.engine import Engine
from voxcpm_engine.io.checkpoint import load_checkpoint
from voxcpm_engine.tools.synthetic_lora import write_lora
from voxcpm_engine.types import GenerationParams
from voxcpm_engine.worker.packed_lm_graphs import PackedLMGraphs, seq_buckets, token_buckets

CONFIG = dict(max_num_seqs=8, max_num_batched_tokens=64, max_model_len=256)


def _params(n, seed, **kw):
    return GenerationParams(min_steps=n, max_steps=n, seed=seed, **kw)


def _engine(ckpt, static, **kw):
    engine = Engine(ckpt, EngineConfig(**{**CONFIG, **kw}))
    if static:
        cfg = engine.config
        engine.runner.lm_graphs = PackedLMGraphs(
            engine.runner, cfg.max_num_batched_tokens, cfg.max_num_seqs, cfg.max_model_len, capture=False
        )
    return engine


def _staggered(engine, lora=(None, None, None)):
    """Prompts alone, beside running streams, and split into chunks by the 64-token budget."""
    engine.add_request("a", "A first request that starts alone and keeps going.", params=_params(8, 1), lora=lora[0])
    engine.step()
    engine.add_request("x", "The request under test joins a running stream.", params=_params(6, 5), lora=lora[1])
    engine.add_request("b", "Short. " * 12, params=_params(3, 2, cfg_value=1.5), lora=lora[2])
    return _run(engine)[0]


def test_buckets():
    assert token_buckets(16) == [16]
    assert token_buckets(64) == [16, 32, 64]
    assert token_buckets(1000) == [16, 32, 64, 128, 256, 512, 1000]
    assert seq_buckets(1) == [1]
    assert seq_buckets(8) == [1, 2, 4, 8]
    assert seq_buckets(100) == [1, 2, 4, 8, 16, 32, 64, 100]


def test_shapes_pad_tokens_and_sequences(tiny_v1):
    engine = _engine(load_checkpoint(tiny_v1, dtype="float32"), static=True)
    graphs = engine.runner.lm_graphs
    assert (64, 8) in graphs.shapes() and (16, 16) not in graphs.shapes()
    assert graphs.shapes()[0] == (64, 8)  # largest first: the shared pool is sized by the first capture


@pytest.mark.parametrize("name", ["tiny_v1", "tiny_v2"])
def test_static_packed_lm_equals_eager(request, name):
    ckpt = load_checkpoint(request.getfixturevalue(name), dtype="float32")
    eager = _staggered(_engine(ckpt, static=False))
    static_engine = _engine(ckpt, static=True)
    static = _staggered(static_engine)
    # Every non-decode step (the lone prompt, the mixed steps, the chunked prompt) went the static way.
    assert static_engine.runner.lm_graph_steps >= 3
    for rid in ("a", "x", "b"):
        assert static[rid].shape == eager[rid].shape
        np.testing.assert_allclose(static[rid], eager[rid], atol=BATCH_ATOL, rtol=0)
    static_engine.check_invariants()


def test_lora_rows_run_eager_and_match(tiny_v2, tmp_path):
    path = write_lora(tiny_v2, tmp_path / "v0", rank=4, seed=0)
    outs, steps = [], []
    for static in (False, True):  # LoRA layers change the model in place: one checkpoint per engine
        engine = _engine(load_checkpoint(tiny_v2, dtype="float32"), static=static, max_loras=1)
        engine.register_voice("v0", path)
        outs.append(_staggered(engine, lora=(None, "v0", None)))
        steps.append(engine.runner.lm_graph_steps)
    assert steps[0] == 0 and steps[1] >= 1  # the lone first prompt had no adapter; steps with "x" ran eager
    for rid in ("a", "x", "b"):
        np.testing.assert_allclose(outs[1][rid], outs[0][rid], atol=BATCH_ATOL, rtol=0)


def test_padding_sequences_through_the_triton_attention_kernel(tiny_v1):
    """Empty and padding sequences as the Triton kernel sees them (interpreted on the CPU)."""
    ckpt = load_checkpoint(tiny_v1, dtype="float32")
    outs = []
    for static in (False, True):
        engine = Engine(ckpt, EngineConfig(**CONFIG), attention_backend="triton")
        if static:
            cfg = engine.config
            engine.runner.lm_graphs = PackedLMGraphs(
                engine.runner, cfg.max_num_batched_tokens, cfg.max_num_seqs, cfg.max_model_len, capture=False
            )
        outs.append(_staggered(engine))
    for rid in ("a", "x", "b"):
        np.testing.assert_allclose(outs[1][rid], outs[0][rid], atol=BATCH_ATOL, rtol=0)
