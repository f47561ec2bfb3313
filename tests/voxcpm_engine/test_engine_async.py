"""Asynchronous scheduling (``EngineConfig.async_scheduling``) on the CPU: a step launches the next
one before its audio is copied out. The audio must not change, and aborts and arrivals between
steps must be handled while a step is in flight. Same fp32 tiny checkpoints and tolerance as
``test_engine``.
"""

import numpy as np

from tests.voxcpm_engine.test_engine import BATCH_ATOL, _engine, _params, _run
from voxcpm_engine.sched.request import RequestStatus


def _collect(engine, chunks, status):
    for out in engine.step():
        if out.audio is not None:
            chunks.setdefault(out.request_id, []).append(out.audio)
        status[out.request_id] = out.status
    engine.check_invariants()


def test_async_scheduling_launches_ahead_and_gives_the_same_audio(ckpt_v2):
    results = {}
    for flag in (False, True):
        engine = _engine(ckpt_v2, async_scheduling=flag)
        engine.add_request("a", "A longer request that keeps going for a while.", params=_params(7, 1))
        engine.add_request("b", "Short.", params=_params(3, 2, cfg_value=1.5, temperature=0.7))
        engine.step()
        assert (engine._inflight is not None) == flag  # the second step is already running
        results[flag] = _run(engine)
        assert engine._inflight is None
    (sync, sync_status), (ahead, ahead_status) = results[False], results[True]
    assert ahead_status == sync_status == {"a": RequestStatus.FINISHED_LENGTH, "b": RequestStatus.FINISHED_LENGTH}
    for rid in ("a", "b"):
        np.testing.assert_array_equal(ahead[rid], sync[rid])


def test_abort_while_a_step_is_in_flight_drops_its_row(ckpt_v1):
    chunks, status = {}, {}
    for flag in (False, True):
        engine = _engine(ckpt_v1, async_scheduling=flag)
        engine.add_request("keep", "Keep going to the end.", params=_params(6, 1))
        engine.add_request("drop", "Dropped halfway through.", params=_params(6, 2))
        chunks[flag], status[flag] = {}, {}
        for _ in range(3):
            _collect(engine, chunks[flag], status[flag])
        assert engine.abort("drop")
        engine.check_invariants()
        while engine.has_unfinished():
            _collect(engine, chunks[flag], status[flag])
        assert engine.blocks.num_free == engine.blocks.num_blocks
    assert status[True] == status[False] == {"keep": RequestStatus.FINISHED_LENGTH, "drop": RequestStatus.CANCELLED}
    assert [len(c) for c in chunks[True]["drop"]] == [len(c) for c in chunks[False]["drop"]]
    for rid in ("keep", "drop"):  # "keep" ran one step beside the dropped row here: batch rounding only
        got, want = np.concatenate(chunks[True][rid]), np.concatenate(chunks[False][rid])
        np.testing.assert_allclose(got, want, atol=BATCH_ATOL, rtol=0)


def test_arrival_while_a_step_is_in_flight_joins_a_later_step(ckpt_v1):
    alone = _engine(ckpt_v1)
    alone.add_request("late", "Arrives while a step runs.", params=_params(4, 3))
    reference = _run(alone)[0]["late"]
    engine = _engine(ckpt_v1, async_scheduling=True)
    engine.add_request("first", "Already speaking.", params=_params(8, 1))
    chunks, status = {}, {}
    for _ in range(3):
        _collect(engine, chunks, status)
    assert engine._inflight is not None
    engine.add_request("late", "Arrives while a step runs.", params=_params(4, 3))
    _collect(engine, chunks, status)  # finishes the step in flight; launches nothing while "late" waits
    assert engine._inflight is None and "late" not in chunks
    while engine.has_unfinished():
        _collect(engine, chunks, status)
    assert status == {"first": RequestStatus.FINISHED_LENGTH, "late": RequestStatus.FINISHED_LENGTH}
    assert len(chunks["first"]) == 8
    np.testing.assert_allclose(np.concatenate(chunks["late"]), reference, atol=BATCH_ATOL, rtol=0)


def test_a_step_in_flight_whose_rows_were_all_aborted_does_not_delay_the_next_request(ckpt_v1):
    engine = _engine(ckpt_v1, async_scheduling=True)
    engine.add_request("gone", "Cancelled while its step runs.", params=_params(6, 1))
    for _ in range(2):
        engine.step()
    assert engine._inflight is not None and engine.abort("gone")
    engine.add_request("next", "Comes after.", params=_params(2, 2))
    outs = {o.request_id: o for o in engine.step()}  # the stale step is dropped, "next" runs at once
    assert outs["gone"].status == RequestStatus.CANCELLED and outs["next"].audio is not None
    _, status = _run(engine)
    assert status == {"next": RequestStatus.FINISHED_LENGTH}
