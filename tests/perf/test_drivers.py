"""The in-process drivers: a short real run of our engine (tiny preset, CPU) and the open-loop injection."""

from __future__ import annotations

import time

import pytest

from perf.drivers import Chunk, Sampling, closed_sweep, open_loop_sweep, run_closed, run_open_loop
from perf.local_engine import LocalEngine
from perf.metrics import poisson_arrivals
from voxcpm_engine.config.engine_config import EngineConfig
from voxcpm_engine.tools.progress import ENV

STEPS = 4


@pytest.fixture(scope="module")
def engine(tiny_v1) -> LocalEngine:
    return LocalEngine.load(tiny_v1, "cpu", EngineConfig(max_num_seqs=8, max_model_len=256))


def _late(trace) -> int:
    """Late chunks recomputed from the definition, independently of StreamTrace."""
    start, late = trace.arrivals[0], 0
    for k, at in enumerate(trace.arrivals):
        if at > start + sum(trace.durations[:k]) + 1e-9:
            late += 1
    return late


def test_closed_level_every_request_gets_its_steps(engine):
    sampling = Sampling(steps=STEPS)
    run = run_closed(engine, concurrency=2, num_requests=3, sampling=sampling, tag="t-")
    chunk_s = engine.model_config.samples_per_patch / engine.sample_rate
    assert len(run.traces) == 3 and run.patches == 3 * STEPS
    first, second, refill = run.traces
    for t in run.traces:
        assert t.ok and len(t.arrivals) == STEPS
        assert t.audio_s == pytest.approx(STEPS * chunk_s)
        assert t.ttfb > 0 and t.rtf > 0 and t.arrivals == sorted(t.arrivals)
        assert t.late_chunks() == _late(t)
    # The third request replaced the first one to finish, between steps.
    assert refill.submitted >= min(first.arrivals[-1], second.arrivals[-1])
    assert run.wall_s >= max(t.arrivals[-1] for t in run.traces) - first.submitted - 1e-6
    assert run.steps >= 2 * STEPS and run.memory["gib"] > 0
    assert not engine.has_unfinished()


def test_closed_sweep_rows(engine):
    rows = closed_sweep(
        engine,
        levels=[1, 2],
        requests_per_level=None,
        sampling=Sampling(steps=3),
        warmup=1,
        warmup_steps=2,
        peak_tflops=100.0,
        log=lambda _: None,
    )
    assert [r["concurrency"] for r in rows] == [1, 2]
    for r in rows:
        assert r["ok"] == r["requests"] == r["concurrency"] and r["patches"] == 3 * r["concurrency"]
        assert r["ttfb_ms_p50"] > 0 and r["rtf_mean"] > 0 and r["audio_s_per_s"] > 0
        assert r["achieved_tflops"] > 0 and r["mfu"] == pytest.approx(r["achieved_tflops"] / 100.0)
        assert len(r["per_request"]) == r["requests"]
        # Where the engine's part of the time to first audio went, every request reporting it.
        stages = r["engine_stages_ms"]
        assert list(stages) == ["prepare", "wait", "prefill", "vae"]
        assert all(s["n"] == r["requests"] and s["p90"] >= s["p50"] >= 0 for s in stages.values())
        assert stages["prefill"]["p50"] > 0
        assert sum(s["p50"] for s in stages.values()) <= r["ttfb_ms_p50"] * 1.5  # inside the time to first audio


def test_open_loop_real_run(engine):
    rate, duration = 25.0, 0.4
    run = run_open_loop(engine, rate=rate, duration_s=duration, sampling=Sampling(steps=3), tag="ol-", seed=5)
    offsets = poisson_arrivals(rate, duration, seed=5)
    assert len(run.traces) == len(offsets) > 0
    start = run.traces[0].submitted - offsets[0]
    for t, offset in zip(run.traces, offsets, strict=True):
        assert t.submitted == pytest.approx(start + offset)  # TTFB counts from the scheduled arrival
        assert t.ok and len(t.arrivals) == 3 and t.ttfb > 0
        assert t.underrun == (_late(t) > 0)
    assert run.patches == 3 * len(offsets)


class _FakeEngine:
    """Each step takes ``step_s`` and gives every running request one chunk; requests last ``steps`` steps."""

    name = "fake"
    sample_rate = 1000
    model_config = None
    device = None

    def __init__(self, step_s: float, steps: int) -> None:
        self.step_s, self.steps = step_s, steps
        self.running: dict[str, int] = {}
        self.added: dict[str, float] = {}
        self.step_starts: list[float] = []

    def add(self, request_id, text, sampling, seed):
        self.added[request_id] = time.perf_counter()
        self.running[request_id] = 0

    def step(self):
        self.step_starts.append(time.perf_counter())
        time.sleep(self.step_s)
        out = []
        for rid in list(self.running):
            self.running[rid] += 1
            done = self.running[rid] >= self.steps
            out.append(Chunk(rid, 100, done))  # 0.1 s of audio per chunk
            if done:
                del self.running[rid]
        return out

    def has_unfinished(self):
        return bool(self.running)

    def close(self):
        pass


def test_open_loop_injects_due_requests_between_steps(monkeypatch):
    monkeypatch.setattr("perf.drivers.reset_peak_memory", lambda device: None)
    monkeypatch.setattr("perf.drivers.peak_memory", lambda device: {"kind": "none", "gib": 0.0})
    fake = _FakeEngine(step_s=0.02, steps=3)
    run = run_open_loop(fake, rate=40.0, duration_s=0.5, sampling=Sampling(steps=3), seed=2)
    assert len(run.traces) == len(fake.added) > 5
    for t in run.traces:
        added = fake.added[t.request_id]
        assert added >= t.submitted  # never before its scheduled time...
        # ... and at the next step boundary (no step started while it was due and not yet added;
        # one may, if it came due in the microseconds between the driver's check and the step call)
        assert sum(t.submitted < s < added for s in fake.step_starts) <= 1
        assert len(t.arrivals) == 3 and t.late_chunks() == _late(t)
    # 20 ms steps deliver 100 ms chunks: nobody underruns.
    assert not any(t.underrun for t in run.traces)


def test_sweeps_show_progress_only_when_asked(engine, monkeypatch, capsys):
    sweep = {"levels": [1, 2], "requests_per_level": None, "sampling": Sampling(steps=2), "warmup": 0}
    monkeypatch.delenv(ENV, raising=False)  # captured stderr is not a terminal: no bar
    closed_sweep(engine, **sweep, warmup_steps=0, peak_tflops=None)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.count("[ours] concurrency") == 2  # the log lines go to stdout
    monkeypatch.setenv(ENV, "1")  # forced: levels x repeats runs counted on stderr, stdout unchanged
    closed_sweep(engine, **sweep, warmup_steps=0, peak_tflops=None, repeats=2)
    captured = capsys.readouterr()
    assert "ours sweep" in captured.err and "4/4" in captured.err and "concurrency 2, run 2/2" in captured.err
    assert captured.out.count("[ours] concurrency") == 4 and "sweep" not in captured.out
    open_loop_sweep(engine, rates=[50.0], duration_s=0.05, sampling=Sampling(steps=2), warmup_steps=0)
    captured = capsys.readouterr()
    assert "ours open loop" in captured.err and "1/1" in captured.err and "[ours] 50/s" in captured.out
