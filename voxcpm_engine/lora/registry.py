"""Named LoRA voices: host-side bookkeeping of adapter versions and the device slots they occupy.

Each ``register`` creates a new *version* of a name. A version moves through::

    REGISTERED (host only) ──acquire──▶ RESIDENT (in a slot) ──evicted while idle──▶ REGISTERED
         │                                  │
         └──unregister/replace──▶ REMOVED ◀─┴── unregister/replace: idle → REMOVED,
                                               in use → DRAINING ──last release──▶ REMOVED

A DRAINING version keeps its slot and its adapter for the requests that hold it, but no new
request can acquire it (the name now means the new version, or nothing). All tensor work goes
through :class:`voxcpm_engine.lora.layers.AdapterSlots`; the registry only decides which slot holds what.
Methods are serialised by a lock, so control calls may come from another thread than the step loop.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from voxcpm_engine.config.model_config import ModelConfig
from voxcpm_engine.io.lora_files import Adapter, load_adapter
from voxcpm_engine.lora.layers import AdapterSlots


class AdapterState(Enum):
    """Lifecycle of one adapter version."""

    REGISTERED = "registered"
    RESIDENT = "resident"
    DRAINING = "draining"
    REMOVED = "removed"


class NoFreeSlotError(RuntimeError):
    """Every adapter slot holds an adapter that running requests use; retry after some finish."""


@dataclass(eq=False)
class AdapterVersion:
    """One registered version of a named adapter (mutated only by :class:`AdapterRegistry`)."""

    name: str
    version: int
    adapter: Adapter
    state: AdapterState = AdapterState.REGISTERED
    slot: int | None = None
    refcount: int = 0
    last_used: int = 0


class AdapterRegistry:
    """Names → adapter versions → device slots, with LRU eviction of idle residents.

    Args:
        slots: The model's adapter slots (from :func:`voxcpm_engine.lora.layers.enable_lora`); slot 0 is never used.
        model_config: Architecture that adapters read from a path are validated against
            (default: ``slots.model.config``).
    """

    def __init__(self, slots: AdapterSlots, model_config: ModelConfig | None = None) -> None:
        self._slots = slots
        self._model_config = model_config if model_config is not None else slots.model.config
        self._current: dict[str, AdapterVersion] = {}  # name → version new requests get
        self._owners: dict[int, AdapterVersion] = {}  # slot → RESIDENT or DRAINING version in it
        self._versions: dict[str, int] = {}  # name → last version number handed out
        self._clock = itertools.count(1)
        self._lock = threading.RLock()

    @property
    def slots(self) -> AdapterSlots:
        """The device slots this registry manages."""
        return self._slots

    @property
    def num_slots(self) -> int:
        """Usable slots (excluding slot 0)."""
        return self._slots.num_slots - 1

    def register(self, name: str, source: str | Path | Adapter) -> int:
        """Register ``name`` (from an adapter directory or a loaded :class:`Adapter`); returns its version.

        The adapter is validated at once (files, keys, shapes, and fit with the engine's LoRA layers
        and max rank); on error nothing changes. Registering an existing name replaces it: requests
        already holding the old version keep its slot until they release it.

        Raises:
            voxcpm_engine.io.lora_files.AdapterError: The adapter is invalid or does not fit the engine.
            ValueError: ``name`` is empty.
        """
        if not name:
            raise ValueError("adapter name must not be empty")
        adapter = source if isinstance(source, Adapter) else load_adapter(source, self._model_config)
        self._slots.check(adapter)
        with self._lock:
            old = self._current.pop(name, None)
            if old is not None:
                self._retire(old)
            number = self._versions[name] = self._versions.get(name, 0) + 1
            self._current[name] = AdapterVersion(name, number, adapter)
            return number

    def unregister(self, name: str) -> None:
        """Remove ``name``: no new request may acquire it; its slot is freed once the last user releases.

        Raises:
            KeyError: ``name`` is not registered.
        """
        with self._lock:
            if name not in self._current:
                raise KeyError(f"adapter {name!r} is not registered")
            self._retire(self._current.pop(name))

    def acquire(self, name: str) -> int:
        """Make the current version of ``name`` resident and take a reference; returns its slot.

        Reuses its slot if resident, else takes a free slot, else evicts the least recently used
        resident version that nobody holds.

        Raises:
            KeyError: ``name`` is not registered (or was unregistered).
            NoFreeSlotError: Every slot is held by running requests.
        """
        with self._lock:
            entry = self._current.get(name)
            if entry is None:
                raise KeyError(f"adapter {name!r} is not registered")
            if entry.slot is None:
                slot = self._free_slot()
                try:
                    self._slots.load(slot, entry.adapter)
                except BaseException:
                    self._slots.clear(slot)  # a partial copy must not linger; the slot stays free
                    raise
                entry.slot, entry.state = slot, AdapterState.RESIDENT
                self._owners[slot] = entry
            entry.refcount += 1
            entry.last_used = next(self._clock)
            return entry.slot

    def names(self) -> list[str]:
        """Registered names (current versions), sorted."""
        with self._lock:
            return sorted(self._current)

    def version_key(self, slot: int) -> str:
        """``"name#version"`` of the adapter in ``slot`` (keys the prefix cache: KV depends on the adapter).

        Raises:
            KeyError: Nothing holds ``slot``.
        """
        with self._lock:
            entry = self._owners[slot]
            return f"{entry.name}#{entry.version}"

    def release(self, slot: int) -> None:
        """Drop one reference taken by :meth:`acquire` (the request using ``slot`` finished).

        Raises:
            ValueError: Nothing holds ``slot``.
        """
        with self._lock:
            entry = self._owners.get(slot)
            if entry is None or entry.refcount == 0:
                raise ValueError(f"release of slot {slot}, which no request holds")
            entry.refcount -= 1
            entry.last_used = next(self._clock)
            if entry.refcount == 0 and entry.state is AdapterState.DRAINING:
                self._free(entry)
                entry.state = AdapterState.REMOVED

    def state(self, name: str) -> AdapterState:
        """State of the current version of ``name`` (``REMOVED`` if not registered)."""
        with self._lock:
            entry = self._current.get(name)
            return AdapterState.REMOVED if entry is None else entry.state

    def stats(self) -> dict[str, Any]:
        """A JSON-able snapshot: counts, free slots, and per version its state, slot and refcount."""
        with self._lock:

            def row(e: AdapterVersion) -> dict[str, Any]:
                return {"version": e.version, "state": e.state.value, "slot": e.slot, "refcount": e.refcount}

            draining = [e for e in self._owners.values() if e.state is AdapterState.DRAINING]
            return {
                "registered": len(self._current),
                "resident": len(self._owners),
                "slots": self.num_slots,
                "free_slots": self.num_slots - len(self._owners),
                "in_use": sum(e.refcount for e in self._owners.values()),
                "adapters": {name: row(e) for name, e in sorted(self._current.items())},
                "draining": [{"name": e.name, **row(e)} for e in sorted(draining, key=lambda e: e.slot or 0)],
            }

    def check_invariants(self) -> None:
        """Raise ``AssertionError`` if the bookkeeping is inconsistent (for tests and debug builds)."""
        with self._lock:
            for slot, e in self._owners.items():
                assert 1 <= slot <= self.num_slots, f"slot {slot} out of range"
                assert e.slot == slot, f"{e.name} v{e.version} owns slot {slot} but records {e.slot}"
                assert e.state in (AdapterState.RESIDENT, AdapterState.DRAINING), f"{e.name}: {e.state} owns a slot"
                assert e.refcount >= 0, f"{e.name}: refcount {e.refcount}"
                if e.state is AdapterState.DRAINING:
                    assert e.refcount > 0, f"{e.name} v{e.version} drains with no users"
                    assert self._current.get(e.name) is not e, f"{e.name}: draining version still current"
            for name, e in self._current.items():
                assert e.name == name and e.state in (AdapterState.REGISTERED, AdapterState.RESIDENT), (name, e.state)
                assert e.version == self._versions[name], f"{name}: current is not the latest version"
                if e.state is AdapterState.REGISTERED:
                    assert e.slot is None and e.refcount == 0, f"{name}: host-only but slot/refs set"
                else:
                    assert e.slot is not None and self._owners.get(e.slot) is e, f"{name}: resident but not in a slot"
            assert len({id(e) for e in self._owners.values()}) == len(self._owners), "a version owns two slots"

    # ---------------------------------------------------------------------------------- internal

    def _retire(self, entry: AdapterVersion) -> None:
        """The name no longer points at ``entry``: drain it if in use, else drop it now."""
        if entry.refcount > 0:
            entry.state = AdapterState.DRAINING
            return
        if entry.slot is not None:
            self._free(entry)
        entry.state = AdapterState.REMOVED

    def _free(self, entry: AdapterVersion) -> None:
        assert entry.slot is not None
        slot = entry.slot
        del self._owners[slot]
        entry.slot = None
        # Zero it so a stale adapter can never leak into a row that uses this slot by mistake.
        self._slots.clear(slot)

    def _free_slot(self) -> int:
        for slot in range(1, self.num_slots + 1):
            if slot not in self._owners:
                return slot
        idle = [e for e in self._owners.values() if e.refcount == 0]
        if not idle:
            raise NoFreeSlotError(f"all {self.num_slots} adapter slots are in use by running requests")
        victim = min(idle, key=lambda e: e.last_used)
        slot = victim.slot
        assert slot is not None and victim.state is AdapterState.RESIDENT
        del self._owners[slot]
        victim.slot, victim.state = None, AdapterState.REGISTERED  # back to host only; reloaded on demand
        return slot
