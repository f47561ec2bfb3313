"""Tests of voxcpm_engine.proc.engine_client: the one interface both engine clients implement."""

from __future__ import annotations

import asyncio
import inspect

import pytest

from voxcpm_engine.proc.client import AsyncEngine
from voxcpm_engine.proc.engine_client import EngineClient
from voxcpm_engine.proc.group import AsyncEngineGroup

_ABSTRACT = {name for name, v in vars(EngineClient).items() if getattr(v, "__isabstractmethod__", False)}


class _Recorder(EngineClient):
    """Records the lifecycle; its requests and voices are never reached here."""

    engines = is_alive = model_info = sample_rate = samples_per_patch = encode_sample_rate = num_unfinished = None  # type: ignore[assignment]

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def start(self) -> None:
        self.calls.append("start")

    async def stop(self, timeout_s: float = 10.0) -> None:
        self.calls.append(f"stop {timeout_s}")

    def startup_progress(self) -> list:
        return []

    def has_request(self, request_id: str) -> bool:
        return False

    def generate(self, request_id, text, **options):  # type: ignore[override]
        raise AssertionError("not reached")

    async def abort(self, request_id: str) -> bool:
        raise AssertionError("not reached")

    async def register_voice(self, name, path) -> int:  # type: ignore[override]
        raise AssertionError("not reached")

    async def unregister_voice(self, name: str) -> None:
        raise AssertionError("not reached")

    async def encode_prompt(self, audio, *, reference=False, limits=None):  # type: ignore[override]
        raise AssertionError("not reached")

    async def stats(self) -> dict:
        raise AssertionError("not reached")


def test_async_with_starts_on_entry_and_stops_on_exit_even_on_error():
    client = _Recorder()

    async def go() -> None:
        with pytest.raises(RuntimeError, match="boom"):
            async with client as entered:
                assert entered is client and client.calls == ["start"]
                raise RuntimeError("boom")

    asyncio.run(go())
    assert client.calls == ["start", "stop 10.0"]


def test_a_client_that_leaves_out_a_method_cannot_be_built():
    class Half(EngineClient):
        async def start(self) -> None: ...

        async def stop(self, timeout_s: float = 10.0) -> None: ...

    with pytest.raises(TypeError, match="abstract"):
        Half()  # type: ignore[abstract]


@pytest.mark.parametrize("cls", [AsyncEngine, AsyncEngineGroup])
def test_both_clients_implement_all_of_it_with_the_same_signatures(cls):
    assert not cls.__abstractmethods__
    for name in _ABSTRACT:
        ours, theirs = vars(EngineClient)[name], getattr(cls, name)
        if isinstance(ours, property):
            assert isinstance(theirs, property | type(AsyncEngine.encode_sample_rate)), name
            continue
        want = inspect.signature(ours).parameters
        have = inspect.signature(theirs).parameters
        assert list(want) == list(have)[: len(want)], name  # extra keyword-only options may follow


def test_a_single_engine_is_its_own_only_engine(tiny_v1):
    engine = AsyncEngine(tiny_v1)  # not started: nothing runs
    assert engine.engines == [engine]
    group = AsyncEngineGroup(tiny_v1, devices=["cpu", "cpu"])
    assert len(group.engines) == 2 and all(isinstance(e, AsyncEngine) for e in group.engines)
    assert not group.has_request("x") and group.num_unfinished == 0
