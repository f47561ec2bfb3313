"""Packed-LM CUDA graphs on the GPU (marked ``gpu``): replay equals the op-by-op LMs.

fp32 tiny models, the tolerance of ``test_engine_cuda.py``: the graphed and eager steps differ
in the padded row count the GEMMs see and the decode graphs' split-KV order.
"""

import numpy as np
import pytest
import torch

from tests.voxcpm_engine.test_engine_cuda import GPU_ATOL
from tests.voxcpm_engine.worker.test_packed_lm_graphs import _staggered
from voxcpm_engine.config.engine_config import EngineConfig
from voxcpm_engine.engine import Engine
from voxcpm_engine.io.checkpoint import load_checkpoint

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CONFIG = dict(max_num_seqs=8, max_num_batched_tokens=64, max_model_len=256, vae_tf32=False)  # exact VAE


@pytest.mark.parametrize("name", ["tiny_v1", "tiny_v2"])
def test_packed_lm_graphs_equal_eager_lms(request, name):
    ckpt = load_checkpoint(request.getfixturevalue(name), device="cuda", dtype="float32")
    eager = _staggered(Engine(ckpt, EngineConfig(**CONFIG, packed_lm_graphs=False)))
    engine = Engine(ckpt, EngineConfig(**CONFIG))
    graphs = engine.runner.lm_graphs
    assert graphs is not None and set(graphs.graphs) == set(graphs.shapes())
    graphed = _staggered(engine)
    assert engine.runner.lm_graph_steps >= 3
    for rid in ("a", "x", "b"):
        np.testing.assert_allclose(graphed[rid], eager[rid], atol=GPU_ATOL, rtol=0)
    engine.check_invariants()
