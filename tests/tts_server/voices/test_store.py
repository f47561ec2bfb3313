"""VoiceStore against a real engine process on the tiny VoxCPM2 model (CPU), with real files on disk.

Every test runs on one module-wide event loop: the shared ``AsyncEngine`` belongs to the loop it
started on. Voice names are unique per test because the engine (and its adapters) is shared.
"""

import asyncio
import json
import logging
import os

import numpy as np
import pytest
import torch

from tests.tts_server.serving import sine_wav
from tests.tts_server.voices.conftest import CONFIG
from tts_server.errors import ApiError
from tts_server.voices.entry import VoiceState
from tts_server.voices.store import VoiceStore
from voxcpm_engine.io.checkpoint import read_config
from voxcpm_engine.proc.client import AsyncEngine
from voxcpm_engine.proc.errors import InvalidRequest
from voxcpm_engine.tools.synthetic_lora import write_lora
from voxcpm_engine.types import GenerationParams

TEXT = "A voice under test."


def _params(n, seed=1):
    return GenerationParams(min_steps=n, max_steps=n, seed=seed)


async def _collect(stream):
    return [chunk async for chunk in stream]


@pytest.fixture(scope="module")
def model(tiny_v2):
    cfg = read_config(tiny_v2)
    return {"model_version": cfg.version, "patch_size": cfg.patch_size, "latent_dim": cfg.feat_dim,
            "sample_rate": cfg.sample_rate}  # fmt: skip


def _store(engine, model, path, **overrides):
    return VoiceStore(path, engine, **{**model, "max_prompt_seconds": 5.0, **overrides})


@pytest.fixture
def store(engine, model, tmp_path):
    return _store(engine, model, tmp_path / "voices")


@pytest.fixture(scope="module")
def lora_files(tiny_v2, tmp_path_factory):
    """Two adapters (different seeds) as upload bytes: (weights, config document)."""
    out = []
    for seed in (0, 1):
        d = write_lora(tiny_v2, tmp_path_factory.mktemp("lora") / "a", rank=4, seed=seed)
        out.append(((d / "lora_weights.safetensors").read_bytes(), json.loads((d / "lora_config.json").read_text())))
    return out


def _api_error(runner, coro) -> ApiError:
    with pytest.raises(ApiError) as err:
        runner.run(coro)
    return err.value


def test_prompt_and_reference_voices_hold_the_engines_latents(runner, engine, store):
    wav = sine_wav(1.0)

    async def go():
        prompt = await store.add("p1", prompt_audio=wav, prompt_text="A prompt.")
        ref = await store.add("r1", ref_audio=wav)
        expected = (await engine.encode_prompt(wav), await engine.encode_prompt(wav, reference=True))
        audio = await _collect(engine.generate("p1", TEXT, voice=store.resolve("p1").voice, params=_params(2)))
        return prompt, ref, expected, audio

    prompt, ref, (prompt_latents, ref_latents), audio = runner.run(go())
    assert prompt["kinds"] == ["prompt"] and prompt["prompt_text"] == "A prompt." and prompt["prompt_seconds"] == 1.0
    assert prompt["replaced"] is False and prompt["state"] == "ready" and prompt["created"] == prompt["updated"]
    assert ref["kinds"] == ["reference"] and ref["ref_seconds"] == 1.0 and ref["prompt_text"] is None
    p, r = store.resolve("p1"), store.resolve("r1")
    assert p.lora is None and p.voice.prompt_text == "A prompt." and p.voice.ref_latents is None
    assert torch.equal(p.voice.prompt_latents, prompt_latents) and torch.equal(r.voice.ref_latents, ref_latents)
    assert r.voice.prompt_latents is None and r.voice.prompt_text is None
    assert len(audio) == 2
    assert store.names() == ["p1", "r1"] and [d["name"] for d in store.describe()] == ["p1", "r1"]
    assert sorted(os.listdir(store.root / "p1")) == ["prompt_latents.safetensors", "voice.json"]
    assert sorted(os.listdir(store.root)) == ["p1", "r1"]  # no staging leftovers
    zero = store.resolve(None)
    assert zero.lora is None and zero.voice.prompt_latents is None and zero.voice.ref_latents is None
    with pytest.raises(ApiError) as err:
        store.resolve("nope")
    assert (err.value.status, err.value.field, err.value.type) == (404, "voice", "not_found")
    assert err.value.message == "voice 'nope' not found"


def test_lora_voice_combined_with_latents_then_removed(runner, engine, store, lora_files):
    (weights, config), _ = lora_files
    wav = sine_wav(0.5)
    latents = torch.randn(3, 4, 64, generator=torch.Generator().manual_seed(3))

    async def go():
        combo = await store.add(
            "combo", prompt_audio=wav, prompt_text="Hi.", ref_latents=latents,
            lora_weights=weights, lora_config=config["lora_config"],  # the inner object is accepted too
        )  # fmt: skip
        resolved = store.resolve("combo")
        voiced = await _collect(
            engine.generate("c1", TEXT, voice=resolved.voice, lora=resolved.lora, params=_params(2))
        )
        await store.remove("combo")
        with pytest.raises(InvalidRequest, match="unknown voice"):
            await _collect(engine.generate("c2", TEXT, lora="combo", params=_params(2)))
        return combo, resolved, voiced

    combo, resolved, voiced = runner.run(go())
    assert combo["kinds"] == ["lora", "prompt", "reference"] and resolved.lora == "combo" and len(voiced) == 2
    assert torch.equal(resolved.voice.ref_latents, latents) and resolved.voice.prompt_latents.shape[1:] == (4, 64)
    assert store.names() == [] and store.get("combo") is None and os.listdir(store.root) == []
    assert _api_error(runner, store.remove("combo")).status == 404
    with pytest.raises(ApiError, match="not found"):
        store.resolve("combo")


def test_replace_keeps_serving_running_requests(runner, engine, store, lora_files):
    (w0, c0), (w1, c1) = lora_files

    async def go():
        await store.add("swap", lora_weights=w0, lora_config=c0)
        before = await _collect(engine.generate("s0", TEXT, lora="swap", params=_params(12, 5)))
        created = store.get("swap").created
        stream = engine.generate("s1", TEXT, lora=store.resolve("swap").lora, params=_params(12, 5))
        first = await anext(stream)
        old = store.get("swap")
        task = asyncio.create_task(store.add("swap", lora_weights=w1, lora_config=c1, replace=True))
        await asyncio.sleep(0.001)
        during = store.get("swap"), store.resolve("swap")  # the old voice serves until the new one is committed
        replaced = await task
        assert engine.has_request("s1") and store.get("swap") is not old  # the replace happened mid-stream
        during = (during[0] is old, during[1])
        spanning = [first, *await _collect(stream)]
        after = await _collect(engine.generate("s2", TEXT, lora="swap", params=_params(12, 5)))
        # a LoRA voice replaced by a prompt voice: the adapter is unregistered
        prompt = await store.add("swap", prompt_audio=sine_wav(0.3), prompt_text="Hello.", replace=True)
        with pytest.raises(InvalidRequest, match="unknown voice"):
            await _collect(engine.generate("s3", TEXT, lora="swap", params=_params(2)))
        return before, during, replaced, spanning, after, prompt, created

    before, during, replaced, spanning, after, prompt, created = runner.run(go())
    assert during[0] and during[1].lora == "swap" and replaced["replaced"] is True and replaced["created"] == created
    np.testing.assert_array_equal(np.concatenate(spanning), np.concatenate(before))  # finished with the old weights
    assert np.abs(np.concatenate(after) - np.concatenate(before)).max() > 1e-3  # new requests get the new ones
    assert prompt["kinds"] == ["prompt"] and store.resolve("swap").lora is None
    assert sorted(os.listdir(store.root / "swap")) == ["prompt_latents.safetensors", "voice.json"]
    assert sorted(os.listdir(store.root)) == ["swap"]


def test_restart_restores_every_voice(runner, store, model, tiny_v2, lora_files, tmp_path):
    (weights, config), _ = lora_files
    wav = sine_wav(0.8)
    runner.run(store.add("keep-p", prompt_audio=wav, prompt_text="Kept."))
    runner.run(store.add("keep.r_2", ref_audio=wav, lora_weights=weights, lora_config=config))
    old = {n: store.resolve(n) for n in store.names()}

    async def restart():
        fresh = AsyncEngine(tiny_v2, CONFIG, num_threads=1)
        await fresh.start()
        try:
            again = _store(fresh, model, store.root)
            loaded = await again.load_all()
            r = again.resolve("keep.r_2")
            audio = await _collect(fresh.generate("k", TEXT, voice=r.voice, lora=r.lora, params=_params(2)))
            return again, loaded, audio
        finally:
            await fresh.stop()

    again, loaded, audio = runner.run(restart())
    assert loaded == ["keep-p", "keep.r_2"] and len(audio) == 2
    assert again.describe() == store.describe()
    for name, before in old.items():
        now = again.resolve(name)
        assert now.lora == before.lora and now.voice.prompt_text == before.voice.prompt_text
        for field in ("prompt_latents", "ref_latents"):
            a, b = getattr(now.voice, field), getattr(before.voice, field)
            assert (a is None and b is None) or torch.equal(a, b)


def test_corrupt_voices_are_skipped_and_interrupted_changes_recovered(runner, engine, store, model, tmp_path, caplog):
    wav = sine_wav(0.3)
    for name in ("good", "truncated", "badjson", "nolora", "moved"):
        runner.run(store.add(name, prompt_audio=wav, prompt_text="Fine."))
    root = store.root
    data = (root / "truncated" / "prompt_latents.safetensors").read_bytes()
    (root / "truncated" / "prompt_latents.safetensors").write_bytes(data[:-10])
    (root / "badjson" / "voice.json").write_text("{not json")
    doc = json.loads((root / "nolora" / "voice.json").read_text())
    (root / "nolora" / "voice.json").write_text(json.dumps({**doc, "kinds": {**doc["kinds"], "lora": True}}))
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "escape").symlink_to(outside, target_is_directory=True)
    os.rename(root / "moved", root / ".replaced.moved.1a2b3c4d")  # a replace interrupted between its renames
    (root / ".staging.good.abc").mkdir()  # a write interrupted before its commit
    (root / "not a name").mkdir()
    (root / "README").write_text("stray files are ignored")

    again = _store(engine, model, root)
    with caplog.at_level(logging.WARNING, logger="tts_server.voices.store"):
        loaded = runner.run(again.load_all())
    assert loaded == ["good", "moved"]
    failed = {d["name"]: d["error"] for d in again.describe(include_failed=True) if d["state"] == "failed"}
    assert set(failed) == {"truncated", "badjson", "nolora", "escape"}
    assert (
        "sha256" in failed["truncated"]
        and "symbolic links" in failed["escape"]
        and failed["nolora"].startswith("lora/ must hold")
    )
    for name in failed:
        assert any(name in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR), name
        assert again.get(name).state is VoiceState.FAILED
        with pytest.raises(ApiError, match="not found"):
            again.resolve(name)
    assert not (root / ".staging.good.abc").exists() and (root / "not a name").exists()
    with pytest.raises(RuntimeError, match="twice"):
        runner.run(again.load_all())
    err = _api_error(runner, again.add("truncated", prompt_audio=wav, prompt_text="x"))
    assert err.status == 409 and "cannot be loaded" in err.message
    assert runner.run(again.add("truncated", prompt_audio=wav, prompt_text="x", replace=True))["replaced"] is False
    for name in ("badjson", "escape"):  # an unusable voice can be removed (a symlink: the link only)
        runner.run(again.remove(name))
    assert not (root / "badjson").exists() and not os.path.lexists(root / "escape") and outside.exists()
    assert not any(n.startswith(".removed.") for n in os.listdir(root))


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "", "x" * 65, "a..b", "é", "-x", "a b", "x\n"])
def test_unsafe_names_are_rejected(runner, store, name):
    err = _api_error(runner, store.add(name, prompt_audio=b"x", prompt_text="x"))
    assert (err.status, err.field) == (400, "name") and "invalid voice name" in err.message
    assert _api_error(runner, store.remove(name)).field == "name"
    assert os.listdir(store.root) == []


def test_concurrent_adds(runner, store):
    wav = sine_wav(0.3)

    async def go():
        both = await asyncio.gather(
            store.add("one", prompt_audio=wav, prompt_text="One."), store.add("two", ref_audio=wav)
        )
        same = await asyncio.gather(
            *(store.add("dup", prompt_audio=wav, prompt_text="Dup.") for _ in range(2)), return_exceptions=True
        )
        # a caller that goes away (client disconnect) does not abandon the change half-way
        task = asyncio.create_task(store.add("kept", prompt_audio=wav, prompt_text="Kept."))
        await asyncio.sleep(0.001)
        assert store.get("kept").state is VoiceState.LOADING and "kept" not in store.names()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        async def ready():
            while store.get("kept").state is not VoiceState.READY:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(ready(), 10)
        return both, same

    both, same = runner.run(go())
    assert [d["name"] for d in both] == ["one", "two"] and store.names() == ["dup", "kept", "one", "two"]
    assert isinstance(same[0], dict) and isinstance(same[1], ApiError) and same[1].status == 409
    assert same[1].field == "name" and same[1].type == "conflict"
    assert len(store._changes) == 0  # per-name locks do not outlive their users


def test_invalid_inputs_name_the_field(runner, engine, store, model, lora_files):
    (weights, config), _ = lora_files
    wav, good = sine_wav(0.3), torch.zeros(2, 4, 64)
    bad_rank = {**config, "lora_config": {**config["lora_config"], "r": 8, "alpha": 16}}
    cases = [
        ({"prompt_audio": b"not audio", "prompt_text": "x"}, 400, "prompt_audio", "cannot decode"),
        ({"prompt_text": "x"}, 400, "prompt_text", "without prompt_audio"),
        ({"prompt_audio": wav}, 400, "prompt_text", "required"),
        ({"prompt_audio": wav, "prompt_text": "  "}, 400, "prompt_text", "non-empty"),
        ({"prompt_audio": wav, "prompt_latents": good, "prompt_text": "x"}, 400, "prompt_latents", "alternatives"),
        ({"prompt_latents": torch.zeros(2, 2, 64), "prompt_text": "x"}, 400, "prompt_latents", "shape"),
        ({"ref_latents": torch.full((2, 4, 64), float("nan"))}, 400, "ref_latents", "NaN"),
        ({"ref_latents": torch.zeros(40, 4, 64)}, 413, "ref_latents", "limit"),
        ({"ref_audio": sine_wav(5.5)}, 413, "ref_audio", "limit of 5 s"),
        ({"ref_audio": b""}, 400, "ref_audio", "non-empty"),
        ({"lora_weights": weights}, 400, "lora_config", "together"),
        ({"lora_weights": b"0" * 64, "lora_config": config}, 400, "lora_weights", "not a safetensors"),
        ({"lora_weights": weights, "lora_config": bad_rank}, 400, "lora_weights", "mis-shaped"),
        ({"lora_weights": weights, "lora_config": {"r": 0}}, 400, "lora_config", "lora_config.r"),
        ({}, 400, None, "a voice needs"),
    ]
    for kwargs, status, field, words in cases:
        err = _api_error(runner, store.add("bad", **kwargs))
        assert (err.status, err.field) == (status, field) and words in err.message, (kwargs.keys(), err.message)
        assert str(store.root) not in err.message  # no server paths in client messages
    assert store.names() == [] and os.listdir(store.root) == []
    v1 = _store(engine, model, None, model_version=1)
    err = _api_error(runner, v1.add("ref", ref_audio=wav))
    v1.close()
    assert (err.status, err.field) == (400, "ref_audio") and "VoxCPM2" in err.message
    runner.run(store.add("exists", ref_audio=wav))
    err = _api_error(runner, store.add("exists", ref_audio=wav))
    assert (err.status, err.field, err.type) == (409, "name", "conflict")


def test_in_memory_store_persists_nothing(runner, engine, model, lora_files):
    (weights, config), _ = lora_files
    mem = _store(engine, model, None)
    assert runner.run(mem.load_all()) == []
    runner.run(mem.add("m", prompt_audio=sine_wav(0.3), prompt_text="Mem.", lora_weights=weights, lora_config=config))
    assert mem.resolve("m").lora == "m" and not mem.persistent
    runner.run(mem.remove("m"))
    mem.close()
    assert not mem.root.exists()
