"""Where a step's time goes (``--profile``) and what the engine process's IPC costs (``--ipc``).

Profile: one closed-batch level of our in-process engine runs under ``torch.profiler`` (CPU, plus
CUDA on a GPU) with each ``Engine.step()`` wrapped in a ``benchmark.step`` range. The engine's own
named ranges split the step: ``engine.schedule``, ``runner.lm``, ``runner.sampler``,
``runner.decode_graph`` (the CUDA-graph replay of LMs + sampler on pure decode steps),
``engine.vae``, ``engine.audio_to_host``; ``other`` is the rest of the step. Host time is each
range's wall time on the CPU; device time is the GPU's busy time on the range's kernels (and its
span on the GPU timeline), see :func:`split_events`. All are divided by the number of steps.

IPC: the same level through :class:`~voxcpm_engine.proc.client.AsyncEngine` (the process-separated engine the
server uses), with client-side TTFB/RTF and the client's ``stats()["ipc"]`` figures per step
message (``queue_us`` is the part on the engine loop's critical path; ``send_us``, the pickling and
writing, runs on the core's sender thread).
"""

from __future__ import annotations

import asyncio
import bisect
import time
from pathlib import Path
from typing import Any

import torch

from perf.drivers import Chunk, Sampling, request_text, run_closed
from perf.local_engine import LocalEngine
from perf.metrics import StreamTrace, summarize_closed
from voxcpm_engine.config.engine_config import EngineConfig

STEP_RANGE = "benchmark.step"
RANGES = (
    "engine.schedule",
    "runner.lm",
    "runner.sampler",
    "runner.decode_graph",
    "engine.vae",
    "engine.audio_to_host",
)


class _Annotated:
    """Wraps an adapter so that each step is one ``benchmark.step`` profiler range."""

    def __init__(self, inner: LocalEngine) -> None:
        self.inner = inner
        self.name = inner.name
        self.sample_rate = inner.sample_rate
        self.model_config = inner.model_config
        self.device = inner.device

    def add(self, request_id: str, text: str, sampling: Sampling, seed: int) -> None:
        self.inner.add(request_id, text, sampling, seed)

    def step(self) -> list[Chunk]:
        with torch.profiler.record_function(STEP_RANGE):
            return self.inner.step()

    def has_unfinished(self) -> bool:
        return self.inner.has_unfinished()

    def close(self) -> None:
        self.inner.close()


def split_events(events: Any, steps: int) -> dict[str, Any]:
    """Per-step host and device milliseconds of each named range, ``other`` and the whole step.

    Host: the CPU-side range events' durations. Device: the kineto trace has, for each range that
    launched GPU work, a GPU-side copy spanning its kernels on the device timeline; a range's busy
    time is the sum of the kernels (and copies) that start inside its spans, and ``span`` the spans'
    length (busy < span: the GPU idled inside the range, e.g. waiting for launches). Kernels are
    attributed by time, not by the trace's correlation ids (those came out broken on an H200 with
    torch 2.11: most CUDA-graph kernels linked to a profiler-internal event). The step's device
    time is every kernel of the run; ``other`` is what the named ranges leave of it.

    Args:
        events: ``prof.events()`` of a profiled run.
        steps: Engine steps in the run.
    """
    names = (*RANGES, STEP_RANGE)
    host = dict.fromkeys(names, 0.0)
    spans: list[tuple[float, float, str]] = []
    kernels: list[tuple[float, float]] = []
    for e in events:
        on_cpu = e.device_type == torch.autograd.DeviceType.CPU
        if on_cpu:
            if e.name in host:
                host[e.name] += e.cpu_time_total / 1e3
        elif e.name in host:
            spans.append((e.time_range.start, e.time_range.end, e.name))
        elif not getattr(e, "is_user_annotation", False):
            kernels.append((e.time_range.start, e.time_range.end - e.time_range.start))
    spans.sort()
    starts = [s for s, _, _ in spans]
    busy = dict.fromkeys(names, 0.0)
    span = dict.fromkeys(names, 0.0)
    for s, end, name in spans:
        span[name] += (end - s) / 1e3
    for k_start, k_dur in kernels:
        i = bisect.bisect_right(starts, k_start) - 1
        if i >= 0 and k_start <= spans[i][1]:
            busy[spans[i][2]] += k_dur / 1e3
    n = max(steps, 1)
    device_total = sum(d for _, d in kernels) / 1e3
    ranges = {
        name: {"host_ms": host[name] / n, "device_ms": busy[name] / n, "device_span_ms": span[name] / n}
        for name in RANGES
    }
    ranges["other"] = {
        "host_ms": (host[STEP_RANGE] - sum(host[r] for r in RANGES)) / n,
        "device_ms": (device_total - sum(busy[r] for r in RANGES)) / n,
        "device_span_ms": float("nan"),
    }
    return {
        "steps": steps,
        "host_ms_per_step": host[STEP_RANGE] / n,
        "device_ms_per_step": device_total / n,
        "ranges": ranges,
    }


def profile_level(adapter: LocalEngine, *, concurrency: int, sampling: Sampling, warmup_steps: int = 4) -> dict:
    """Profile one closed-batch level of our engine (after a short unprofiled warm-up of the same size).

    Returns:
        :func:`split_events` figures plus ``wall_ms_per_step``, ``graph_steps``, ``concurrency``,
        ``gpu_busy_share`` (device ms / host ms per step) and the level's closed-batch summary.
    """
    from torch.profiler import ProfilerActivity, profile

    if warmup_steps > 0:
        short = Sampling(warmup_steps, sampling.temperature, sampling.cfg_value, sampling.timesteps)
        run_closed(adapter, concurrency=concurrency, num_requests=concurrency, sampling=short, tag="wprof-")
    activities = [ProfilerActivity.CPU]
    if adapter.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    graph_steps = adapter.engine.runner.graph_steps
    wrapped = _Annotated(adapter)
    with profile(activities=activities) as prof:
        run = run_closed(wrapped, concurrency=concurrency, num_requests=concurrency, sampling=sampling, tag="prof-")
    out = split_events(prof.events(), run.steps)
    out["concurrency"] = concurrency
    out["graph_steps"] = adapter.engine.runner.graph_steps - graph_steps
    out["wall_ms_per_step"] = run.wall_s / max(run.steps, 1) * 1e3
    out["gpu_busy_share"] = out["device_ms_per_step"] / out["host_ms_per_step"] if out["host_ms_per_step"] else 0.0
    out["summary"] = summarize_closed(run.traces, run.wall_s)
    return out


async def _stream_all(engine: Any, n: int, sampling: Sampling, tag: str) -> tuple[list[StreamTrace], float]:
    rate = engine.sample_rate

    async def one(i: int) -> StreamTrace:
        rid = f"{tag}a{i}"
        params = sampling.params(i)
        trace = StreamTrace(rid, time.perf_counter())
        try:
            async for chunk in engine.generate(rid, request_text(i, tag), params=params):
                trace.add_chunk(time.perf_counter(), len(chunk) / rate)
        except Exception as exc:  # a failed stream is recorded, not fatal
            trace.error = f"{type(exc).__name__}: {exc}"
        return trace

    start = time.perf_counter()
    traces = await asyncio.gather(*(one(i) for i in range(n)))
    ends = [t.arrivals[-1] for t in traces if t.arrivals]
    return list(traces), (max(ends) if ends else time.perf_counter()) - start


def ipc_level(
    model_dir: str | Path,
    config: EngineConfig,
    device: str,
    *,
    concurrency: int,
    sampling: Sampling,
    warmup_steps: int = 2,
    num_threads: int | None = None,
) -> dict[str, Any]:
    """One closed-batch level through ``AsyncEngine`` (its own process); client-side figures and IPC stats.

    Returns:
        ``summary`` (closed-batch figures seen by the client), ``ipc`` (``AsyncEngine.stats()["ipc"]``),
        ``step_ms`` (the core's step times), ``steps`` (engine steps of the measured run),
        ``queue_ms_per_step`` (mean engine-loop time handing a step's outputs to the sender thread)
        and ``send_ms_per_step`` (mean sender-thread time pickling and writing them).
    """
    from voxcpm_engine.proc.client import AsyncEngine

    async def run() -> dict[str, Any]:
        async with AsyncEngine(model_dir, config, device, num_threads=num_threads) as engine:
            if warmup_steps > 0:
                short = Sampling(warmup_steps, sampling.temperature, sampling.cfg_value, sampling.timesteps)
                await _stream_all(engine, concurrency, short, "wipc-")
            before = (await engine.stats()).get("steps", 0)
            traces, wall = await _stream_all(engine, concurrency, sampling, "ipc-")
            stats = await engine.stats()
        return {
            "summary": summarize_closed(traces, wall),
            "ipc": stats["ipc"],
            "step_ms": stats.get("step_ms"),
            "steps": stats.get("steps", 0) - before,
            "queue_ms_per_step": _mean_ms(stats["ipc"].get("queue_us", {})),
            "send_ms_per_step": _mean_ms(stats["ipc"].get("send_us", {})),
        }

    return asyncio.run(run())


def _mean_ms(summary: dict[str, Any]) -> float:
    """The mean of a µs :class:`~voxcpm_engine.proc.messages.RollingStats` summary in ms (NaN when it is empty)."""
    return summary["mean"] / 1e3 if summary.get("count") else float("nan")
