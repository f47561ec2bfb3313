"""The batched engine on the tiny presets: batch invariance, streaming, abort, prefix cache, preemption.

Equality tests run the model in fp32 and allow BATCH_ATOL (absolute, on audio of ~0.13 std).
Batched CPU matmuls and paged attention round the last bits differently from a request computed
alone; in bf16 a random-weight model amplifies one-ulp differences through the AR loop into
audio differences of ~0.2 within six steps (measured), which says nothing about the logic. In
fp32 the same comparisons agree to ~1.4e-5 (measured), so any scheduling, caching or state bug
shows up as an O(0.1) difference.
"""

import numpy as np
import pytest
import torch

from tests.voxcpm_engine.vae_bf16 import SYNTHETIC_TINY_SNR_DB, snr_db
from voxcpm_engine.config.engine_config import EngineConfig
from voxcpm_engine.engine import Engine
from voxcpm_engine.io.checkpoint import load_checkpoint
from voxcpm_engine.sched.request import RequestStatus
from voxcpm_engine.single.synthesizer import Synthesizer
from voxcpm_engine.types import GenerationParams

BATCH_ATOL = 1e-4


def _params(n, seed, **kw):
    return GenerationParams(min_steps=n, max_steps=n, seed=seed, **kw)


@pytest.fixture(scope="module")
def ckpt_v1_bf16(tiny_v1):
    return load_checkpoint(tiny_v1)


def _engine(ckpt, **kw):
    return Engine(ckpt, EngineConfig(**{"max_num_seqs": 8, "max_num_batched_tokens": 64, "max_model_len": 256, **kw}))


def _run(engine, check=True):
    """Step until done; returns per-request chunks and final statuses; checks invariants every step."""
    chunks, status = {}, {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.audio is not None:
                chunks.setdefault(out.request_id, []).append(out.audio)
            status[out.request_id] = out.status
        if check:
            engine.check_invariants()
    assert engine.blocks.num_free == engine.blocks.num_blocks  # no leaked KV block
    return {k: np.concatenate(v) for k, v in chunks.items()}, status


@pytest.mark.parametrize("name", ["ckpt_v1", "ckpt_v2"])
def test_alone_equals_in_a_mixed_batch_equals_single_request_path(request, name):
    ckpt = request.getfixturevalue(name)
    single = Synthesizer(ckpt).generate("The request under test.", params=_params(6, 5))
    alone = _engine(ckpt)
    alone.add_request("x", "The request under test.", params=_params(6, 5))
    solo, status = _run(alone)
    assert status["x"] == RequestStatus.FINISHED_LENGTH
    np.testing.assert_allclose(solo["x"], single, atol=BATCH_ATOL, rtol=0)
    crowd = _engine(ckpt)
    crowd.add_request("a", "Another, much longer request that arrives first and keeps going.", params=_params(9, 1))
    crowd.add_request("x", "The request under test.", params=_params(6, 5))
    crowd.add_request("b", "Short.", params=_params(3, 2, cfg_value=1.5, temperature=0.7))
    mixed, status = _run(crowd)
    assert {k: len(v) for k, v in mixed.items()} == {
        k: n * ckpt.config.samples_per_patch for k, n in (("a", 9), ("x", 6), ("b", 3))
    }
    np.testing.assert_allclose(mixed["x"], solo["x"], atol=BATCH_ATOL, rtol=0)


def test_continuation_and_reference_in_the_batch(ckpt_v2, tmp_path):
    import soundfile as sf

    t = np.arange(16000) / 16000
    path = tmp_path / "p.wav"
    sf.write(path, 0.3 * np.sin(2 * np.pi * 200 * t), 16000)
    synth = Synthesizer(ckpt_v2)
    voice = synth.make_voice(prompt_text="A prompt.", prompt_audio=path, ref_audio=path)
    single = synth.generate("Cloned voice.", voice, _params(5, 9))
    engine = _engine(ckpt_v2)
    engine.add_request("z", "Zero shot.", params=_params(4, 3))
    engine.add_request("c", "Cloned voice.", voice, _params(5, 9))
    out, _ = _run(engine)
    np.testing.assert_allclose(out["c"], single, atol=BATCH_ATOL, rtol=0)


def test_chunked_prefill_does_not_stall_running_streams(ckpt_v1):
    engine = _engine(ckpt_v1, max_num_batched_tokens=8)
    engine.add_request("first", "Hi.", params=_params(12, 1))
    for _ in range(3):
        engine.step()
    engine.add_request(
        "long", "A prompt long enough to need several prefill chunks of eight positions.", params=_params(2, 2)
    )
    for _ in range(4):
        produced = {o.request_id for o in engine.step()}
        assert "first" in produced  # one chunk per step for "first", every step
    _run(engine)


def test_abort_in_every_state_frees_everything(ckpt_v1_bf16):
    engine = _engine(ckpt_v1_bf16, max_num_seqs=2, max_num_batched_tokens=8)
    engine.add_request("decoding", "Hi.", params=_params(20, 1))
    engine.step()
    engine.step()
    engine.add_request(
        "prefilling", "A long prompt that takes several chunks to prefill completely.", params=_params(5, 2)
    )
    engine.add_request("waiting", "Queued behind the others.", params=_params(5, 3))
    engine.step()
    assert engine.requests["prefilling"].num_computed < engine.requests["prefilling"].prompt_len
    assert engine.requests["waiting"].status == RequestStatus.WAITING
    for rid in ("decoding", "prefilling", "waiting"):
        assert engine.abort(rid)
        engine.check_invariants()
    assert not engine.abort("decoding")  # already gone
    outs = engine.step()
    assert sorted((o.request_id, o.status, o.audio) for o in outs) == [
        ("decoding", RequestStatus.CANCELLED, None),
        ("prefilling", RequestStatus.CANCELLED, None),
        ("waiting", RequestStatus.CANCELLED, None),
    ]
    assert engine.blocks.num_free == engine.blocks.num_blocks and not engine.has_unfinished()


def test_burst_of_aborts_during_prefill(ckpt_v2):
    engine = _engine(ckpt_v2, max_num_batched_tokens=16)
    for i in range(12):
        engine.add_request(f"r{i}", f"Request number {i} with a prompt of some length.", params=_params(4, i))
    engine.step()
    for i in range(0, 12, 2):
        engine.abort(f"r{i}")
    _, status = _run(engine)
    assert all(status[f"r{i}"] == RequestStatus.CANCELLED for i in range(0, 12, 2))
    assert all(status[f"r{i}"] == RequestStatus.FINISHED_LENGTH for i in range(1, 12, 2))


def test_prefix_cache_hit_gives_the_same_audio(ckpt_v2, tmp_path):
    import soundfile as sf

    path = tmp_path / "ref.wav"
    sf.write(path, 0.2 * np.random.default_rng(0).standard_normal(16000 * 2), 16000)
    voice = Synthesizer(ckpt_v2).make_voice(ref_audio=path)
    results = {}
    for caching in (False, True):
        engine = _engine(ckpt_v2, enable_prefix_caching=caching, block_size=4)
        engine.add_request("warm", "Warm the cache.", voice, _params(3, 1))
        _run(engine)
        engine.add_request("hit", "Now reuse the voice.", voice, _params(5, 4))
        cached = engine.requests["hit"]
        engine.step()
        assert (cached.num_cached > 0) == caching
        results[caching] = _run(engine)[0]["hit"]
    np.testing.assert_allclose(results[True], results[False], atol=BATCH_ATOL, rtol=0)


def test_kv_exhaustion_preempts_and_completes_everything_in_fifo_order(ckpt_v1):
    # 6 requests of ~10 prompt + 12 patches = 6 blocks of 4 each, in 14 blocks: not all fit.
    engine = _engine(ckpt_v1, block_size=4, num_kv_blocks=14, max_num_batched_tokens=64)
    reference = {}
    for i in range(6):
        engine.add_request(f"r{i}", f"Request {i} here.", params=_params(12, i))
        alone = _engine(ckpt_v1)
        alone.add_request("x", f"Request {i} here.", params=_params(12, i))
        reference[f"r{i}"] = _run(alone)[0]["x"]
    finished, chunks, preempted_any = [], {}, False
    while engine.has_unfinished():
        before = {r.request_id for r in engine.scheduler.running}
        outs = engine.step()
        engine.check_invariants()
        produced = {o.request_id for o in outs}
        preempted_any |= bool(before - {r.request_id for r in engine.scheduler.running} - produced)
        for o in outs:
            chunks.setdefault(o.request_id, []).append(o.audio)
            if o.finished:
                finished.append(o.request_id)
    assert preempted_any
    assert finished == [f"r{i}" for i in range(6)]
    for rid, ref in reference.items():  # recomputed requests continue where they were
        np.testing.assert_allclose(np.concatenate(chunks[rid]), ref, atol=BATCH_ATOL, rtol=0)


def test_request_that_can_never_fit_is_rejected(ckpt_v1):
    engine = _engine(ckpt_v1, max_model_len=40)
    with pytest.raises(ValueError, match="max_model_len"):
        engine.add_request("big", "Hello.", params=_params(60, 1))
    engine.add_request("ok", "Hello.", params=_params(3, 1))
    with pytest.raises(ValueError, match="already in flight"):
        engine.add_request("ok", "Hello.", params=_params(3, 1))


def test_stats_report_queue_blocks_and_rate(ckpt_v1):
    engine = _engine(ckpt_v1, max_num_seqs=1)
    engine.add_request("a", "Hello.", params=_params(4, 1))
    engine.add_request("b", "Hello.", params=_params(4, 2))
    engine.step()
    engine.step()
    stats = engine.stats()
    assert (stats["running"], stats["waiting"], stats["steps"]) == (1, 1, 2)
    assert stats["kv_blocks_free"] < stats["kv_blocks_total"] and stats["steps_per_s"] > 0
    assert stats["adapters"] is None
    _run(engine)
    assert engine.stats()["kv_blocks_free"] == engine.stats()["kv_blocks_total"]


def test_deadline_cancels(ckpt_v1):
    engine = _engine(ckpt_v1)
    engine.add_request("late", "Hello.", params=_params(50, 1), deadline_s=0.0)
    _, status = _run(engine)
    assert status["late"] == RequestStatus.CANCELLED


def test_the_first_audio_carries_when_each_stage_was_reached(ckpt_v1):
    engine = _engine(ckpt_v1, max_num_seqs=1)
    engine.add_request("a", "Hello.", params=_params(3, 1))
    engine.add_request("b", "Hello.", params=_params(3, 2))  # waits for "a": scheduled later
    timed: dict[str, list] = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.audio is not None:
                timed.setdefault(out.request_id, []).append(out.times)
    for request_id in ("a", "b"):
        first, *rest = timed[request_id]
        assert first is not None and all(t is None for t in rest)  # the first audio only
        stamps = first.as_tuple()
        assert list(stamps) == sorted(stamps) and stamps[0] > 0, stamps
    assert timed["b"][0].scheduled >= timed["a"][0].first_audio  # one slot: "b" waited for "a"


def _latents(engine):
    """Step until done; the final outputs' latents per request (every earlier output has none)."""
    finals = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                finals[out.request_id] = out.latents
            else:
                assert out.latents is None
    return finals


def test_a_request_can_take_its_latents_back_and_be_continued_from(ckpt_v1):
    import torch

    from voxcpm_engine.types import Voice

    engine = _engine(ckpt_v1)
    engine.add_request("kept", "A sentence to go on from.", params=_params(5, 1, return_latents=True))
    engine.add_request("plain", "Only audio.", params=_params(3, 2))
    engine.add_request("alone", "Neighbour.", params=_params(7, 3))
    finals = _latents(engine)
    latents = finals["kept"]
    cfg = ckpt_v1.config
    assert finals["plain"] is None and latents.dtype == np.float32 and np.isfinite(latents).all()
    assert latents.shape == (5, cfg.patch_size, cfg.feat_dim)
    again = _engine(ckpt_v1)  # the same seeded request in another batch: the same patches
    again.add_request("kept", "A sentence to go on from.", params=_params(5, 1, return_latents=True))
    np.testing.assert_allclose(_latents(again)["kept"], latents, atol=BATCH_ATOL, rtol=0)
    voice = Voice("A sentence to go on from.", torch.from_numpy(latents))
    engine.add_request("next", "And the next one.", voice, _params(4, 4))
    out, status = _run(engine)
    assert status["next"] == RequestStatus.FINISHED_LENGTH and len(out["next"]) == 4 * cfg.samples_per_patch


def test_bf16_vae_engine_streams_fp32_audio_close_to_the_fp32_vae(tiny_v1, tmp_path):
    """vae_dtype=bfloat16 end to end: a zero-shot and a prompted request (prompt encoded in fp32, its
    warm-up state handed to a bf16 slot); only the VAE differs, so the audio differs by its rounding."""
    import soundfile as sf

    t = np.arange(16000) / 16000
    path = tmp_path / "p.wav"
    sf.write(path, 0.3 * np.sin(2 * np.pi * 200 * t), 16000)
    audio = {}
    for vae_dtype in ("float32", "bfloat16"):
        ckpt = load_checkpoint(tiny_v1, dtype="float32")  # its own: the engine sets the VAE's decode dtype
        voice = Synthesizer(ckpt).make_voice(prompt_text="A prompt.", prompt_audio=path)
        engine = _engine(ckpt, vae_dtype=vae_dtype)
        assert str(ckpt.vae.decode_dtype) == f"torch.{vae_dtype}" and str(ckpt.vae.dtype) == "torch.float32"
        engine.add_request("z", "Zero shot.", params=_params(4, 3))
        engine.add_request("c", "Cloned voice.", voice, _params(5, 9))
        audio[vae_dtype], status = _run(engine)
        assert set(status.values()) == {RequestStatus.FINISHED_LENGTH}
    for name, n in (("z", 4), ("c", 5)):
        got, ref = audio["bfloat16"][name], audio["float32"][name]
        assert got.dtype == np.float32 and got.shape == ref.shape == (n * ckpt.config.samples_per_patch,)
        assert np.isfinite(got).all()
        assert snr_db(torch.from_numpy(got), torch.from_numpy(ref)) >= SYNTHETIC_TINY_SNR_DB, name
