"""``--profile``: the step split by the engine's named ranges, and one level through the engine process."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from perf.drivers import Sampling
from perf.local_engine import LocalEngine
from perf.profiling import RANGES, STEP_RANGE, ipc_level, profile_level, split_events
from voxcpm_engine.config.engine_config import EngineConfig

CPU = torch.autograd.DeviceType.CPU
CUDA = torch.autograd.DeviceType.CUDA


def _event(name: str, start_us: float, end_us: float, device_type=CPU, annotation: bool = False):
    return SimpleNamespace(
        name=name,
        cpu_time_total=end_us - start_us,
        time_range=SimpleNamespace(start=start_us, end=end_us),
        device_type=device_type,
        is_user_annotation=annotation,
    )


def test_split_events_per_step_and_other():
    # Two steps of 10 ms on the host; the GPU runs a decode graph, a VAE and one stray kernel.
    events = [
        _event(STEP_RANGE, 0, 10_000),
        _event(STEP_RANGE, 10_000, 20_000),
        _event("runner.decode_graph", 1_000, 5_000),
        _event("runner.decode_graph", 11_000, 15_000),
        _event("engine.vae", 6_000, 8_000),
        _event("engine.vae", 16_000, 18_000),
        # GPU-side copies of the ranges (spans on the device timeline) and the kernels in them
        _event("runner.decode_graph", 2_000, 7_000, CUDA, annotation=True),
        _event("runner.decode_graph", 12_000, 17_000, CUDA, annotation=True),
        _event("engine.vae", 7_500, 8_500, CUDA, annotation=True),
        _event("engine.vae", 17_500, 18_500, CUDA, annotation=True),
        _event("graph_kernel_a", 2_000, 4_000, CUDA),
        _event("graph_kernel_b", 5_000, 7_000, CUDA),  # a 1 ms gap inside the span: busy 4 of 5 ms
        _event("graph_kernel_a", 12_000, 14_000, CUDA),
        _event("graph_kernel_b", 15_000, 17_000, CUDA),
        _event("vae_conv", 7_500, 8_000, CUDA),
        _event("vae_conv", 17_500, 18_000, CUDA),
        _event("stray_copy", 9_000, 10_000, CUDA),  # outside every range: "other"
        _event("aten::mm", 100, 200),  # a CPU op: not a range, no device time of its own
    ]
    out = split_events(events, steps=2)
    assert out["host_ms_per_step"] == 10.0
    assert out["device_ms_per_step"] == pytest.approx((8_000 + 1_000 + 1_000) / 2 / 1e3)
    graph = out["ranges"]["runner.decode_graph"]
    assert graph == {"host_ms": 4.0, "device_ms": 4.0, "device_span_ms": 5.0}
    assert out["ranges"]["engine.vae"] == {"host_ms": 2.0, "device_ms": 0.5, "device_span_ms": 1.0}
    other = out["ranges"]["other"]
    assert other["host_ms"] == 4.0 and other["device_ms"] == pytest.approx(0.5)
    assert out["ranges"]["runner.lm"] == {"host_ms": 0.0, "device_ms": 0.0, "device_span_ms": 0.0}


def test_profile_level_on_cpu(tiny_v2):
    engine = LocalEngine.load(tiny_v2, "cpu", EngineConfig(max_num_seqs=4, max_model_len=256))
    try:
        out = profile_level(engine, concurrency=2, sampling=Sampling(steps=3), warmup_steps=1)
    finally:
        engine.close()
    assert out["steps"] == 3 and out["graph_steps"] == 0 and out["summary"]["ok"] == 2
    ranges = out["ranges"]
    assert set(ranges) == {*RANGES, "other"}
    for name in ("engine.schedule", "runner.lm", "runner.sampler", "engine.vae", "engine.audio_to_host"):
        assert ranges[name]["host_ms"] > 0, name
    assert ranges["runner.decode_graph"]["host_ms"] == 0  # no CUDA graphs on the CPU
    named = sum(r["host_ms"] for n, r in ranges.items() if n != "other")
    assert named <= out["host_ms_per_step"] and ranges["other"]["host_ms"] >= 0
    assert ranges["runner.sampler"]["host_ms"] > ranges["engine.schedule"]["host_ms"]
    assert out["device_ms_per_step"] == 0.0


def test_ipc_level_through_the_engine_process(tiny_v1):
    out = ipc_level(
        tiny_v1,
        EngineConfig(max_num_seqs=4, max_model_len=256),
        "cpu",
        concurrency=2,
        sampling=Sampling(steps=3),
        warmup_steps=1,
        num_threads=1,
    )
    s = out["summary"]
    assert s["ok"] == 2 and s["ttfb_ms_p50"] > 0 and s["rtf_mean"] > 0
    assert out["steps"] == 3
    ipc = out["ipc"]
    assert ipc["latency_us"]["count"] >= 3 and ipc["send_us"]["count"] >= 3
    assert out["send_ms_per_step"] > 0 and out["queue_ms_per_step"] >= 0
