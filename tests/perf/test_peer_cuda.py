"""The nano-vllm-voxcpm adapter and our engine on CUDA under the same drivers (marked ``gpu``).

Needs a CUDA device, the ``nano-vllm-voxcpm`` package and ``flash_attn`` (the stand-in in
``../shared/tools/flash_attn_shim`` does). Every request must run exactly its fixed length on both
engines, with chunks of one patch each at the same sample rate.
"""

from __future__ import annotations

import pytest
import torch

from perf.drivers import Sampling, closed_sweep, run_closed, run_open_loop
from perf.local_engine import LocalEngine, engine_config
from perf.peer import PeerEngine, peer_unavailable
from voxcpm_engine.io.checkpoint import read_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

LIMITS = dict(max_num_seqs=4, max_model_len=512, max_num_batched_tokens=4096, gpu_memory_utilization=0.3)


def _check_run(run, cfg, steps: int, n: int) -> None:
    assert len(run.traces) == n and run.patches == n * steps
    for t in run.traces:
        assert t.ok, t.error
        assert len(t.arrivals) == steps
        assert t.audio_s == pytest.approx(steps * cfg.samples_per_patch / cfg.sample_rate)
        assert t.ttfb > 0 and t.rtf > 0


def test_ours_on_cuda(tiny_ckpt):
    cfg = read_config(tiny_ckpt)
    engine = LocalEngine.load(tiny_ckpt, "cuda", engine_config(**LIMITS))
    try:
        run = run_closed(engine, concurrency=3, num_requests=4, sampling=Sampling(steps=5), tag="g-")
        _check_run(run, cfg, 5, 4)
        assert engine.engine.runner.graph_steps > 0
        assert run.memory["kind"] == "cuda_max_allocated" and run.memory["gib"] > 0
    finally:
        engine.close()


def test_peer_same_protocol(tiny_ckpt):
    why = peer_unavailable()
    if why is not None:
        pytest.skip(why)
    cfg = read_config(tiny_ckpt)
    peer = PeerEngine(tiny_ckpt, device="cuda", **LIMITS)
    try:
        assert peer.sample_rate == cfg.sample_rate
        run = run_closed(peer, concurrency=3, num_requests=4, sampling=Sampling(steps=5), tag="p-")
        _check_run(run, cfg, 5, 4)
        assert not peer.has_unfinished()
        ol = run_open_loop(peer, rate=20.0, duration_s=0.5, sampling=Sampling(steps=4), tag="po-", seed=1)
        _check_run(ol, cfg, 4, len(ol.traces))
        rows = closed_sweep(
            peer,
            levels=[1, 2],
            requests_per_level=None,
            sampling=Sampling(steps=3),
            warmup=1,
            warmup_steps=2,
            peak_tflops=None,
            log=lambda _: None,
        )
        assert [r["ok"] for r in rows] == [1, 2]
    finally:
        peer.close()
