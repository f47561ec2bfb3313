"""Tests of tts_server.metrics: each metric moves with its event, gauges are read at scrape, a registry per app."""

import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.tts_server.harness import serve, server_config
from tests.tts_server.routes.generate_helpers import body
from tts_server.app import create_app
from tts_server.loop_load import LoopFigures
from tts_server.metrics import CONTENT_TYPE, ENDPOINTS, Outcome, ServerMetrics
from voxcpm_engine.types import EngineLoad


def samples(metrics: ServerMetrics) -> dict[tuple[str, tuple], float]:
    """Every sample of the exposition, keyed by (name, sorted labels), parsed back from the text."""
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(metrics: ServerMetrics, name: str, **labels) -> float:
    return samples(metrics).get((name, tuple(sorted(labels.items()))), 0.0)


class Sources:
    def __init__(self) -> None:
        self.connections, self.depth, self.active = 0, 0, 0


@pytest.fixture
def src():
    return Sources()


@pytest.fixture
def metrics(src):
    return ServerMetrics(lambda: src.connections, lambda: src.depth, lambda: src.active)


def test_request_outcomes_are_counted_per_endpoint(metrics):
    metrics.request_done("generate", Outcome.OK)
    metrics.request_done("generate", Outcome.OK)
    metrics.request_done("openai", Outcome.TIMEOUT)
    assert value(metrics, "tts_requests_total", endpoint="generate", outcome="ok") == 2
    assert value(metrics, "tts_requests_total", endpoint="openai", outcome="timeout") == 1
    assert value(metrics, "tts_requests_total", endpoint="openai", outcome="ok") == 0
    assert [o.value for o in Outcome] == ["ok", "cancelled", "failed", "rejected", "timeout"]


def test_a_rejection_at_a_generation_endpoint_is_also_a_rejected_request(metrics):
    metrics.rejected("connection_cap", "/generate")
    metrics.rejected("draining", "/v1/audio/speech")
    metrics.rejected("connection_cap", "/voices")  # not a generation endpoint
    metrics.rejected("queue_timeout")
    assert value(metrics, "tts_rejections_total", reason="connection_cap") == 2
    assert value(metrics, "tts_rejections_total", reason="draining") == 1
    assert value(metrics, "tts_rejections_total", reason="queue_timeout") == 1
    assert value(metrics, "tts_requests_total", endpoint="generate", outcome="rejected") == 1
    assert value(metrics, "tts_requests_total", endpoint="openai", outcome="rejected") == 1
    assert ENDPOINTS == {"/generate": "generate", "/v1/audio/speech": "openai"}


def test_cuts_stages_and_histograms(metrics):
    metrics.cut("send_stall")
    metrics.cut("send_stall")
    metrics.cut("body_timeout")
    assert value(metrics, "tts_connections_cut_total", reason="send_stall") == 2
    assert value(metrics, "tts_connections_cut_total", reason="body_timeout") == 1
    metrics.observe_stages([("queue", 0.003), ("prefill", 0.02), ("queue", 0.0002)])
    assert value(metrics, "tts_request_stage_seconds_count", stage="queue") == 2
    assert value(metrics, "tts_request_stage_seconds_sum", stage="queue") == pytest.approx(0.0032)
    assert value(metrics, "tts_request_stage_seconds_bucket", stage="queue", le="0.0005") == 1
    assert value(metrics, "tts_request_stage_seconds_count", stage="prefill") == 1
    metrics.queue_wait.observe(0.3)
    metrics.ttfb.observe(0.12)
    metrics.rtf.observe(0.4)
    metrics.audio_seconds.inc(2.5)
    assert value(metrics, "tts_queue_wait_seconds_bucket", le="0.35") == 1
    assert value(metrics, "tts_queue_wait_seconds_bucket", le="0.2") == 0
    assert value(metrics, "tts_ttfb_seconds_sum") == pytest.approx(0.12)
    assert value(metrics, "tts_real_time_factor_count") == 1
    assert value(metrics, "tts_audio_seconds_total") == 2.5


def test_gauges_are_read_when_scraped(metrics, src):
    assert value(metrics, "tts_active_connections") == value(metrics, "tts_queue_depth") == 0
    src.connections, src.depth, src.active = 3, 2, 1
    assert value(metrics, "tts_active_connections") == 3
    assert value(metrics, "tts_queue_depth") == 2 and value(metrics, "tts_active_streams") == 1


def test_engine_figures_are_those_of_the_last_observation(metrics):
    assert value(metrics, "tts_engine_alive") == 0 and value(metrics, "tts_engine_steps_total") == 0
    metrics.observe_engine(EngineLoad(alive=True, running=2, waiting=1, steps=42, kv_blocks_free=7, kv_blocks_total=9))
    got = samples(metrics)
    assert got[("tts_engine_steps_total", ())] == 42 and got[("tts_engine_alive", ())] == 1
    assert got[("tts_engine_running", ())] == 2 and got[("tts_engine_waiting", ())] == 1
    assert got[("tts_engine_kv_blocks_free", ())] == 7 and got[("tts_engine_kv_blocks_total", ())] == 9
    metrics.observe_engine(EngineLoad(steps=43))
    assert value(metrics, "tts_engine_alive") == 0 and value(metrics, "tts_engine_running") == 0
    assert value(metrics, "tts_engine_steps_total") == 43


def test_loop_figures_are_zero_until_bound_then_read_at_each_scrape(metrics):
    assert value(metrics, "tts_event_loop_cpu_seconds_total") == 0 and value(metrics, "tts_event_loop_busy_ratio") == 0
    figures = LoopFigures(loop_cpu_s=1.5, process_cpu_s=2.25, busy_pct=37.5, lag_ms=12.0)
    metrics.bind_loop(lambda: figures)
    got = samples(metrics)
    assert got[("tts_event_loop_cpu_seconds_total", ())] == 1.5 and got[("tts_process_cpu_seconds_total", ())] == 2.25
    assert got[("tts_event_loop_busy_ratio", ())] == 0.375 and got[("tts_event_loop_lag_seconds", ())] == 0.012


def test_each_instance_has_its_own_registry(metrics, src):
    other = ServerMetrics(lambda: 0, lambda: 0, lambda: 0)  # would raise on a shared registry (duplicate names)
    metrics.request_done("generate", Outcome.OK)
    assert value(other, "tts_requests_total", endpoint="generate", outcome="ok") == 0
    assert other.registry is not metrics.registry
    assert CONTENT_TYPE.startswith("text/plain; version=0.0.4")


def test_an_apps_metrics_move_with_its_own_requests(loop_runner, shared_engine, tiny_v2):
    config = server_config(tiny_v2, max_num_seqs=1)
    other_app = create_app(config, engine=shared_engine)  # built, not served: its metrics exist from the start
    with serve(loop_runner, shared_engine, config) as a:

        async def go():
            async with a.client() as client:
                ok = await client.post("/generate", json=body(max_generate_length=2, stream=False))
                bad = await client.post("/generate", json=body(voice="none-such"))
                scrape = await client.get("/metrics")
            return ok, bad, scrape

        ok, bad, scrape = a.run(go())
        assert ok.status_code == 200 and bad.status_code == 404
        assert scrape.headers["content-type"] == CONTENT_TYPE and scrape.headers["cache-control"] == "no-store"
        ma, mb = a.app.state.metrics, other_app.state.metrics
        assert value(ma, "tts_requests_total", endpoint="generate", outcome="ok") == 1
        assert value(ma, "tts_audio_seconds_total") == pytest.approx(len(ok.content) / 2 / a.services.sample_rate)
        assert value(ma, "tts_ttfb_seconds_count") == value(ma, "tts_queue_wait_seconds_count") == 1
        assert value(ma, "tts_real_time_factor_count") == 1
        assert value(ma, "tts_engine_alive") == 1  # observed at the scrape
        assert mb.registry is not ma.registry
        assert value(mb, "tts_requests_total", endpoint="generate", outcome="ok") == 0  # the other app saw nothing
        assert value(mb, "tts_audio_seconds_total") == 0 and value(mb, "tts_ttfb_seconds_count") == 0


def test_the_limits_are_nan_until_bound_then_read_when_scraped(metrics, src):
    assert math.isnan(value(metrics, "tts_max_inference_slots"))
    assert math.isnan(value(metrics, "tts_max_concurrent_connections"))
    limits = {"slots": 4, "cap": 8}
    metrics.bind_capacity(lambda: limits["slots"], lambda: limits["cap"])
    assert value(metrics, "tts_max_inference_slots") == 4 and value(metrics, "tts_max_concurrent_connections") == 8
    limits["slots"] = 2
    assert value(metrics, "tts_max_inference_slots") == 2


def test_the_step_time_is_a_summary_of_the_engines_figures(metrics):
    assert value(metrics, "tts_engine_step_seconds_count") == 0 and value(metrics, "tts_engine_step_seconds_sum") == 0
    metrics.observe_engine(EngineLoad(alive=True, step_count=200, step_seconds=1.5, step_p99_s=0.012))
    assert value(metrics, "tts_engine_step_seconds_count") == 200
    assert value(metrics, "tts_engine_step_seconds_sum") == pytest.approx(1.5)
    assert value(metrics, "tts_engine_step_p99_seconds") == pytest.approx(0.012)
    families = {f.name: f.type for f in text_string_to_metric_families(metrics.render().decode())}
    assert families["tts_engine_step_seconds"] == "summary" and families["tts_engine_step_p99_seconds"] == "gauge"


def test_engine_load_reads_the_step_time_of_one_engine_and_of_a_group():
    one = {"alive": True, "steps": 10, "step_ms": {"count": 10, "mean": 4.0, "p50": 3.0, "p99": 9.0, "max": 9.5}}
    load = EngineLoad.from_stats(one)
    assert (load.step_count, load.steps) == (10, 10)
    assert load.step_seconds == pytest.approx(0.04) and load.step_p99_s == pytest.approx(0.009)
    group = {
        "alive": True,
        "steps": 30,
        "engines": [one, {"alive": True, "step_ms": {"count": 20, "mean": 2.0, "p99": 20.0}}, {"alive": False}],
    }
    load = EngineLoad.from_stats(group)
    assert load.step_count == 30 and load.step_seconds == pytest.approx(0.08)
    assert load.step_p99_s == pytest.approx(0.02)  # the slowest engine's
    idle = EngineLoad.from_stats({"alive": True, "step_ms": {"count": 0}})  # no step timed yet: no mean
    assert (idle.step_count, idle.step_seconds, idle.step_p99_s) == (0, 0.0, 0.0)


def test_a_served_app_binds_its_limits(loop_runner, shared_engine, tiny_v2):
    slots = server_config(tiny_v2).inference_slots
    config = server_config(tiny_v2, max_concurrent_connections=slots + 3)  # not the default 2 x slots
    with serve(loop_runner, shared_engine, config) as a:
        ma = a.app.state.metrics
        assert value(ma, "tts_max_inference_slots") == slots
        assert value(ma, "tts_max_concurrent_connections") == slots + 3
