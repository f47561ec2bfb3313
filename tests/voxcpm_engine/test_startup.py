"""Start-up of an engine (``voxcpm_engine.startup``): warm-up requests and the progress the process reports.

CPU, the tiny models: what the warm-up runs, that it leaves the engine as it found it, and that
an engine process reports its phases before READY (the server's ``/ready`` relies on it).
"""

import asyncio

import pytest
import torch

from voxcpm_engine.config.engine_config import EngineConfig
from voxcpm_engine.engine import Engine
from voxcpm_engine.io.checkpoint import load_checkpoint
from voxcpm_engine.proc.client import AsyncEngine
from voxcpm_engine.startup import ProgressClock, freeze_heap, warm_up, warm_up_batches
from voxcpm_engine.types import GenerationParams, StartupPhase, StartupProgress


def test_warm_up_batches_straddle_sixteen_and_stay_within_the_batch():
    assert warm_up_batches(1) == [1]
    assert warm_up_batches(4) == [1, 2, 3, 4]
    assert warm_up_batches(128) == [1, 2, 3, 16, 17, 128]


def test_describe_names_the_phase_and_its_count():
    assert StartupProgress(StartupPhase.PACKED_LM_GRAPHS, 12, 66, 14.2).describe() == (
        "capturing prefill CUDA graphs (12/66), 14 s in"
    )
    assert StartupProgress(StartupPhase.LOADING, 0, 0, 0.4).describe() == "loading the checkpoint, 0 s in"


def test_progress_clock_reports_phases_with_elapsed_time():
    seen: list[StartupProgress] = []
    clock = ProgressClock(seen.append, started=0.0)
    clock(StartupPhase.LOADING)
    clock.phase(StartupPhase.WARM_UP)(1, 3)
    assert [(p.phase, p.done, p.total) for p in seen] == [(StartupPhase.LOADING, 0, 0), (StartupPhase.WARM_UP, 1, 3)]
    assert all(p.elapsed_s > 0 for p in seen)


@pytest.mark.parametrize("name", ["tiny_v1", "tiny_v2"])
def test_warm_up_runs_every_batch_and_leaves_nothing_behind(request, name):
    engine = Engine(load_checkpoint(request.getfixturevalue(name)), EngineConfig(max_num_seqs=4, max_model_len=256))
    ticks: list[tuple[int, int]] = []
    warm_up(engine, lambda done, total: ticks.append((done, total)), steps=2)
    assert ticks == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert not engine.has_unfinished() and engine.blocks.num_free == engine.blocks.num_blocks
    engine.check_invariants()
    # A real request afterwards is served as on a fresh engine (same seed, same audio).
    fresh = Engine(load_checkpoint(request.getfixturevalue(name)), EngineConfig(max_num_seqs=4, max_model_len=256))
    outs = []
    for e in (engine, fresh):
        e.add_request("r", "After the warm-up.", params=GenerationParams(min_steps=3, max_steps=3, seed=7))
        chunks = []
        while e.has_unfinished():
            chunks += [o.audio for o in e.step() if o.audio is not None]
        outs.append(torch.tensor(sum((c.tolist() for c in chunks), [])))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-6, rtol=0)


def test_engine_process_reports_its_phases_before_ready(tiny_v2, tmp_path):
    pytest.importorskip("triton")
    cache = tmp_path / "kernels"
    config = EngineConfig(
        max_num_seqs=2, max_num_batched_tokens=64, max_model_len=256, warm_up=True, kernel_cache_dir=str(cache)
    )
    engine = AsyncEngine(tiny_v2, config, num_threads=1)
    seen: list[StartupProgress] = []
    original = engine._started_some

    def record(progress: StartupProgress) -> None:
        seen.append(progress)
        original(progress)

    engine._started_some = record

    async def go() -> None:
        await engine.start()
        await engine.stop()

    asyncio.run(go())
    # The engine process keeps its kernels where it was told (what a restarted server finds again).
    assert engine.ready is not None and engine.model_info.kernel_cache_dir == str(cache.resolve())
    phases = [p.phase for p in seen]
    assert phases[0] is StartupPhase.LOADING and phases[-1] is StartupPhase.WARM_UP
    assert (seen[-1].done, seen[-1].total) == (2, 2)  # batches of 1 and 2
    assert engine.startup_progress() == [("cpu", seen[-1])]
    assert [p.elapsed_s for p in seen] == sorted(p.elapsed_s for p in seen)


def test_freeze_heap_keeps_start_up_objects_out_of_later_collections():
    import gc

    try:
        assert freeze_heap() >= 0.0
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_warm_up_with_lora_slots_runs_a_lora_pass_and_removes_its_adapter(tiny_v2, tmp_path):
    from voxcpm_engine.startup import WARM_UP_ADAPTER, warm_up_plan
    from voxcpm_engine.tools.synthetic_lora import write_lora

    config = EngineConfig(max_num_seqs=3, max_model_len=256, max_loras=2, max_lora_rank=16)
    engine = Engine(load_checkpoint(tiny_v2), config)
    assert warm_up_plan(engine) == [(1, False), (2, False), (3, False), (1, True), (2, True), (3, True)]
    ticks: list[tuple[int, int, int]] = []
    warm_up(engine, lambda done, total: ticks.append((done, total, engine.adapters.stats()["resident"])), steps=2)
    # The LoRA pass really put rows on the adapter: it was made resident in a slot.
    assert ticks == [(1, 6, 0), (2, 6, 0), (3, 6, 0), (4, 6, 1), (5, 6, 1), (6, 6, 1)]
    # The zero adapter is gone, its slot free again, and nothing is left in flight.
    assert engine.adapters is not None and WARM_UP_ADAPTER not in engine.adapters.names()
    stats = engine.adapters.stats()
    assert stats["registered"] == stats["resident"] == stats["in_use"] == 0 and not stats["draining"]
    assert not engine.has_unfinished() and engine.blocks.num_free == engine.blocks.num_blocks
    engine.check_invariants()
    # A real LoRA voice afterwards sounds as on a fresh engine.
    lora = write_lora(tiny_v2, tmp_path / "calm", rank=8, seed=3)
    fresh = Engine(load_checkpoint(tiny_v2), config)
    outs = []
    for e in (engine, fresh):
        e.register_voice("calm", lora)
        e.add_request("r", "With a voice.", params=GenerationParams(min_steps=3, max_steps=3, seed=7), lora="calm")
        chunks = []
        while e.has_unfinished():
            chunks += [o.audio for o in e.step() if o.audio is not None]
        outs.append(torch.tensor(sum((c.tolist() for c in chunks), [])))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-6, rtol=0)
