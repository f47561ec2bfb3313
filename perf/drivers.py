"""In-process drivers: a closed-batch concurrency sweep and open-loop Poisson arrivals.

Both drive an :class:`EngineAdapter` (our :class:`~voxcpm_engine.engine.Engine` in :mod:`perf.local_engine`,
``nano-vllm-voxcpm`` in :mod:`perf.peer`) step by step on the calling thread, so the two engines see exactly the same
protocol. A chunk's arrival time is taken when the step that produced it returns (the step copies
the audio to the host, so it is there by then).

* Closed batch: ``concurrency`` requests of exactly ``steps`` patches start together; with more
  requests than that, each finished request is replaced by the next one between steps.
* Open loop: arrivals are drawn from a Poisson process; before each step the driver adds every
  request whose scheduled time has passed, and TTFB counts from the scheduled time (a request that
  came due mid-step waits for the step boundary, as it would in a server). When nothing runs, the
  driver sleeps until the next arrival.

Random-weight models never stop on their own, so every request's length is fixed (ours:
``min_steps = max_steps = steps``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from perf.flops import achieved_figures
from perf.metrics import (
    ENGINE_STAGES,
    StreamTrace,
    combine_repeats,
    poisson_arrivals,
    summarize_closed,
    summarize_open,
    summarize_stages,
)
from perf.system import peak_memory, reset_peak_memory
from voxcpm_engine.config.model_config import ModelConfig
from voxcpm_engine.tools.progress import echo, progress_bar

BASE_TEXT = "The quick brown fox jumps over the lazy dog, then it runs across the field into the quiet forest."
_MAX_IDLE_STEPS = 10_000  # steps in a row without any output: something is stuck


@dataclass(frozen=True)
class Sampling:
    """What every request of a run asks for.

    Attributes:
        steps: Patches per request (fixed: min = max).
        temperature: Initial-noise scale.
        cfg_value: Guidance scale.
        timesteps: Sampler Euler steps per patch.
    """

    steps: int = 50
    temperature: float = 1.0
    cfg_value: float = 2.0
    timesteps: int = 10

    def params(self, seed: int) -> Any:
        """Our engine's ``GenerationParams`` for one request of this run."""
        from voxcpm_engine.types import GenerationParams

        return GenerationParams(
            cfg_value=self.cfg_value,
            inference_timesteps=self.timesteps,
            min_steps=self.steps,
            max_steps=self.steps,
            temperature=self.temperature,
            seed=seed,
        )


@dataclass
class Chunk:
    """One request's output of one engine step.

    Attributes:
        request_id: The request.
        samples: Audio samples in the chunk (0: no audio this time).
        finished: This was the request's last output.
        error: Why the request failed or was cancelled (``None`` when it is fine).
        stages: On a request's first audio, the engine's own milliseconds per stage (``prepare``,
            ``wait``, ``prefill``, ``vae``), where the engine reports them (ours; not the peer).
    """

    request_id: str
    samples: int
    finished: bool
    error: str | None = None
    stages: dict[str, float] | None = None


class EngineAdapter(Protocol):
    """What the drivers need from an engine (ours or the peer)."""

    name: str
    sample_rate: int
    model_config: ModelConfig
    device: torch.device

    def add(self, request_id: str, text: str, sampling: Sampling, seed: int) -> None:
        """Queue a request of exactly ``sampling.steps`` patches."""
        ...

    def step(self) -> list[Chunk]:
        """Run one engine step."""
        ...

    def has_unfinished(self) -> bool:
        """Whether any request is still waiting or running."""
        ...

    def close(self) -> None:
        """Release the engine (and its device memory)."""
        ...


def preset_checkpoint(preset: str, cache_dir: str | Path = "/tmp/voxcpm-bench", seed: int = 0) -> Path:
    """A random-weight checkpoint of ``preset`` under ``cache_dir``, written on first use."""
    from voxcpm_engine.tools.synthetic import write_checkpoint

    path = Path(cache_dir) / f"{preset}-seed{seed}"
    if not (path / "config.json").is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            write_checkpoint(preset, path, seed=seed)
        except FileExistsError:  # another process wrote it meanwhile (the write is atomic)
            if not (path / "config.json").is_file():
                raise
    return path


def request_text(index: int, tag: str) -> str:
    """A distinct text per request (its first words differ, so no two prompts share a KV prefix block)."""
    return f"Request {tag}{index}. {BASE_TEXT}"


@dataclass
class RunResult:
    """Traces and engine-side counts of one run (a closed level or one open-loop rate)."""

    traces: list[StreamTrace]
    wall_s: float
    steps: int
    patches: int
    memory: dict[str, Any]

    def per_request(self) -> list[dict[str, float | int | str | None]]:
        """Compact per-request records for the JSON output."""
        return [
            {
                "id": t.request_id,
                "ttfb_ms": t.ttfb * 1e3,
                "rtf": t.rtf,
                "max_gap_ms": t.max_gap * 1e3,
                "late_chunks": t.late_chunks(),
                "chunks": len(t.arrivals),
                "error": t.error,
            }
            for t in self.traces
        ]


def _record(traces: dict[str, StreamTrace], chunks: list[Chunk], now: float, rate: int) -> tuple[int, int]:
    """Apply a step's chunks to the traces; returns (patches, finished requests)."""
    patches = finished = 0
    for c in chunks:
        trace = traces[c.request_id]
        if c.samples:
            trace.add_chunk(now, c.samples / rate)
            patches += 1
        if c.error is not None:
            trace.error = c.error
        if c.stages:
            trace.server_timing = dict(c.stages)
        if c.finished:
            finished += 1
    return patches, finished


def run_closed(
    adapter: EngineAdapter,
    *,
    concurrency: int,
    num_requests: int,
    sampling: Sampling,
    tag: str = "",
    seed: int = 0,
    on_step: Callable[[int], None] | None = None,
) -> RunResult:
    """One closed-batch level: ``concurrency`` requests in flight until ``num_requests`` have run.

    Args:
        adapter: The engine.
        concurrency: Requests started together (and kept in flight).
        num_requests: Requests in the level.
        sampling: What each request asks for.
        tag: Distinguishes this run's texts from other runs' (no prefix-cache reuse across runs).
        seed: Seed of the first request (request ``i`` uses ``seed + i``).
        on_step: Called after each step with the step index (profiling hooks).
    """
    traces: dict[str, StreamTrace] = {}
    next_index = 0

    def submit() -> None:
        nonlocal next_index
        rid = f"{tag}r{next_index}"
        traces[rid] = StreamTrace(rid, time.perf_counter())
        adapter.add(rid, request_text(next_index, tag), sampling, seed + next_index)
        next_index += 1

    reset_peak_memory(adapter.device)
    start = time.perf_counter()
    while next_index < min(concurrency, num_requests):
        submit()
    in_flight, steps, patches, idle = next_index, 0, 0, 0
    while in_flight:
        chunks = adapter.step()
        now = time.perf_counter()
        if on_step is not None:
            on_step(steps)
        steps += 1
        new, done = _record(traces, chunks, now, adapter.sample_rate)
        patches += new
        in_flight -= done
        idle = 0 if chunks else idle + 1
        if idle > _MAX_IDLE_STEPS or (not adapter.has_unfinished() and in_flight):
            raise RuntimeError(f"{adapter.name}: {in_flight} requests in flight but the engine produces nothing")
        while in_flight < concurrency and next_index < num_requests:
            submit()
            in_flight += 1
    ends = [t.arrivals[-1] for t in traces.values() if t.arrivals]
    wall = (max(ends) if ends else time.perf_counter()) - start
    return RunResult(list(traces.values()), wall, steps, patches, peak_memory(adapter.device))


def run_open_loop(
    adapter: EngineAdapter, *, rate: float, duration_s: float, sampling: Sampling, tag: str = "", seed: int = 0
) -> RunResult:
    """Poisson arrivals at ``rate`` per second for ``duration_s``, then drain (see the module docstring)."""
    offsets = poisson_arrivals(rate, duration_s, seed)
    traces: dict[str, StreamTrace] = {}
    reset_peak_memory(adapter.device)
    start = time.perf_counter()
    i = steps = patches = 0
    while True:
        now = time.perf_counter()
        while i < len(offsets) and start + offsets[i] <= now:
            rid = f"{tag}o{i}"
            traces[rid] = StreamTrace(rid, start + offsets[i])
            adapter.add(rid, request_text(i, tag), sampling, seed + i)
            i += 1
        if not adapter.has_unfinished():
            if i >= len(offsets):
                break
            time.sleep(max(0.0, start + offsets[i] - time.perf_counter()))
            continue
        chunks = adapter.step()
        steps += 1
        patches += _record(traces, chunks, time.perf_counter(), adapter.sample_rate)[0]
    wall = time.perf_counter() - start
    return RunResult(list(traces.values()), wall, steps, patches, peak_memory(adapter.device))


def closed_sweep(
    adapter: EngineAdapter,
    *,
    levels: list[int],
    requests_per_level: int | None,
    sampling: Sampling,
    warmup: int,
    warmup_steps: int,
    peak_tflops: float | None,
    repeats: int = 1,
    log: Callable[[str], None] = echo,
) -> list[dict[str, Any]]:
    """The closed-batch sweep: per level, ``warmup`` short runs, then ``repeats`` measured runs.

    On a terminal a bar on stderr counts the runs (levels x (warm-up + repeats)); ``log`` gets one
    line per measured run (default: stdout, printed above the bar).

    Returns:
        One dict per level, combined over its runs (:func:`~perf.metrics.combine_repeats`: medians,
        ``spread``, ``runs``): the :func:`~perf.metrics.summarize_closed` figures, compute figures,
        ``steps``, ``patches``, ``memory``, ``per_request`` and ``engine_stages_ms`` (the last three
        of the first run).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, not {repeats}")
    results = []
    with progress_bar(len(levels) * (warmup + repeats), desc=f"{adapter.name} sweep", unit="run") as bar:
        for level in levels:
            n = requests_per_level or level
            for w in range(warmup):
                bar.set_postfix_str(f"concurrency {level}, warm-up", refresh=False)
                run_closed(
                    adapter,
                    concurrency=level,
                    num_requests=level,
                    sampling=_short(sampling, warmup_steps),
                    tag=f"w{w}c{level}-",
                )
                bar.update(1)
            rows = []
            for r in range(repeats):
                bar.set_postfix_str(f"concurrency {level}, run {r + 1}/{repeats}")
                tag = f"c{level}-" if r == 0 else f"c{level}r{r}-"
                run = run_closed(adapter, concurrency=level, num_requests=n, sampling=sampling, tag=tag)
                bar.update(1)
                row: dict[str, Any] = {"engine": adapter.name, "concurrency": level}
                row.update(summarize_closed(run.traces, run.wall_s))
                row.update(
                    achieved_figures(
                        adapter.model_config,
                        timesteps=sampling.timesteps,
                        steps=sampling.steps,
                        patches=run.patches,
                        wall_s=run.wall_s,
                        peak_tflops=peak_tflops,
                    )
                )
                row.update(steps=run.steps, patches=run.patches, step_ms_mean=run.wall_s / max(run.steps, 1) * 1e3)
                row["memory"] = run.memory
                row["per_request"] = run.per_request()
                row["engine_stages_ms"] = summarize_stages(run.traces, ENGINE_STAGES)
                stages = ", ".join(f"{k} {v['p50']:.1f}" for k, v in row["engine_stages_ms"].items())
                log(
                    f"[{adapter.name}] concurrency {level}"
                    + (f" (run {r + 1}/{repeats})" if repeats > 1 else "")
                    + f": TTFB p50 {row['ttfb_ms_p50']:.1f} ms, RTF mean {row['rtf_mean']:.3f}, "
                    f"{row['audio_s_per_s']:.1f} audio s/s, {row['achieved_tflops']:.3g} TFLOP/s"
                    + (f"; to first audio, p50 ms: {stages}" if stages else "")
                )
                rows.append(row)
            results.append(combine_repeats(rows))
    return results


def open_loop_sweep(
    adapter: EngineAdapter,
    *,
    rates: list[float],
    duration_s: float,
    sampling: Sampling,
    warmup_steps: int,
    seed: int = 0,
    log: Callable[[str], None] = echo,
) -> list[dict[str, Any]]:
    """Open-loop runs at each rate (after one short warm-up burst); one summary dict per rate.

    On a terminal a bar on stderr counts the rates run; ``log`` gets one line per rate.
    """
    if warmup_steps > 0:
        run_closed(adapter, concurrency=8, num_requests=8, sampling=_short(sampling, warmup_steps), tag="wol-")
    results = []
    with progress_bar(len(rates), desc=f"{adapter.name} open loop", unit="rate") as bar:
        for rate in rates:
            bar.set_postfix_str(f"{rate:g} arrivals/s for {duration_s:g} s")
            run = run_open_loop(
                adapter, rate=rate, duration_s=duration_s, sampling=sampling, tag=f"ol{rate}-", seed=seed
            )
            bar.update(1)
            row: dict[str, Any] = {"engine": adapter.name}
            row.update(summarize_open(run.traces, rate, duration_s))
            row.update(steps=run.steps, patches=run.patches, wall_s=run.wall_s, memory=run.memory)
            row["per_request"] = run.per_request()
            log(
                f"[{adapter.name}] {rate:g}/s: TTFB p50 {row['ttfb_ms_p50']:.1f} ms, max gap p99 "
                f"{row['max_gap_ms_p99']:.1f} ms, underrun {row['underrun_share']:.1%}"
            )
            results.append(row)
    return results


def _short(sampling: Sampling, steps: int) -> Sampling:
    return Sampling(steps, sampling.temperature, sampling.cfg_value, sampling.timesteps)
