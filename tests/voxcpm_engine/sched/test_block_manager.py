import torch

from voxcpm_engine.config.model_config import ModelConfig
from voxcpm_engine.config.presets import preset_config
from voxcpm_engine.frontend import build_prefill
from voxcpm_engine.sched.block_manager import BlockManager
from voxcpm_engine.sched.request import Request, SamplingParams

CFG = ModelConfig.from_dict(preset_config("tiny-v2"))


def _request(ids, ref=None, rid="r"):
    prefill = build_prefill(CFG, ids, ref_patches=ref)
    return Request(rid, prefill, SamplingParams(), torch.Generator(), arrival=0)


def test_allocate_free_and_invariant():
    bm = BlockManager(10, 4)
    a, b = _request(list(range(200, 209)), rid="a"), _request(list(range(300, 305)), rid="b")
    bm.allocate(a, 10)  # 10 positions -> 3 blocks
    bm.allocate(b, 7)
    assert len(a.block_table) == 3 and len(b.block_table) == 2 and bm.num_free == 5
    bm.check([a, b])
    assert bm.grow(a, 13) and len(a.block_table) == 4
    assert not bm.grow(a, 40) and len(a.block_table) == 4  # nothing taken on failure
    bm.free(a)
    bm.check([b])
    assert bm.num_free == 8


def test_prefix_cache_hits_on_equal_leading_content():
    ref = torch.randn(9, 4, 64)
    bm = BlockManager(32, 4)
    first = _request([201, 202, 203], ref=ref, rid="first")  # [103, ref x9, 104, 3 tokens, 101] = 15 positions
    bm.allocate(first, first.num_positions)
    first.num_computed = first.prompt_len
    bm.commit_prompt_blocks(first)
    second = _request([401, 402], ref=ref, rid="second")  # same reference, other text
    bm.allocate(second, second.num_positions)
    # Blocks 0-1 hold [103, ref0..ref6]; block 2 mixes ref8 / 104 / text, which differ from position 12 on.
    assert second.num_cached == 8 and second.block_table[:2] == first.block_table[:2]
    bm.check([first, second])
    bm.free(first)
    bm.free(second)
    bm.check([])
    third = _request([501], ref=ref, rid="third")
    bm.allocate(third, third.num_positions)
    assert third.num_cached == 8  # freed blocks keep their content until reused


def test_last_prompt_position_is_never_served_from_cache():
    bm = BlockManager(8, 4)
    a = _request([7, 8, 9], rid="a")  # 4 positions: exactly one block
    bm.allocate(a, 4)
    a.num_computed = 4
    bm.commit_prompt_blocks(a)
    b = _request([7, 8, 9], rid="b")
    bm.allocate(b, 4)
    assert b.num_cached == 0 and b.block_table != a.block_table


def test_reusing_a_freed_cached_block_drops_its_cache_entry():
    bm = BlockManager(2, 4)
    a = _request(list(range(10, 17)), rid="a")  # 8 positions, 2 blocks
    bm.allocate(a, 8)
    a.num_computed = 8
    bm.commit_prompt_blocks(a)
    bm.free(a)
    b = _request(list(range(50, 57)), rid="b")
    bm.allocate(b, 8)  # must overwrite both blocks
    bm.check([b])
    assert not bm.cached
