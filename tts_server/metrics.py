"""Prometheus metrics of one app, in its own registry (tests build many apps in one process).

Counters and histograms are updated where things happen (admission, queue, jobs); gauges of
current state (queue depth, active streams, connections) are read when scraped, so they cannot
drift from the objects they describe. Engine counters are the last :class:`EngineLoad` the app
polled (``observe_engine``), since reading them needs a round trip to the engine process.

The dashboard (``deploy/grafana``) and the alerts (``deploy/prometheus``) use these names; their
tests (``tests/deploy/test_observability.py``) check every name they use against a real scrape.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from tts_server.loop_load import LoopFigures
from voxcpm_engine.types import EngineLoad

__all__ = ["CONTENT_TYPE", "ENDPOINTS", "Outcome", "ServerMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ENDPOINTS = {"/generate": "generate", "/v1/audio/speech": "openai"}  # path -> the ``endpoint`` label

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 60.0)
_STAGE_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 5.0)
_RTF_BUCKETS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0)


def _unknown() -> float:
    """A limit not bound yet."""
    return math.nan


class Outcome(enum.Enum):
    """How a request ended (the ``outcome`` label)."""

    OK = "ok"
    CANCELLED = "cancelled"  # /cancel, client disconnect, shutdown
    FAILED = "failed"  # engine error or death, invalid input the engine found
    REJECTED = "rejected"  # 503 before the engine was reached (cap, draining, engine down)
    TIMEOUT = "timeout"  # queue timeout


class _EngineCollector(Collector):
    """Engine figures as of the last :meth:`ServerMetrics.observe_engine` (scrape time)."""

    def __init__(self) -> None:
        self.load = EngineLoad()

    def collect(self) -> Iterator[Metric]:
        load = self.load
        steps = CounterMetricFamily("tts_engine_steps", "Engine steps run (all engines)")
        steps.add_metric([], float(load.steps))
        yield steps
        # A summary without quantiles (count and sum): rate(sum) / rate(count) is the mean step
        # time over any window, which a percentile of the engine's own window could not give.
        yield SummaryMetricFamily(
            "tts_engine_step_seconds",
            "Time of the engine steps that ran work (all engines)",
            count_value=load.step_count,
            sum_value=load.step_seconds,
        )
        p99 = GaugeMetricFamily(
            "tts_engine_step_p99_seconds", "p99 step time over each engine's last 4096 steps (the slowest engine's)"
        )
        p99.add_metric([], load.step_p99_s)
        yield p99
        for key, help_text in (
            ("running", "Requests in the engines' running batches"),
            ("waiting", "Requests waiting inside the engines"),
            ("kv_blocks_free", "Free KV blocks (all engines)"),
            ("kv_blocks_total", "KV blocks (all engines)"),
        ):
            gauge = GaugeMetricFamily(f"tts_engine_{key}", help_text)
            gauge.add_metric([], float(getattr(load, key)))
            yield gauge
        alive = GaugeMetricFamily("tts_engine_alive", "1 while the engine serves")
        alive.add_metric([], 1.0 if load.alive else 0.0)
        yield alive


class _LoopCollector(Collector):
    """The event loop's load as of its last tick (:mod:`tts_server.loop_load`)."""

    def __init__(self) -> None:
        self.figures: Callable[[], LoopFigures] = LoopFigures

    def collect(self) -> Iterator[Metric]:
        f = self.figures()
        for name, help_text, value in (
            ("tts_event_loop_cpu_seconds", "CPU seconds of the server's event-loop thread", f.loop_cpu_s),
            ("tts_process_cpu_seconds", "CPU seconds of the server process (not the engine's)", f.process_cpu_s),
        ):
            counter = CounterMetricFamily(name, help_text)
            counter.add_metric([], value)
            yield counter
        busy = GaugeMetricFamily(
            "tts_event_loop_busy_ratio", "The event loop's CPU time over the last 2 s of wall time (1: saturated)"
        )
        busy.add_metric([], f.busy_pct / 100.0)
        yield busy
        lag = GaugeMetricFamily("tts_event_loop_lag_seconds", "The largest lateness of a 0.1-s timer over the last 2 s")
        lag.add_metric([], f.lag_ms / 1000.0)
        yield lag


class ServerMetrics:
    """Every metric of the server.

    Args:
        active_connections: Reads the admission middleware's count.
        queue_depth: Reads the inference queue's waiting count.
        active_inference: Reads the inference slots held.
    """

    def __init__(
        self,
        active_connections: Callable[[], float],
        queue_depth: Callable[[], float],
        active_inference: Callable[[], float],
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tts_requests", "Generation requests by endpoint and outcome", ["endpoint", "outcome"], registry=r
        )
        self.rejections = Counter("tts_rejections", "Requests answered 503, by reason", ["reason"], registry=r)
        self.cuts = Counter(
            "tts_connections_cut",
            "Requests the server cut off, by reason: send_stall (the client stopped reading), body_timeout "
            "(408), shutdown (the drain's grace ended while a body or a stream was still in flight)",
            ["reason"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "tts_queue_wait_seconds", "Time from arrival to an inference slot", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.ttfb = Histogram(
            "tts_ttfb_seconds", "Time from arrival to the first audio", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.stages = Histogram(
            "tts_request_stage_seconds",
            "Time of each stage on a request's way to its first audio byte (see tts_server/jobs/timeline.py)",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.rtf = Histogram(
            "tts_real_time_factor",
            "Generation time / audio duration of completed requests (lower is faster)",
            buckets=_RTF_BUCKETS,
            registry=r,
        )
        self.audio_seconds = Counter("tts_audio_seconds", "Seconds of audio generated", registry=r)
        self.active_streams = Gauge("tts_active_streams", "Requests holding an inference slot", registry=r)
        self.active_streams.set_function(active_inference)
        connections = Gauge("tts_active_connections", "Work requests admitted past the connection cap", registry=r)
        connections.set_function(active_connections)
        depth = Gauge("tts_queue_depth", "Requests waiting for an inference slot", registry=r)
        depth.set_function(queue_depth)
        # The limits as gauges, so a dashboard can divide by them (utilization) without knowing
        # each instance's flags. NaN until bind_capacity (the app binds them once its services exist).
        self._capacity: tuple[Callable[[], float], Callable[[], float]] = (_unknown, _unknown)
        slots = Gauge("tts_max_inference_slots", "Inference slots (--max-num-seqs x devices)", registry=r)
        slots.set_function(lambda: self._capacity[0]())
        cap = Gauge("tts_max_concurrent_connections", "The connection cap (--max-concurrent-connections)", registry=r)
        cap.set_function(lambda: self._capacity[1]())
        self._engine = _EngineCollector()
        r.register(self._engine)
        self._loop = _LoopCollector()
        r.register(self._loop)

    def bind_capacity(self, inference_slots: Callable[[], float], connection_cap: Callable[[], float]) -> None:
        """Read the limits from these at each scrape (``tts_max_inference_slots``, ``tts_max_concurrent_connections``).

        Args:
            inference_slots: Reads the inference queue's slot count.
            connection_cap: Reads the admission's connection cap.
        """
        self._capacity = (inference_slots, connection_cap)

    def bind_loop(self, figures: Callable[[], LoopFigures]) -> None:
        """Read the event loop's figures from ``figures`` at each scrape (zeros until bound)."""
        self._loop.figures = figures

    def observe_engine(self, load: EngineLoad) -> None:
        """Remember the engine's latest load for the next scrape."""
        self._engine.load = load

    def request_done(self, endpoint: str, outcome: Outcome) -> None:
        """Count one finished request."""
        self.requests.labels(endpoint=endpoint, outcome=outcome.value).inc()

    def rejected(self, reason: str, path: str | None = None) -> None:
        """Count one 503 (``connection_cap``, ``draining``, ``engine_dead``, ``queue_timeout``, ``shutdown``).

        Args:
            reason: Why.
            path: The request path, for a refusal at admission: a generation endpoint's refusal is
                also counted under ``tts_requests`` with outcome ``rejected``.
        """
        self.rejections.labels(reason=reason).inc()
        endpoint = ENDPOINTS.get(path or "")
        if endpoint is not None:
            self.request_done(endpoint, Outcome.REJECTED)

    def observe_stages(self, stages: list[tuple[str, float]]) -> None:
        """Record one request's stage times (``Timeline.stages()``)."""
        for stage, seconds in stages:
            self.stages.labels(stage=stage).observe(seconds)

    def cut(self, reason: str) -> None:
        """Count one request the server cut off (``send_stall``, ``body_timeout``, ``shutdown``)."""
        self.cuts.labels(reason=reason).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of the registry."""
        return generate_latest(self.registry)
