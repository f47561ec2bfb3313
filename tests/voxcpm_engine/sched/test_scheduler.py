"""Tests of voxcpm_engine.sched.scheduler: FIFO admission, decode rows first, token budget, preemption."""

from __future__ import annotations

import pytest
import torch

from voxcpm_engine.config.engine_config import EngineConfig
from voxcpm_engine.config.model_config import ModelConfig
from voxcpm_engine.config.presets import preset_config
from voxcpm_engine.frontend import build_prefill
from voxcpm_engine.io.checkpoint import load_checkpoint
from voxcpm_engine.io.lora_files import LoRAConfig, adapter_from_state_dict, lora_targets
from voxcpm_engine.lora.layers import disable_lora, enable_lora
from voxcpm_engine.lora.registry import AdapterRegistry
from voxcpm_engine.sched.block_manager import BlockManager
from voxcpm_engine.sched.request import Request, RequestStatus, SamplingParams
from voxcpm_engine.sched.scheduler import ScheduledRow, Scheduler, SchedulerOutput
from voxcpm_engine.tools.synthetic_lora import synthetic_lora_tensors

CFG = ModelConfig.from_dict(preset_config("tiny-v1"))  # prompt = text ids + [101]


def _request(rid: str, prompt_len: int, arrival: int, lora: str | None = None) -> Request:
    prefill = build_prefill(CFG, list(range(200, 200 + prompt_len - 1)))
    assert len(prefill) == prompt_len
    return Request(rid, prefill, SamplingParams(), torch.Generator(), arrival=arrival, lora_name=lora)


def _scheduler(
    num_blocks: int = 64, block_size: int = 4, adapters: AdapterRegistry | None = None, **limits: int
) -> Scheduler:
    config = EngineConfig(**{"max_num_seqs": 4, "max_num_batched_tokens": 64, "block_size": block_size, **limits})
    return Scheduler(config, BlockManager(num_blocks, block_size, enable_prefix_caching=False), adapters)


def _advance(out: SchedulerOutput) -> None:
    """What the engine does after a step: the rows' positions are computed; a row that caught up gets a patch."""
    for row in out.rows:
        sample = row.sample  # read before num_computed moves
        row.request.num_computed += row.count
        if sample:
            row.request.patches.append(torch.zeros(CFG.patch_size, CFG.feat_dim))


def _rows(out: SchedulerOutput) -> list[tuple[str, int, int, bool]]:
    return [(r.request.request_id, r.start, r.count, r.sample) for r in out.rows]


def test_scheduled_row_samples_only_when_it_reaches_the_newest_position():
    req = _request("a", 10, 0)
    assert ScheduledRow(req, 0, 10).sample
    assert not ScheduledRow(req, 0, 9).sample
    assert ScheduledRow(req, 4, 6).sample
    req.patches.append(torch.zeros(CFG.patch_size, CFG.feat_dim))  # 11 positions now
    assert not ScheduledRow(req, 4, 6).sample and ScheduledRow(req, 10, 1).sample


def test_admission_is_fifo_up_to_max_num_seqs():
    sched = _scheduler(max_num_seqs=2)
    for i, n in enumerate((5, 3, 4)):
        sched.add(_request(f"r{i}", n, i))
    assert sched.has_work()
    out = sched.schedule()
    assert _rows(out) == [("r0", 0, 5, True), ("r1", 0, 3, True)] and out.preempted == []
    assert [r.request_id for r in sched.running] == ["r0", "r1"]
    assert [r.request_id for r in sched.waiting] == ["r2"]
    assert all(r.status == RequestStatus.RUNNING for r in sched.running)
    assert sched.waiting[0].status == RequestStatus.WAITING
    sched.blocks.check(sched.running)


def test_decode_rows_come_before_prefill_chunks_whatever_the_arrival():
    sched = _scheduler(max_num_batched_tokens=16)
    old = _request("old", 30, arrival=0)
    sched.add(old)
    _advance(sched.schedule())  # old: 16 of 30
    young = _request("young", 3, arrival=1)
    sched.add(young)
    out = sched.schedule()  # old: the remaining 14; young: admitted with the 2 positions left
    assert _rows(out) == [("old", 16, 14, True), ("young", 0, 2, False)]
    _advance(out)
    # old now decodes (1 pending); young, which arrived later, still prefills its last position:
    out = sched.schedule()
    assert _rows(out) == [("old", 30, 1, True), ("young", 2, 1, True)]
    _advance(out)
    sched.blocks.free(old)  # as after a preemption: old re-feeds its whole sequence
    old.reset_for_recompute()
    out = sched.schedule()
    assert [r.request.request_id for r in out.rows] == ["young", "old"]  # the decode row first
    assert _rows(out)[0] == ("young", 3, 1, True)
    assert _rows(out)[1] == ("old", 0, 15, False)  # 32 pending (30 + 2 patches), cut to the budget


def test_token_budget_caps_a_step_and_prompts_are_fed_in_chunks():
    sched = _scheduler(max_num_batched_tokens=8, max_num_seqs=2)
    req = _request("long", 21, 0)
    sched.add(req)
    chunks = []
    while not req.patches:
        out = sched.schedule()
        assert sum(r.count for r in out.rows) <= 8
        chunks.append(_rows(out))
        _advance(out)
    assert chunks == [[("long", 0, 8, False)], [("long", 8, 8, False)], [("long", 16, 5, True)]]
    assert len(req.block_table) == sched.config.blocks_for(21)  # grown chunk by chunk, never beyond need


def test_a_full_budget_keeps_the_queue_waiting():
    sched = _scheduler(max_num_batched_tokens=8, max_num_seqs=2)
    sched.add(_request("a", 8, 0))
    sched.add(_request("b", 3, 1))
    out = sched.schedule()
    assert _rows(out) == [("a", 0, 8, True)]  # no token left for b
    assert [r.request_id for r in sched.waiting] == ["b"]
    _advance(out)
    assert _rows(sched.schedule()) == [("a", 8, 1, True), ("b", 0, 3, True)]


def test_the_head_of_the_queue_blocks_those_behind_it():
    sched = _scheduler(num_blocks=6, block_size=4)
    sched.add(_request("a", 12, 0))  # 3 blocks
    sched.add(_request("big", 16, 1))  # 4 blocks: do not fit beside a
    sched.add(_request("small", 2, 2))  # 1 block would fit, but must not overtake
    out = sched.schedule()
    assert [r.request.request_id for r in out.rows] == ["a"]
    assert [r.request_id for r in sched.waiting] == ["big", "small"]
    sched.finish(sched.running[0], RequestStatus.FINISHED_LENGTH)
    assert [r.request.request_id for r in sched.schedule().rows] == ["big", "small"]


def test_running_out_of_blocks_preempts_the_newest_which_returns_to_the_head_of_the_queue():
    sched = _scheduler(num_blocks=4, block_size=4, max_num_seqs=3)
    a, b, c = _request("a", 4, 0), _request("b", 4, 1), _request("c", 4, 2)
    for req in (a, b, c):
        sched.add(req)
    d = _request("d", 3, 3)
    sched.add(d)
    out = sched.schedule()  # a, b, c take 3 of the 4 blocks; d waits for a seat
    assert [r.request.request_id for r in out.rows] == ["a", "b", "c"]
    _advance(out)  # each made a patch: 5 positions, a second block each
    out = sched.schedule()
    # a takes the last free block; b then has none, and c (the newest) is preempted for it.
    assert [r.request.request_id for r in out.rows] == ["a", "b"]
    assert out.preempted == [c]
    assert [r.request_id for r in sched.waiting] == ["c", "d"]  # back at the head, FIFO kept
    assert c.status == RequestStatus.WAITING and c.block_table == [] and c.num_computed == 0
    assert len(c.patches) == 1  # its patch is kept, to be re-fed
    assert c.num_pending == 5
    sched.blocks.check(sched.running)
    sched.finish(a, RequestStatus.FINISHED_STOPPED)
    out = sched.schedule()
    assert _rows(out) == [("b", 4, 1, True), ("c", 0, 5, True)]  # c recomputes its prompt and its patch


def test_a_request_that_preempts_itself_gets_no_row():
    sched = _scheduler(num_blocks=2, block_size=4, max_num_seqs=2)
    a, b = _request("a", 4, 0), _request("b", 4, 1)
    sched.add(a)
    sched.add(b)
    _advance(sched.schedule())
    out = sched.schedule()  # both need a second block, none is free
    # a preempts b (the newest), gets b's block; nobody else is left.
    assert _rows(out) == [("a", 4, 1, True)] and out.preempted == [b]
    sched.finish(a, RequestStatus.FINISHED_LENGTH)
    sched.blocks.check([])
    # Alone with no block to grow into, the newest running request preempts itself.
    solo = _scheduler(num_blocks=1, block_size=4, max_num_seqs=1)
    r = _request("r", 4, 0)
    solo.add(r)
    _advance(solo.schedule())
    out = solo.schedule()
    assert out.rows == [] and out.preempted == [r] and list(solo.waiting) == [r] and solo.running == []


def test_finish_frees_blocks_in_any_state():
    sched = _scheduler(num_blocks=8, block_size=4, max_num_seqs=1)
    run, wait = _request("run", 6, 0), _request("wait", 6, 1)
    sched.add(run)
    sched.add(wait)
    sched.schedule()
    assert sched.blocks.num_free == 6
    sched.finish(wait, RequestStatus.CANCELLED)
    sched.finish(run, RequestStatus.FAILED)
    assert (run.status, wait.status) == (RequestStatus.FAILED, RequestStatus.CANCELLED)
    assert sched.blocks.num_free == 8 and not sched.has_work()
    sched.blocks.check([])


@pytest.fixture(scope="module")
def one_slot_registry(tiny_v1):
    """A registry with one usable adapter slot and two registered voices, on the tiny V1 model."""
    model = load_checkpoint(tiny_v1).model
    registry = AdapterRegistry(enable_lora(model, num_slots=2, max_rank=4))
    lora = LoRAConfig(enable_lm=True, r=4, alpha=8)
    for seed, name in enumerate(("x", "y")):
        tensors = synthetic_lora_tensors(lora_targets(model.config, lora), lora, seed)
        registry.register(name, adapter_from_state_dict(tensors, lora, model.config))
    yield registry
    disable_lora(model)


def test_lora_requests_wait_in_order_for_a_slot_and_unknown_voices_fail(one_slot_registry):
    sched = _scheduler(adapters=one_slot_registry)
    x, y, plain = _request("x1", 4, 0, lora="x"), _request("y1", 4, 1, lora="y"), _request("p", 4, 2)
    ghost = _request("g", 4, 3, lora="ghost")
    for req in (x, ghost, y, plain):
        sched.add(req)
    out = sched.schedule()
    # x takes the one slot; the unknown voice fails; y waits for the slot and plain waits behind it.
    assert [r.request.request_id for r in out.rows] == ["x1"]
    assert x.lora_slot == 1 and x.cache_salt == one_slot_registry.version_key(1).encode()
    assert [(r.request_id, "ghost" in why) for r, why in out.failed] == [("g", True)]
    assert [r.request_id for r in sched.waiting] == ["y1", "p"]
    sched.finish(x, RequestStatus.FINISHED_LENGTH)
    assert x.lora_slot == 0
    out = sched.schedule()
    assert [r.request.request_id for r in out.rows] == ["y1", "p"] and y.lora_slot == 1
    sched.finish(y, RequestStatus.FINISHED_LENGTH)
    sched.finish(plain, RequestStatus.FINISHED_LENGTH)
    one_slot_registry.check_invariants()
