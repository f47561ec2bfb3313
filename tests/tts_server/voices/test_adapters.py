"""EngineAdapters against a real engine process on the tiny VoxCPM2 model (CPU), with real adapter files."""

import itertools
import logging
import shutil

import pytest

from tts_server.errors import ApiError
from tts_server.voices import files as vf
from tts_server.voices.adapters import EngineAdapters
from tts_server.voices.entry import VoiceEntry, VoiceState
from voxcpm_engine.proc.errors import InvalidRequest
from voxcpm_engine.tools.synthetic_lora import write_lora
from voxcpm_engine.types import GenerationParams, Voice

_IDS = itertools.count()


def _speaks_with(runner, engine, name: str) -> bool:
    """Whether the engine accepts a request with the voice's adapter (it refuses an unknown one)."""

    async def go() -> bool:
        params = GenerationParams(min_steps=1, max_steps=1, seed=0)
        try:
            async for _ in engine.generate(f"probe-{name}-{next(_IDS)}", "Hi.", params=params, lora=name):
                pass
        except InvalidRequest:
            return False
        return True

    return runner.run(go())


def test_register_and_unregister(runner, engine, tiny_v2, tmp_path):
    adapters = EngineAdapters(engine)
    lora_dir = write_lora(tiny_v2, tmp_path / vf.LORA_DIR, rank=4, seed=0)
    runner.run(adapters.register("a1", lora_dir, None, tmp_path))
    assert _speaks_with(runner, engine, "a1")
    runner.run(adapters.unregister("a1"))
    assert not _speaks_with(runner, engine, "a1")


def test_a_refused_adapter_names_the_field_and_no_path(runner, engine, tiny_v2, tmp_path):
    adapters = EngineAdapters(engine)
    lora_dir = write_lora(tiny_v2, tmp_path / "staging" / vf.LORA_DIR, rank=4, seed=0)
    (lora_dir / "lora_weights.safetensors").write_bytes(b"0" * 64)
    with pytest.raises(ApiError) as caught:
        runner.run(adapters.register("a2", lora_dir, None, tmp_path / "a2"))
    assert caught.value.status == 400 and caught.value.field == "lora_weights"
    assert str(tmp_path) not in caught.value.message
    assert not _speaks_with(runner, engine, "a2")


def test_restore_puts_back_the_committed_adapter_or_none(runner, engine, tiny_v2, tmp_path):
    adapters = EngineAdapters(engine)
    committed = tmp_path / "a3"
    write_lora(tiny_v2, committed / vf.LORA_DIR, rank=4, seed=0)
    new = write_lora(tiny_v2, tmp_path / "staging" / vf.LORA_DIR, rank=4, seed=1)
    runner.run(adapters.register("a3", new, None, committed))
    old = VoiceEntry("a3", VoiceState.READY, Voice(), lora=True)
    shutil.rmtree(new)  # the registry validated and copied the files while registering
    runner.run(adapters.restore("a3", old, committed))
    assert _speaks_with(runner, engine, "a3")
    runner.run(adapters.restore("a3", None, committed))  # no old voice: the adapter goes
    assert not _speaks_with(runner, engine, "a3")


def test_unregister_of_an_unknown_adapter_warns_unless_quiet(runner, engine, caplog):
    adapters = EngineAdapters(engine)
    with caplog.at_level(logging.WARNING, logger="tts_server.voices.adapters"):
        runner.run(adapters.unregister("never", quiet=True))
        assert not caplog.records
        runner.run(adapters.unregister("never"))
    assert "no adapter 'never'" in caplog.text
