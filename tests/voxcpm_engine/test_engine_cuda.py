"""The batched engine on CUDA (marked ``gpu``): Triton kernels, batch invariance, LoRA rows, streaming.

fp32 on the GPU (cuBLAS without TF32 for fp32 matmuls by default) keeps rounding small enough for
the same tolerance idea as on the CPU; bf16 runs are checked for shape and finiteness only.
"""

import numpy as np
import pytest
import torch

from tests.voxcpm_engine.test_engine import _run
from voxcpm_engine.config.engine_config import EngineConfig
from voxcpm_engine.engine import Engine
from voxcpm_engine.io.checkpoint import load_checkpoint
from voxcpm_engine.single.synthesizer import Synthesizer
from voxcpm_engine.types import GenerationParams

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

GPU_ATOL = 2e-3


def _params(n, seed):
    return GenerationParams(min_steps=n, max_steps=n, seed=seed)


def _engine(ckpt, backend=None, **kw):
    cfg = EngineConfig(
        **{"max_num_seqs": 8, "max_num_batched_tokens": 32, "max_model_len": 256, "vae_tf32": False, **kw}
    )
    return Engine(ckpt, cfg, attention_backend=backend)


@pytest.mark.parametrize("name", ["tiny_v1", "tiny_v2"])
def test_triton_engine_matches_single_request_and_torch_backend(request, name):
    ckpt = load_checkpoint(request.getfixturevalue(name), device="cuda", dtype="float32")
    single = Synthesizer(ckpt).generate("The request under test.", params=_params(6, 5))
    outs = {}
    for backend in ("triton", "torch"):
        engine = _engine(ckpt, backend)
        engine.add_request(
            "a", "A longer neighbour that is prefilled in chunks of the token budget.", params=_params(8, 1)
        )
        engine.add_request("x", "The request under test.", params=_params(6, 5))
        outs[backend] = _run(engine)[0]
    np.testing.assert_allclose(outs["triton"]["x"], single, atol=GPU_ATOL, rtol=0)
    np.testing.assert_allclose(outs["triton"]["a"], outs["torch"]["a"], atol=GPU_ATOL, rtol=0)


def test_bf16_engine_runs_a_crowd(tiny_v2):
    ckpt = load_checkpoint(tiny_v2, device="cuda")
    engine = _engine(ckpt, max_num_seqs=32, max_num_batched_tokens=256)
    for i in range(24):
        engine.add_request(f"r{i}", f"Request {i}, " * (1 + i % 4), params=_params(4 + i % 5, i))
    out, status = _run(engine)
    assert all(len(out[f"r{i}"]) == (4 + i % 5) * ckpt.config.samples_per_patch for i in range(24))
    assert all(np.isfinite(a).all() for a in out.values())


def test_latents_come_back_whole_with_async_scheduling(tiny_v1):
    """The patches' host copy is queued behind the step and read after its sync: alone equals in a crowd."""
    from tests.voxcpm_engine.test_engine import _latents

    ckpt = load_checkpoint(tiny_v1, device="cuda", dtype="float32")
    params = GenerationParams(min_steps=6, max_steps=6, seed=5, return_latents=True)
    alone = _engine(ckpt)
    alone.add_request("x", "The request under test.", params=params)
    solo = _latents(alone)["x"]
    crowd = _engine(ckpt, max_num_batched_tokens=256)
    for i in range(12):
        crowd.add_request(f"r{i}", f"Neighbour {i}, " * (1 + i % 3), params=_params(3 + i % 6, i))
    crowd.add_request("x", "The request under test.", params=params)
    mixed = _latents(crowd)["x"]
    assert solo.shape == (6, ckpt.config.patch_size, ckpt.config.feat_dim) and np.isfinite(solo).all()
    np.testing.assert_allclose(mixed, solo, atol=GPU_ATOL, rtol=0)


def test_vae_on_its_own_stream_gives_the_same_audio(tiny_v1, tmp_path):
    """vae_overlap: the decode beside the next step's LMs changes no sample, through arrivals between
    steps, an abort, slots freed and taken again (zeroed on the decode's stream) and a prompted voice
    whose warm-up state is made on the caller's stream."""
    import soundfile as sf

    t = np.arange(16000) / 16000
    path = tmp_path / "p.wav"
    sf.write(path, 0.3 * np.sin(2 * np.pi * 200 * t), 16000)
    ckpt = load_checkpoint(tiny_v1, device="cuda", dtype="float32")
    voice = Synthesizer(ckpt).make_voice(prompt_text="A prompt.", prompt_audio=path)
    results = {}
    for overlap in (False, True):
        engine = _engine(ckpt, max_num_seqs=8, max_num_batched_tokens=256, vae_overlap=overlap)
        assert (engine._vae_streams.stream is not None) == overlap
        chunks, status, arrivals = {}, {}, iter(range(20))
        for step in range(200):
            if step % 2 == 0 and (i := next(arrivals, None)) is not None:
                n = 40 if i == 1 else 3 + i % 5  # r1 is aborted mid-stream
                engine.add_request(
                    f"r{i}", f"Request {i}, " * (1 + i % 3), voice if i % 4 == 1 else None, _params(n, i)
                )
            if step == 5:
                assert engine.abort("r1")
            if not engine.has_unfinished() and step > 40:
                break
            for out in engine.step():
                if out.audio is not None:
                    chunks.setdefault(out.request_id, []).append(out.audio)
                status[out.request_id] = out.status
            engine.check_invariants()
        results[overlap] = ({k: np.concatenate(v) for k, v in chunks.items()}, status)
    (plain, plain_status), (side, side_status) = results[False], results[True]
    assert side_status == plain_status and len(plain) >= 19
    for rid, audio in plain.items():
        np.testing.assert_array_equal(side[rid], audio, err_msg=rid)
