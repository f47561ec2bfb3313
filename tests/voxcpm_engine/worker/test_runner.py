"""Tests of voxcpm_engine.worker.runner: packed batched steps of the model over the paged caches (fp32, CPU).

A request's numbers must not depend on what it is batched with, on how its prompt is chunked or on
whether its positions are re-fed after a preemption; fp32 keeps the differences at rounding level
(``ATOL``), so any indexing bug shows up as an O(0.1) difference.
"""

from __future__ import annotations

import pytest
import torch

from voxcpm_engine.frontend import build_prefill
from voxcpm_engine.io.checkpoint import LoadedCheckpoint as Checkpoint
from voxcpm_engine.sched.block_manager import BlockManager
from voxcpm_engine.sched.request import Request, SamplingParams
from voxcpm_engine.sched.scheduler import ScheduledRow
from voxcpm_engine.worker.runner import ModelRunner, SampledBatch

ATOL = 1e-4
BLOCK = 4


def _runner(ckpt: Checkpoint) -> tuple[ModelRunner, BlockManager]:
    runner = ModelRunner(ckpt.model, num_blocks=32, block_size=BLOCK, attention_backend="torch")
    return runner, BlockManager(32, BLOCK, enable_prefix_caching=False)


def _request(ckpt: Checkpoint, rid: str, ids: list[int], seed: int, blocks: BlockManager, **params) -> Request:
    prefill = build_prefill(ckpt.config, ids)
    params = {"inference_timesteps": 4, **params}
    req = Request(rid, prefill, SamplingParams(**params), torch.Generator().manual_seed(seed), arrival=0)
    blocks.allocate(req, req.num_positions + 8)
    return req


def _step(runner: ModelRunner, rows: list[ScheduledRow]) -> SampledBatch | None:
    """One runner step plus the engine's bookkeeping (computed positions, new patches)."""
    out = runner.step(rows)
    for row in rows:
        row.request.num_computed += row.count
    if out is not None:
        for i, req in enumerate(out.requests):
            req.patches.append(out.patches[i])
    return out


def _pending(req: Request) -> ScheduledRow:
    return ScheduledRow(req, req.num_computed, req.num_pending)


@pytest.fixture(scope="module")
def ckpt(ckpt_v1: Checkpoint) -> Checkpoint:
    """The tiny V1 checkpoint in fp32."""
    return ckpt_v1


def test_a_request_in_a_packed_batch_equals_the_request_alone(ckpt):
    runner, blocks = _runner(ckpt)
    alone = _request(ckpt, "x", [201, 202, 203, 204, 205], 5, blocks)
    crowd_runner, crowd_blocks = _runner(ckpt)
    other = _request(ckpt, "o", list(range(300, 311)), 1, crowd_blocks, cfg_value=1.5, temperature=0.7)
    twin = _request(ckpt, "x", [201, 202, 203, 204, 205], 5, crowd_blocks)
    for _ in range(3):  # the prompt step, then two decode steps
        solo = _step(runner, [_pending(alone)])
        both = _step(crowd_runner, [_pending(other), _pending(twin)])
        assert [r.request_id for r in solo.requests] == ["x"] and [r.request_id for r in both.requests] == ["o", "x"]
        assert both.patches.shape == (2, ckpt.config.patch_size, ckpt.config.feat_dim)
        torch.testing.assert_close(both.patches[1], solo.patches[0], atol=ATOL, rtol=0)
        torch.testing.assert_close(twin.lm_hidden, alone.lm_hidden, atol=ATOL, rtol=0)
        torch.testing.assert_close(twin.residual_hidden, alone.residual_hidden, atol=ATOL, rtol=0)
        assert (both.patches[0] - both.patches[1]).abs().max() > 0.1  # the rows really differ
    assert len(alone.patches) == len(twin.patches) == 3


def test_a_chunked_prompt_equals_the_whole_prompt(ckpt):
    runner, blocks = _runner(ckpt)
    ids = list(range(400, 411))  # 12 positions
    whole = _request(ckpt, "w", ids, 3, blocks)
    chunked = _request(ckpt, "c", ids, 3, blocks)
    assert _step(runner, [ScheduledRow(chunked, 0, 5)]) is None  # nobody caught up: nothing sampled
    assert chunked.lm_hidden is None and chunked.num_pending == 7
    first = _step(runner, [ScheduledRow(chunked, 5, 7), ScheduledRow(whole, 0, 12)])
    assert [r.request_id for r in first.requests] == ["c", "w"]
    torch.testing.assert_close(first.patches[0], first.patches[1], atol=ATOL, rtol=0)
    torch.testing.assert_close(chunked.lm_hidden, whole.lm_hidden, atol=ATOL, rtol=0)


def test_refeeding_generated_patches_after_a_preemption_continues_the_same_sequence(ckpt):
    runner, blocks = _runner(ckpt)
    ids = [210, 211, 212, 213]
    req = _request(ckpt, "r", ids, 7, blocks)
    _step(runner, [_pending(req)])
    assert req.embed is not None  # the new patch was encoded when it was sampled
    second = _step(runner, [_pending(req)])  # a decode step feeds that patch
    # The same request preempted after its first patch: recomputed from scratch, the patch re-fed.
    other_runner, other_blocks = _runner(ckpt)
    again = _request(ckpt, "r", ids, 7, other_blocks)
    again.patches.append(req.patches[0].clone())
    assert again.num_pending == len(ids) + 2 and again.embed is None  # the patch is encoded again
    other_runner.noise([again])  # its noise stream past the first patch, as in the original
    recomputed = _step(other_runner, [_pending(again)])
    torch.testing.assert_close(again.lm_hidden, req.lm_hidden, atol=ATOL, rtol=0)
    torch.testing.assert_close(again.residual_hidden, req.residual_hidden, atol=ATOL, rtol=0)
    torch.testing.assert_close(recomputed.patches[0], second.patches[0], atol=ATOL, rtol=0)


def test_rows_with_different_step_counts_sample_in_groups_and_select(ckpt):
    runner, blocks = _runner(ckpt)
    a = _request(ckpt, "a", [220, 221], 1, blocks, inference_timesteps=4)
    b = _request(ckpt, "b", [230, 231, 232], 2, blocks, inference_timesteps=2)
    c = _request(ckpt, "c", [240], 3, blocks, inference_timesteps=4)
    out = runner.step([_pending(a), _pending(b), _pending(c)])
    assert [r.request_id for r in out.requests] == ["b", "a", "c"]  # grouped by step count, ascending
    assert len(out) == 3 and out.patches.shape[0] == 3 and out.ready is None
    assert out.stops.dtype == torch.bool and out.stops.device.type == "cpu"
    stops = out.stop_list()
    assert len(stops) == 3 and all(isinstance(s, bool) for s in stops)
    picked = out.select([2, 0])
    assert [r.request_id for r in picked.requests] == ["c", "b"]
    assert torch.equal(picked.patches, out.patches[[2, 0]]) and picked.stop_list() == [stops[2], stops[0]]
    assert runner.graph_steps == runner.graph_samples == runner.lm_graph_steps == 0  # no graphs on the CPU


def test_noise_follows_each_requests_generator_and_temperature(ckpt):
    runner, blocks = _runner(ckpt)
    hot = _request(ckpt, "hot", [250], 9, blocks)
    cool = _request(ckpt, "cool", [250], 9, blocks, temperature=0.5)
    first = runner.noise([hot, cool])
    assert first.shape == (2, ckpt.config.feat_dim, ckpt.config.patch_size)
    torch.testing.assert_close(first[1], 0.5 * first[0])  # same seed, half the scale
    second = runner.noise([hot])
    assert not torch.equal(second[0], first[0])  # the stream moves on
    fresh = _request(ckpt, "fresh", [250], 9, blocks)
    assert torch.equal(runner.noise([fresh])[0], first[0])  # a function of the seed alone


def test_cond_patch_is_the_prompts_last_position_then_the_newest_patch(ckpt):
    runner, blocks = _runner(ckpt)
    req = _request(ckpt, "r", [260, 261], 0, blocks)
    assert torch.equal(runner.cond_patch(req), req.prefill.patches[-1].to(runner.model.dtype))
    newest = torch.randn(ckpt.config.patch_size, ckpt.config.feat_dim)
    req.patches += [torch.zeros_like(newest), newest]
    assert runner.cond_patch(req) is newest
