"""The async engine client against real spawned engine-core processes on the tiny models (CPU).

The shared engine and its in-process twin run the same bf16 model on one torch thread each, so a
request's chunks through the process must equal the in-process ``Engine``'s bit for bit.
Tests on the shared engine run on one module-wide event loop: an ``AsyncEngine`` belongs to the
loop it was started on.
"""

import asyncio
import io
import os
import shutil
import signal
import time

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.voxcpm_engine.proc.engine_helpers import (
    CONFIG,
    LONG,
    SMALL,
    TEXT,
    collect,
    flac,
    params,
    settled,
    started_engine,
    tone,
)
from voxcpm_engine.engine import Engine
from voxcpm_engine.io.checkpoint import CheckpointError, load_checkpoint
from voxcpm_engine.io.prompt_audio import AudioLimitError, AudioLimits, load_audio
from voxcpm_engine.proc.client import AsyncEngine
from voxcpm_engine.proc.errors import EngineDeadError, EngineStartError, InvalidRequest, RequestCancelled
from voxcpm_engine.sched.request import RequestStatus
from voxcpm_engine.tools.synthetic_lora import write_lora
from voxcpm_engine.types import RequestField, Voice


def _local_run(engine, request_id, text, params, lora=None):
    engine.add_request(request_id, text, params=params, lora=lora)
    chunks = []
    while engine.has_unfinished():
        chunks += [o.audio for o in engine.step() if o.audio is not None]
    return chunks


class _Runner:
    """One event loop for the module's shared engine (an ``AsyncEngine`` belongs to the loop it was started on)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro):
        return self.loop.run_until_complete(coro)


@pytest.fixture(scope="module")
def runner():
    r = _Runner()
    yield r
    r.loop.close()


@pytest.fixture(scope="module")
def engine(runner, tiny_v2):
    with started_engine(runner, tiny_v2, CONFIG) as eng:
        yield eng


@pytest.fixture(scope="module")
def local(tiny_v2):
    return Engine(load_checkpoint(tiny_v2), CONFIG)


def test_stream_equals_in_process_engine(runner, engine, local):
    assert engine.sample_rate == local.sample_rate and engine.model_info.version == 2
    chunks = runner.run(collect(engine.generate("same", TEXT, params=params(5, 7))))
    expected = _local_run(local, "same", TEXT, params(5, 7))
    assert len(chunks) == 5 and all(c.dtype == np.float32 and c.shape == (engine.samples_per_patch,) for c in chunks)
    np.testing.assert_array_equal(np.concatenate(chunks), np.concatenate(expected))
    # a voice's latents (torch tensors) travel in the add message
    ref = torch.randn(3, local.model_config.patch_size, 64, generator=torch.Generator().manual_seed(0))
    voiced = runner.run(collect(engine.generate("ref", TEXT, voice=Voice(ref_latents=ref), params=params(3, 7))))
    local.add_request("ref", TEXT, voice=Voice(ref_latents=ref), params=params(3, 7))
    expected = [o.audio for _ in range(4) for o in local.step() if o.audio is not None]
    np.testing.assert_array_equal(np.concatenate(voiced), np.concatenate(expected))
    assert np.abs(np.concatenate(voiced) - np.concatenate(chunks)[: len(expected) * len(expected[0])]).max() > 0.01


def test_concurrent_generates_interleave_one_message_per_step(runner, engine):
    async def go():
        order = []

        async def consume(rid, n):
            async for _ in engine.generate(rid, TEXT, params=params(n, 1)):
                order.append(rid)

        before = (await engine.stats())["ipc"]["latency_us"]["count"]
        await asyncio.gather(*(consume(f"c{i}", 4 + i) for i in range(3)))
        return order, (await engine.stats())["ipc"]["latency_us"]["count"] - before

    order, messages = runner.run(go())
    assert [order.count(f"c{i}") for i in range(3)] == [4, 5, 6]
    last = {rid: len(order) - order[::-1].index(rid) for rid in set(order)}
    assert max(order.index(rid) for rid in last) < min(last.values())  # all started before any ended
    assert messages <= 8  # 15 chunks in ~6 steps: one message carries every output of a step


def test_abort_mid_stream_cancels_promptly_and_frees_the_engine(runner, engine):
    async def go():
        stream = engine.generate("ab", TEXT, params=params(LONG, 1))
        await anext(stream)
        assert await engine.abort("ab")
        t0 = time.monotonic()
        with pytest.raises(RequestCancelled):
            await collect(stream)
        elapsed = time.monotonic() - t0
        assert stream.status == RequestStatus.CANCELLED and not await engine.abort("ab")
        return elapsed, await settled(engine)

    elapsed, stats = runner.run(go())
    assert elapsed < 1.0
    assert (stats["running"], stats["waiting"], stats["unfinished"]) == (0, 0, 0)
    assert stats["kv_blocks_free"] == stats["kv_blocks_total"]


def test_leaving_early_aborts(runner, engine):
    async def go():
        async for _ in engine.generate("br", TEXT, params=params(LONG, 2)):
            break  # the stream is dropped here: the request must not run on
        first = await settled(engine)
        started = asyncio.Event()

        async def consume():
            async for _ in engine.generate("tc", TEXT, params=params(LONG, 3)):
                started.set()

        task = asyncio.create_task(consume())
        await started.wait()
        task.cancel()  # what the HTTP server does when the client disconnects
        with pytest.raises(asyncio.CancelledError):
            await task
        return first, await settled(engine)

    for stats in runner.run(go()):
        assert (stats["running"], stats["waiting"], stats["unfinished"]) == (0, 0, 0)
        assert stats["kv_blocks_free"] == stats["kv_blocks_total"]


def test_invalid_requests_fail_alone(runner, engine):
    async def go():
        with pytest.raises(InvalidRequest, match="unknown voice 'nope'") as err:
            await collect(engine.generate("bad1", TEXT, lora="nope"))
        assert err.value.field is RequestField.VOICE  # the part at fault crosses the process boundary typed
        with pytest.raises(InvalidRequest, match="text must not be empty") as err:
            await collect(engine.generate("bad2", "  "))
        assert err.value.reason == "text must not be empty"
        assert err.value.field is RequestField.TEXT
        stream = engine.generate("dup", TEXT, params=params(2, 1))
        with pytest.raises(ValueError, match="already in flight"):
            engine.generate("dup", TEXT)
        assert len(await collect(stream)) == 2  # still serving
        with pytest.raises(RequestCancelled):  # deadlines fire in the engine
            await asyncio.wait_for(collect(engine.generate("late", TEXT, params=params(LONG, 1), deadline_s=0.2)), 2)

    runner.run(go())


def test_lora_voice_through_the_process(runner, engine, local, tiny_v2, tmp_path):
    adapter = write_lora(tiny_v2, tmp_path / "v", rank=4)

    async def go():
        assert await engine.register_voice("v", adapter) == local.register_voice("v", adapter)
        voiced = await collect(engine.generate("lv", TEXT, params=params(4, 5), lora="v"))
        plain = await collect(engine.generate("lp", TEXT, params=params(4, 5)))
        assert (await engine.stats())["adapters"] is not None
        await engine.unregister_voice("v")
        with pytest.raises(KeyError, match="not registered"):
            await engine.unregister_voice("v")
        with pytest.raises(InvalidRequest, match="unknown voice"):
            await collect(engine.generate("lg", TEXT, lora="v"))
        return np.concatenate(voiced), np.concatenate(plain)

    voiced, plain = runner.run(go())
    assert np.abs(voiced - plain).max() > 0.01  # the adapter changes the voice
    np.testing.assert_array_equal(voiced, np.concatenate(_local_run(local, "lv", TEXT, params(4, 5), lora="v")))
    local.unregister_voice("v")


def test_bad_checkpoint_fails_start_with_the_loaders_message(tiny_v1, tmp_path):
    bad = shutil.copytree(tiny_v1, tmp_path / "bad")
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError) as expected:
        load_checkpoint(bad)

    async def go():
        eng = AsyncEngine(bad, SMALL, num_threads=1)
        with pytest.raises(EngineStartError) as err:
            await eng.start()
        assert str(expected.value) in str(err.value)
        assert not eng.is_alive and eng._process.exitcode == 1
        with pytest.raises(EngineDeadError):
            eng.generate("x", TEXT)
        await eng.stop()

    asyncio.run(go())


def test_sigkill_fails_pending_generates_within_a_second(tiny_v1):
    async def go():
        eng = AsyncEngine(tiny_v1, SMALL, num_threads=1)
        await eng.start()
        with pytest.raises(ValueError, match="serves no LoRA"):
            await eng.register_voice("v", "/nowhere")
        streams = [eng.generate(f"k{i}", TEXT, params=params(LONG, i)) for i in range(3)]
        await anext(streams[0])
        os.kill(eng.pid, signal.SIGKILL)
        t0 = time.monotonic()
        results = await asyncio.wait_for(asyncio.gather(*(collect(s) for s in streams), return_exceptions=True), 5)
        elapsed = time.monotonic() - t0
        assert all(isinstance(r, EngineDeadError) for r in results), results
        stats = await eng.stats()
        assert not stats["alive"] and stats["pid"] == eng.pid and "exit code -9" in stats["error"]
        with pytest.raises(EngineDeadError):
            eng.generate("new", TEXT)
        with pytest.raises(EngineDeadError):
            await eng.unregister_voice("v")
        assert not await eng.abort("k1")
        await eng.stop()
        return elapsed

    assert asyncio.run(go()) < 1.0


def test_encode_prompt_through_the_process_equals_in_process(runner, engine, local):

    wav = np.sin(np.linspace(0, 200, local.sample_rate // 2)).astype(np.float32) * 0.3
    buf = io.BytesIO()
    sf.write(buf, wav, local.sample_rate, format="WAV")
    audio = buf.getvalue()

    async def go():
        prompt = await engine.encode_prompt(audio)
        ref = await engine.encode_prompt(audio, reference=True)
        with pytest.raises(ValueError, match="audio"):
            await engine.encode_prompt(b"not audio at all")
        return prompt, ref

    prompt, ref = runner.run(go())
    torch.testing.assert_close(prompt, local.frontend.encode_prompt(audio), rtol=0, atol=0)
    torch.testing.assert_close(ref, local.frontend.encode_prompt(audio, reference=True), rtol=0, atol=0)
    assert prompt.dtype == torch.float32 and prompt.shape[-1] == 64


def test_encode_prompt_decodes_here_and_equals_in_process(runner, engine, local):
    """A file is decoded, downmixed and resampled in this process; the latents equal the in-process path's."""
    audio = flac(np.stack([tone(44_100, 1.3), tone(44_100, 1.3, 330.0)], axis=1), 44_100)
    rate = local.frontend.config.encode_sample_rate
    samples = load_audio(audio, rate)

    async def go():
        from_file = await engine.encode_prompt(audio, limits=AudioLimits(max_seconds=2.0))
        from_samples = await engine.encode_prompt(samples, reference=True)
        with pytest.raises(AudioLimitError, match="1.30 s of audio exceeds the limit of 1 s"):
            await engine.encode_prompt(audio, limits=AudioLimits(max_seconds=1.0))
        with pytest.raises(ValueError, match="1-D float32"):
            await engine.encode_prompt(samples.astype(np.float64))
        return from_file, from_samples

    from_file, from_samples = runner.run(go())
    assert engine.encode_sample_rate == rate
    assert torch.equal(from_file, local.frontend.encode_prompt(audio))
    assert torch.equal(from_samples, local.frontend.encode_prompt(audio, reference=True))


def test_latents_asked_for_come_back_with_the_stream_end(runner, engine, local):
    import dataclasses

    asked = dataclasses.replace(params(4, 3), return_latents=True)

    async def go():
        stream = engine.generate("lat", TEXT, params=asked)
        chunks = await collect(stream)
        plain = engine.generate("plain", TEXT, params=params(2, 3))
        await collect(plain)
        return chunks, stream.latents, plain.latents

    chunks, latents, none = runner.run(go())
    local.add_request("lat", TEXT, params=asked)
    finals = [o.latents for _ in range(8) for o in local.step() if o.finished]
    assert len(chunks) == 4 and none is None
    np.testing.assert_array_equal(latents, finals[0])  # as the engine made them, through the pipe


def test_audio_in_the_pipe_equals_audio_through_the_ring(runner, engine, tiny_v2):
    import dataclasses
    import glob

    piped = AsyncEngine(tiny_v2, dataclasses.replace(CONFIG, audio_ring_slots=0), num_threads=1)

    async def go():
        await piped.start()
        try:
            plain = await collect(piped.generate("p", TEXT, params=params(4, 11)))
        finally:
            await piped.stop()
        ringed = await collect(engine.generate("p", TEXT, params=params(4, 11)))
        return plain, ringed

    plain, ringed = runner.run(go())
    assert engine.ready.audio_ring is not None and piped.ready.audio_ring is None
    np.testing.assert_array_equal(np.concatenate(plain), np.concatenate(ringed))
    assert not glob.glob("/dev/shm/voxcpm-audio-*")  # every ring's name is gone once mapped
