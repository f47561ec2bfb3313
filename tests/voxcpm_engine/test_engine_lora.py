"""Named LoRA voices in the batched engine (fp32 tiny model; tolerance as in test_engine.py)."""

import numpy as np
import pytest

from tests.voxcpm_engine.test_engine import BATCH_ATOL, _run
from voxcpm_engine.config.engine_config import EngineConfig
from voxcpm_engine.engine import Engine
from voxcpm_engine.io.checkpoint import load_checkpoint
from voxcpm_engine.io.lora_files import load_adapter
from voxcpm_engine.lora.layers import apply_single_adapter
from voxcpm_engine.sched.request import RequestStatus
from voxcpm_engine.single.synthesizer import Synthesizer
from voxcpm_engine.tools.synthetic_lora import write_lora
from voxcpm_engine.types import GenerationParams

TEXT = "A voice of its own."


def _params(n, seed):
    return GenerationParams(min_steps=n, max_steps=n, seed=seed)


@pytest.fixture(scope="module")
def adapters(tiny_v2, tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    return {f"v{i}": write_lora(tiny_v2, root / f"v{i}", rank=4 + 2 * i, seed=i) for i in range(3)}


def _engine(tiny_v2, max_loras=2, **kw):
    config = EngineConfig(max_num_seqs=8, max_num_batched_tokens=64, max_model_len=256, max_loras=max_loras, **kw)
    return Engine(load_checkpoint(tiny_v2, dtype="float32"), config)


def test_mixed_adapter_batch_equals_solo_runs(tiny_v2, adapters):
    ckpt = load_checkpoint(tiny_v2, dtype="float32")
    solo = {}
    for name in ("v0", "v1"):
        with apply_single_adapter(ckpt.model, load_adapter(adapters[name], ckpt.config)):
            solo[name] = Synthesizer(ckpt).generate(TEXT, params=_params(5, 3))
    solo[None] = Synthesizer(ckpt).generate(TEXT, params=_params(5, 3))
    assert np.abs(solo["v0"] - solo[None]).max() > 0.01  # the adapter changes the voice

    engine = _engine(tiny_v2)
    for name in ("v0", "v1"):
        engine.register_voice(name, adapters[name])
    for rid, name in (("plain", None), ("a", "v0"), ("b", "v1")):
        engine.add_request(rid, TEXT, params=_params(5, 3), lora=name)
    out, _ = _run(engine)
    for rid, name in (("plain", None), ("a", "v0"), ("b", "v1")):
        np.testing.assert_allclose(out[rid], solo[name], atol=BATCH_ATOL, rtol=0)


def test_more_adapters_than_slots_evicts_idle_ones(tiny_v2, adapters):
    engine = _engine(tiny_v2, max_loras=1)
    for name, path in adapters.items():
        engine.register_voice(name, path)
    results = {}
    for name in adapters:  # one slot: each voice in turn evicts the previous (idle) one
        engine.add_request(name, TEXT, params=_params(3, 1), lora=name)
        results.update(_run(engine)[0])
    again = _engine(tiny_v2, max_loras=3)
    for name, path in adapters.items():
        again.register_voice(name, path)
        again.add_request(name, TEXT, params=_params(3, 1), lora=name)
    together, _ = _run(again)
    for name in adapters:
        np.testing.assert_allclose(results[name], together[name], atol=BATCH_ATOL, rtol=0)


def test_all_slots_busy_waits_in_fifo_order(tiny_v2, adapters):
    engine = _engine(tiny_v2, max_loras=1)
    engine.register_voice("v0", adapters["v0"])
    engine.register_voice("v1", adapters["v1"])
    engine.add_request("first", TEXT, params=_params(4, 1), lora="v0")
    engine.add_request("second", TEXT, params=_params(2, 1), lora="v1")
    engine.step()
    assert engine.requests["second"].status == RequestStatus.WAITING  # its adapter has no slot yet
    finished = []
    while engine.has_unfinished():
        finished += [o.request_id for o in engine.step() if o.finished]
        engine.check_invariants()
    assert finished == ["first", "second"]


def test_unregister_while_running_drains(tiny_v2, adapters):
    engine = _engine(tiny_v2)
    engine.register_voice("v0", adapters["v0"])
    engine.add_request("running", TEXT, params=_params(5, 2), lora="v0")
    first = engine.step()[0].audio
    engine.unregister_voice("v0")
    with pytest.raises(ValueError, match="unknown voice 'v0'"):
        engine.add_request("late", TEXT, params=_params(5, 2), lora="v0")
    assert engine.stats()["adapters"]["draining"][0]["refcount"] == 1
    out, status = _run(engine)
    assert status["running"] == RequestStatus.FINISHED_LENGTH
    reference = _engine(tiny_v2)
    reference.register_voice("v0", adapters["v0"])
    reference.add_request("running", TEXT, params=_params(5, 2), lora="v0")
    whole = np.concatenate([first, out["running"]])
    np.testing.assert_allclose(whole, _run(reference)[0]["running"], atol=BATCH_ATOL, rtol=0)
    stats = engine.stats()["adapters"]
    assert stats["resident"] == 0 and stats["draining"] == [] and stats["registered"] == 0


def test_unregistered_while_waiting_fails(tiny_v2, adapters):
    engine = _engine(tiny_v2, max_loras=1)
    engine.register_voice("v0", adapters["v0"])
    engine.register_voice("v1", adapters["v1"])
    engine.add_request("holder", TEXT, params=_params(3, 1), lora="v0")
    engine.add_request("victim", TEXT, params=_params(3, 1), lora="v1")
    engine.step()
    engine.unregister_voice("v1")
    failures = []
    while engine.has_unfinished():
        failures += [(o.request_id, o.error) for o in engine.step() if o.status == RequestStatus.FAILED]
    assert [rid for rid, _ in failures] == ["victim"]
    assert "v1" in failures[0][1]  # the reason reaches the caller


def test_prefix_cache_is_keyed_by_adapter(tiny_v2, adapters):
    engine = _engine(tiny_v2, block_size=4)
    engine.register_voice("v0", adapters["v0"])
    long_text = "The same long prompt text for both requests, long enough for full blocks."
    engine.add_request("plain", long_text, params=_params(2, 1))
    _run(engine)
    engine.add_request("lora", long_text, params=_params(2, 1), lora="v0")
    request = engine.requests["lora"]
    engine.step()
    assert request.num_cached == 0  # other weights, other K/V: no sharing
    _run(engine)
