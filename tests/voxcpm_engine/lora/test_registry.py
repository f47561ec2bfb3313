import pytest
import torch

from voxcpm_engine.io.checkpoint import load_checkpoint
from voxcpm_engine.io.lora_files import AdapterError, LoRAConfig, adapter_from_state_dict, lora_targets
from voxcpm_engine.lora.layers import enable_lora
from voxcpm_engine.lora.registry import AdapterRegistry, AdapterState, NoFreeSlotError
from voxcpm_engine.tools.synthetic_lora import synthetic_lora_tensors, write_lora

R, D, REG = AdapterState.RESIDENT, AdapterState.DRAINING, AdapterState.REGISTERED


class Counting:
    """Wraps the slots to count device loads and clears."""

    def __init__(self, slots):
        self.inner, self.loads, self.clears = slots, [], []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def load(self, slot, adapter):
        self.loads.append(slot)
        self.inner.load(slot, adapter)

    def clear(self, slot):
        self.clears.append(slot)
        self.inner.clear(slot)


@pytest.fixture(scope="module")
def model(tiny_v1):
    return load_checkpoint(tiny_v1).model


@pytest.fixture
def registry(model):
    """Two usable slots (slot 0 is 'no adapter'); invariants and a clean model checked after each test."""
    from voxcpm_engine.lora.layers import disable_lora

    slots = Counting(enable_lora(model, num_slots=3, max_rank=8))
    reg = AdapterRegistry(slots)
    yield reg
    reg.check_invariants()
    disable_lora(model)


def _adapter(cfg, seed, rank=8):
    lora = LoRAConfig(enable_lm=True, enable_dit=True, r=rank)
    return adapter_from_state_dict(synthetic_lora_tensors(lora_targets(cfg, lora), lora, seed), lora, cfg)


def _holds(model, slot, adapter):
    """Whether ``slot`` of the model's layers holds ``adapter`` (or zeros, for None)."""
    layer = model.base_lm.layers[0].self_attn.q_proj
    if adapter is None:
        return not layer.lora_a[slot].any() and not layer.lora_b[slot].any()
    a, _ = adapter.weights["base_lm.layers.0.self_attn.q_proj"]
    return torch.equal(layer.lora_a[slot, : a.size(0)], a.to(layer.lora_a.dtype))


def test_register_validates_at_once(registry, model, tmp_path):
    with pytest.raises(AdapterError, match="adapter directory not found"):
        registry.register("a", tmp_path / "nope")
    with pytest.raises(AdapterError, match="rank 16 exceeds"):
        registry.register("a", _adapter(model.config, 0, rank=16))
    assert registry.stats()["registered"] == 0 and registry.slots.loads == []


def test_register_from_path_and_acquire_release(registry, model, tiny_v1, tmp_path):
    path = write_lora(tiny_v1, tmp_path / "voice", rank=4, seed=3)
    assert registry.register("voice", path) == 1
    assert registry.state("voice") is REG and registry.slots.loads == []  # host only until needed
    slot = registry.acquire("voice")
    assert slot == 1 and registry.state("voice") is R and registry.acquire("voice") == slot
    assert registry.slots.loads == [1]  # resident: the second acquire reuses it
    registry.check_invariants()
    registry.release(slot)
    registry.release(slot)
    assert registry.state("voice") is R  # idle but resident: cheap to reuse
    assert registry.acquire("voice") == slot and registry.slots.loads == [1]
    registry.release(slot)
    with pytest.raises(ValueError, match="no request holds"):
        registry.release(slot)
    stats = registry.stats()
    assert stats["adapters"]["voice"] == {"version": 1, "state": "resident", "slot": 1, "refcount": 0}
    assert (stats["registered"], stats["resident"], stats["free_slots"], stats["in_use"]) == (1, 1, 1, 0)


def test_lru_eviction_with_more_adapters_than_slots(registry, model):
    ads = {n: _adapter(model.config, i) for i, n in enumerate("abc")}
    for name, ad in ads.items():
        registry.register(name, ad)
    sa, sb = registry.acquire("a"), registry.acquire("b")
    registry.release(sa)
    registry.release(sb)  # a is now the least recently used idle adapter
    sc = registry.acquire("c")
    assert sc == sa and registry.state("a") is REG and _holds(model, sc, ads["c"])
    registry.check_invariants()
    registry.release(sc)
    assert registry.acquire("a") == sb and registry.state("b") is REG and _holds(model, sb, ads["a"])
    registry.release(sb)
    assert registry.slots.loads == [sa, sb, sa, sb]


def test_all_slots_busy_is_an_error_until_one_is_released(registry, model):
    for i, name in enumerate("abc"):
        registry.register(name, _adapter(model.config, i))
    sa, sb = registry.acquire("a"), registry.acquire("b")
    with pytest.raises(NoFreeSlotError, match="all 2 adapter slots"):
        registry.acquire("c")
    registry.check_invariants()
    assert registry.state("c") is REG and registry.stats()["in_use"] == 2
    registry.release(sa)
    assert registry.acquire("c") == sa
    registry.release(sa)
    registry.release(sb)
    with pytest.raises(KeyError):
        registry.acquire("unknown")


def test_replace_while_in_use_keeps_old_version_for_running_requests(registry, model):
    old, new = _adapter(model.config, 1), _adapter(model.config, 2)
    registry.register("v", old)
    running = registry.acquire("v")
    assert registry.register("v", new) == 2
    stats = registry.stats()
    assert stats["adapters"]["v"] == {"version": 2, "state": "registered", "slot": None, "refcount": 0}
    assert stats["draining"] == [{"name": "v", "version": 1, "state": "draining", "slot": running, "refcount": 1}]
    registry.check_invariants()
    fresh = registry.acquire("v")  # new requests get the new version, in another slot
    assert fresh != running and _holds(model, fresh, new) and _holds(model, running, old)
    registry.release(running)  # the last old user finishes: its slot is zeroed and freed
    assert _holds(model, running, None) and registry.stats()["draining"] == []
    assert registry.stats()["free_slots"] == 1
    registry.release(fresh)


def test_replace_idle_frees_at_once_and_unregister_drains(registry, model):
    registry.register("v", _adapter(model.config, 1))
    slot = registry.acquire("v")
    registry.release(slot)
    registry.register("v", _adapter(model.config, 2))
    assert registry.slots.clears == [slot] and registry.stats()["resident"] == 0
    slot = registry.acquire("v")
    registry.unregister("v")
    assert registry.state("v") is AdapterState.REMOVED
    with pytest.raises(KeyError):
        registry.acquire("v")  # draining: no new users
    assert registry.stats()["draining"][0]["state"] == "draining"
    registry.check_invariants()
    registry.release(slot)
    assert registry.stats() == {
        "registered": 0,
        "resident": 0,
        "slots": 2,
        "free_slots": 2,
        "in_use": 0,
        "adapters": {},
        "draining": [],
    }
    with pytest.raises(KeyError):
        registry.unregister("v")


def test_failed_load_leaves_slot_free(registry, model):
    registry.register("a", _adapter(model.config, 1))

    def boom(slot, adapter):
        raise RuntimeError("device error")

    registry.slots.inner.load, real = boom, registry.slots.inner.load
    try:
        with pytest.raises(RuntimeError, match="device error"):
            registry.acquire("a")
    finally:
        registry.slots.inner.load = real
    assert registry.state("a") is REG and registry.stats()["free_slots"] == 2
    registry.check_invariants()
