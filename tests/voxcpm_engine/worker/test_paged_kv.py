"""Tests of voxcpm_engine.worker.paged_kv: the paged cache, block sizing, BatchLayout and PagedAttention."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from voxcpm_engine.config.model_config import ModelConfig
from voxcpm_engine.config.presets import preset_config
from voxcpm_engine.worker.paged_kv import BatchLayout, PagedAttention, PagedKVCache, bytes_per_block, gpu_kv_blocks

CFG = ModelConfig.from_dict(preset_config("tiny-v2"))
CPU = torch.device("cpu")


def test_cache_shape_and_bytes_match_bytes_per_block():
    base, residual = CFG.base_lm_config(), CFG.residual_lm_config()
    assert (base.num_hidden_layers, base.num_key_value_heads, base.head_dim) == (2, 2, 64)
    cache = PagedKVCache(base, num_blocks=5, block_size=4, dtype=torch.bfloat16, device=CPU)
    assert cache.k.shape == cache.v.shape == (2, 5, 4, 2, 64)
    assert not cache.k.any() and not cache.v.any()  # zero-initialised
    assert cache.nbytes == 2 * (2 * 5 * 4 * 2 * 64) * 2
    assert cache.nbytes == 5 * bytes_per_block([base], 4, torch.bfloat16)
    # K and V, every layer of every stack: base (2 layers) + residual (2 layers), fp32 = 4 bytes
    assert bytes_per_block([base, residual], 16, torch.float32) == 2 * (2 + 2) * 16 * 2 * 64 * 4
    assert bytes_per_block([], 16, torch.float32) == 0


def test_batch_layout_of_a_prefill_chunk_and_a_decode():
    # Sequence 0: 6 new positions from 3 (positions 3..8) in blocks [7, 2, 5]; sequence 1: one decode at 4.
    layout = BatchLayout.build([(3, 6, [7, 2, 5]), (4, 1, [1, 0])], block_size=4, device=CPU)
    assert layout.positions.tolist() == [3, 4, 5, 6, 7, 8, 4]
    # position p lives at table[p // 4] * 4 + p % 4
    assert layout.slot_mapping.tolist() == [7 * 4 + 3, 2 * 4 + 0, 2 * 4 + 1, 2 * 4 + 2, 2 * 4 + 3, 5 * 4 + 0, 0 * 4 + 0]
    assert layout.cu_seqlens_q.tolist() == [0, 6, 7] and layout.cu_seqlens_q.dtype == torch.int32
    assert layout.seq_lens.tolist() == [9, 5] and layout.seq_lens.dtype == torch.int32
    assert layout.block_tables.tolist() == [[7, 2, 5], [1, 0, -1]] and layout.block_tables.dtype == torch.int32
    assert (layout.max_seqlen_q, layout.max_seqlen_k) == (6, 9)
    assert layout.positions.dtype == layout.slot_mapping.dtype == torch.long


def _dense(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Causal attention of one whole sequence: q ``[L, H, d]``, k/v ``[L, KV, d]`` → ``[L, H, d]``."""
    rep = q.shape[1] // k.shape[1]
    k, v = (t.repeat_interleave(rep, dim=1) for t in (k, v))
    scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(q.shape[-1])
    causal = torch.ones(q.shape[0], q.shape[0], dtype=torch.bool).tril()
    weights = F.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
    return torch.einsum("hqk,khd->qhd", weights, v)


def test_paged_attention_over_chunked_steps_equals_dense_causal_attention():
    lm = CFG.base_lm_config()
    heads, kv_heads, d = lm.num_attention_heads, lm.num_key_value_heads, lm.head_dim
    cache = PagedKVCache(lm, num_blocks=8, block_size=4, dtype=torch.float32, device=CPU)
    gen = torch.Generator().manual_seed(0)
    lens, tables = (9, 4), ([6, 1, 3], [4, 0])  # shuffled physical blocks
    seqs = [(torch.randn(n, heads, d, generator=gen), *torch.randn(2, n, kv_heads, d, generator=gen)) for n in lens]
    expected = [_dense(q, k, v) for q, k, v in seqs]
    # Step 1: 5 prompt positions of sequence 0, 3 of sequence 1; step 2: the other 4, and a decode.
    steps = [[(0, 0, 5), (1, 0, 3)], [(0, 5, 4), (1, 3, 1)]]
    for step in steps:
        layout = BatchLayout.build([(start, n, tables[s]) for s, start, n in step], 4, CPU)
        q, k, v = (torch.cat([seqs[s][i][start : start + n] for s, start, n in step]) for i in range(3))
        # The stacks hand over [N, heads, 1, d]: each packed token is a row of its own.
        out = PagedAttention(cache, layout, backend="torch")(1, q[:, :, None], k[:, :, None], v[:, :, None])
        assert out.shape == (q.shape[0], heads, 1, d)
        want = torch.cat([expected[s][start : start + n] for s, start, n in step])
        torch.testing.assert_close(out[:, :, 0], want, rtol=1e-5, atol=1e-5)
    assert not cache.k[0].any()  # only the layer asked for was written
    for s, table in enumerate(tables):  # every position's K landed in its slot
        stored = cache.k[1][table].reshape(-1, kv_heads, d)[: lens[s]]
        assert torch.equal(stored, seqs[s][1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_kv_blocks_fits_the_budget_and_refuses_when_none_fits():
    device = torch.device("cuda")
    cfgs = [CFG.base_lm_config(), CFG.residual_lm_config()]
    per_block = bytes_per_block(cfgs, 16, torch.bfloat16)
    free, total = torch.cuda.mem_get_info(device)
    blocks = gpu_kv_blocks(cfgs, 16, torch.bfloat16, device, 0.9, workspace_bytes=0, cap=10**9)
    budget = int(total * 0.9) - (total - free)
    assert abs(blocks - budget // per_block) <= 2  # other processes may move the free figure a little
    assert gpu_kv_blocks(cfgs, 16, torch.bfloat16, device, 0.9, workspace_bytes=0, cap=7) == 7
    with pytest.raises(ValueError, match="no room for the KV cache"):
        gpu_kv_blocks(cfgs, 16, torch.bfloat16, device, 0.9, workspace_bytes=total, cap=10)
