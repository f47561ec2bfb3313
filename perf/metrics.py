"""Per-request timelines and what they give: TTFB, RTF, inter-chunk gaps, underruns, percentiles.

A :class:`StreamTrace` records when a request was submitted and when each audio chunk arrived
(with how many seconds of audio it carried). Everything else is derived from it, so the in-process
drivers, the peer and the HTTP client all report the same quantities the same way.

Playback model for underruns: playback starts when the first chunk arrives and never pauses to
rebuffer; chunk ``k`` is late when it arrives after ``first_arrival + duration(chunks 0..k-1)``,
i.e. after the audio before it has finished playing (the listener hears a gap).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

NAN = float("nan")
# The server's request stages (its Server-Timing metric names, tts_server/jobs/timeline.py) in the order
# they happen. A stream's header leaves with the first audio, so it ends at "return"; "complete" (the
# rest of a whole file, generated and encoded) comes only on a whole file. "total" spans arrival to
# the end of the last stage reported.
SERVER_STAGES = (
    "admission",
    "parse",
    "text",
    "queue",
    "submit",
    "prepare",
    "wait",
    "prefill",
    "vae",
    "return",
    "send",
    "complete",
    "total",
)
# The engine's own part of them, from its first-audio stamps (in-process benchmark).
ENGINE_STAGES = ("prepare", "wait", "prefill", "vae")
_EPS = 1e-9  # seconds: arriving exactly when the audio before runs out is on time


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0-100, linear interpolation like ``numpy.percentile``); NaN when empty."""
    data = [v for v in values if not math.isnan(v)]
    if not data:
        return NAN
    return float(np.percentile(np.asarray(data, dtype=np.float64), q))


def mean(values: Iterable[float]) -> float:
    """Arithmetic mean, NaN when empty."""
    data = [v for v in values if not math.isnan(v)]
    return float(sum(data) / len(data)) if data else NAN


@dataclass
class StreamTrace:
    """The timeline of one streamed request (times in ``time.perf_counter()`` seconds).

    Attributes:
        request_id: The request.
        submitted: When it was submitted (open loop: its scheduled arrival time).
        arrivals: Arrival time of each audio chunk, in order.
        durations: Seconds of audio in each chunk.
        error: Why the request failed (``None``: it completed); ``"503"`` for an HTTP rejection.
        server_timing: Milliseconds per stage on the way to the first audio: the server's own, from
            its ``Server-Timing`` header (HTTP), or the engine's first-audio stamps (in process);
            empty when neither reported them.
    """

    request_id: str
    submitted: float
    arrivals: list[float] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)
    error: str | None = None
    server_timing: dict[str, float] = field(default_factory=dict)

    def add_chunk(self, at: float, seconds: float) -> None:
        """Record a chunk of ``seconds`` of audio arriving at ``at``."""
        self.arrivals.append(at)
        self.durations.append(seconds)

    @property
    def ok(self) -> bool:
        """Completed without error, with at least one chunk."""
        return self.error is None and bool(self.arrivals)

    @property
    def ttfb(self) -> float:
        """Seconds from submission to the first chunk (NaN without chunks)."""
        return self.arrivals[0] - self.submitted if self.arrivals else NAN

    @property
    def audio_s(self) -> float:
        """Seconds of audio received."""
        return float(sum(self.durations))

    @property
    def latency(self) -> float:
        """Seconds from submission to the last chunk."""
        return self.arrivals[-1] - self.submitted if self.arrivals else NAN

    @property
    def rtf(self) -> float:
        """Real-time factor: (last chunk time − submission) / audio seconds (NaN without audio)."""
        audio = self.audio_s
        return self.latency / audio if audio > 0 else NAN

    @property
    def max_gap(self) -> float:
        """Largest time between two consecutive chunks (0 for a single chunk, NaN without chunks)."""
        if not self.arrivals:
            return NAN
        return max((b - a for a, b in zip(self.arrivals, self.arrivals[1:], strict=False)), default=0.0)

    def late_chunks(self) -> int:
        """Chunks that arrived after the audio before them finished playing (see the module docstring)."""
        if not self.arrivals:
            return 0
        start, played, late = self.arrivals[0], 0.0, 0
        for at, seconds in zip(self.arrivals, self.durations, strict=True):
            if at > start + played + _EPS:
                late += 1
            played += seconds
        return late

    @property
    def underrun(self) -> bool:
        """Whether any chunk was late: the listener heard at least one gap."""
        return self.late_chunks() > 0

    def stall_s(self) -> float:
        """Total silence heard if playback waits for each late chunk (rebuffering model; 0 if none late)."""
        if not self.arrivals:
            return 0.0
        clock, stalled = self.arrivals[0], 0.0
        for at, seconds in zip(self.arrivals, self.durations, strict=True):
            if at > clock + _EPS:
                stalled += at - clock
                clock = at
            clock += seconds
        return stalled


def summarize_closed(traces: Sequence[StreamTrace], wall_s: float) -> dict[str, float | int]:
    """Closed-batch figures of one level: TTFB and RTF percentiles, throughput.

    Args:
        traces: Every request of the level.
        wall_s: Wall time of the level (first submission to last chunk).

    Returns:
        ``requests``, ``ok``, ``errors``, ``rejected_503``; ``ttfb_ms_{p50,p90,p95,p99}``,
        ``ttfb_ms_mean``; ``rtf_{mean,p50,p90,p95,p99}``; ``audio_s`` (total), ``wall_s``,
        ``audio_s_per_s`` (aggregate seconds of audio per wall second); ``max_gap_ms_{p50,p99}``;
        ``underrun_share``.
    """
    ok = [t for t in traces if t.ok]
    ttfb = [t.ttfb * 1e3 for t in ok]
    rtf = [t.rtf for t in ok]
    gaps = [t.max_gap * 1e3 for t in ok]
    audio = sum(t.audio_s for t in ok)
    out: dict[str, float | int] = {
        "requests": len(traces),
        "ok": len(ok),
        "errors": sum(1 for t in traces if t.error is not None and t.error != "503"),
        "rejected_503": sum(1 for t in traces if t.error == "503"),
        "ttfb_ms_mean": mean(ttfb),
    }
    for q in (50, 90, 95, 99):
        out[f"ttfb_ms_p{q}"] = percentile(ttfb, q)
    out["rtf_mean"] = mean(rtf)
    for q in (50, 90, 95, 99):
        out[f"rtf_p{q}"] = percentile(rtf, q)
    out["audio_s"] = audio
    out["wall_s"] = wall_s
    out["audio_s_per_s"] = audio / wall_s if wall_s > 0 else NAN
    out["max_gap_ms_p50"] = percentile(gaps, 50)
    out["max_gap_ms_p99"] = percentile(gaps, 99)
    out["underrun_share"] = sum(t.underrun for t in ok) / len(ok) if ok else NAN
    return out


def stage_order(groups: Iterable[Iterable[str]], known: Sequence[str] = SERVER_STAGES) -> list[str]:
    """Every stage name in ``groups``, once: those in ``known`` in its order, then the rest as they first appear."""
    seen: list[str] = []
    for group in groups:
        seen += [name for name in group if name not in seen]
    return [name for name in known if name in seen] + [name for name in seen if name not in known]


def summarize_stages(
    traces: Sequence[StreamTrace], known: Sequence[str] = SERVER_STAGES
) -> dict[str, dict[str, float | int]]:
    """Median and p90 milliseconds of each server stage over the completed requests that reported it.

    Failed requests are left out: a 503's timeline stops at admission and would pull the medians
    down. A stage counts only the responses that carried it (an older server, or a streamed
    response without ``encode``), so ``n`` can differ between stages.

    Args:
        traces: Every request of one level.
        known: Stage names in the order to report them; names not in it follow, in order of first appearance.

    Returns:
        ``{stage: {"p50": ms, "p90": ms, "n": responses}}`` in that order; empty when no response had timings.
    """
    timed = [t.server_timing for t in traces if t.ok and t.server_timing]
    out: dict[str, dict[str, float | int]] = {}
    for name in stage_order(timed, known):
        values = [timing[name] for timing in timed if name in timing]
        out[name] = {"p50": percentile(values, 50), "p90": percentile(values, 90), "n": len(values)}
    return out


# Figures whose spread over repeats is reported (the level's headline numbers).
SPREAD_KEYS = ("ttfb_ms_p50", "ttfb_ms_p90", "ttfb_ms_p99", "audio_s_per_s", "rtf_mean", "max_gap_ms_p99")
_COUNTS = ("requests", "ok", "errors", "rejected_503")


def combine_repeats(runs: Sequence[dict[str, object]]) -> dict[str, object]:
    """One level's repeated runs as one row: the median of each figure, with the spread of the headline ones.

    Every number of the runs becomes its median over the runs (a slow first run of a level, a
    warm-up artefact, does not make the figure), except the request counts, which add up. Other
    values (engine name, concurrency, nested dicts) come from the first run.

    Args:
        runs: The rows of one level (:func:`summarize_closed` figures and anything beside them), one per repeat.

    Returns:
        The combined row, with ``repeats`` (how many), ``spread`` (``{key: [min, max]}`` over the
        runs for :data:`SPREAD_KEYS`) and ``runs`` (the ``SPREAD_KEYS`` of each run, in order).
    """
    if not runs:
        raise ValueError("combine_repeats needs at least one run")
    out: dict[str, object] = dict(runs[0])
    for key, first in runs[0].items():
        if isinstance(first, bool) or not isinstance(first, int | float):
            continue
        values = [float(r[key]) for r in runs if isinstance(r.get(key), int | float)]  # type: ignore[arg-type]
        if key in _COUNTS:
            out[key] = int(sum(values))
        else:
            median = percentile(values, 50)
            out[key] = int(median) if isinstance(first, int) and median == int(median) else median
    out["repeats"] = len(runs)
    out["spread"] = {
        key: [min(vals), max(vals)] if (vals := _finite(r.get(key) for r in runs)) else [NAN, NAN]
        for key in SPREAD_KEYS
    }
    out["runs"] = [{key: r.get(key) for key in SPREAD_KEYS} for r in runs]
    return out


def _finite(values: Iterable[object]) -> list[float]:
    return [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]


def summarize_open(traces: Sequence[StreamTrace], rate: float, duration_s: float) -> dict[str, float | int]:
    """Open-loop figures at one arrival rate: TTFB, largest gap per stream, share of streams that underrun.

    Args:
        traces: Every request that arrived (TTFB counts from its scheduled arrival).
        rate: Offered arrivals per second.
        duration_s: Length of the arrival window.
    """
    ok = [t for t in traces if t.ok]
    ttfb = [t.ttfb * 1e3 for t in ok]
    gaps = [t.max_gap * 1e3 for t in ok]
    return {
        "rate": rate,
        "duration_s": duration_s,
        "requests": len(traces),
        "ok": len(ok),
        "errors": len(traces) - len(ok),
        "ttfb_ms_p50": percentile(ttfb, 50),
        "ttfb_ms_p99": percentile(ttfb, 99),
        "max_gap_ms_p50": percentile(gaps, 50),
        "max_gap_ms_p99": percentile(gaps, 99),
        "underrun_share": sum(t.underrun for t in ok) / len(ok) if ok else NAN,
        "stall_s_mean": mean(t.stall_s() for t in ok),
        "audio_s": sum(t.audio_s for t in ok),
        "offered_audio_s_per_s": rate * (mean(t.audio_s for t in ok) if ok else NAN),
    }


def gap_free_capacity(
    results: Sequence[tuple[float, float] | tuple[float, float, float]],
    max_underrun: float = 0.01,
    max_ttfb_p99_ms: float | None = None,
) -> float | None:
    """Highest tested rate at which it and every lower tested rate kept within the limits.

    Args:
        results: ``(rate, underrun_share)`` or ``(rate, underrun_share, ttfb_p99_ms)`` per tested rate,
            any order.
        max_underrun: Largest acceptable share of streams that underrun.
        max_ttfb_p99_ms: Also require a TTFB p99 under this (``None``: streams only). A rate whose
            p99 is unknown (NaN, no third value) fails it.

    Returns:
        The rate, or ``None`` if even the lowest rate failed (or nothing was tested).
    """
    best = None
    for rate, share, *rest in sorted(results):
        if math.isnan(share) or share > max_underrun:
            break
        if max_ttfb_p99_ms is not None:
            p99 = rest[0] if rest else math.nan
            if math.isnan(p99) or p99 >= max_ttfb_p99_ms:
                break
        best = rate
    return best


def poisson_arrivals(rate: float, duration_s: float, seed: int) -> list[float]:
    """Arrival offsets (seconds from the start) of a Poisson process of ``rate`` per second over ``duration_s``."""
    if rate <= 0 or duration_s <= 0:
        return []
    rng = np.random.default_rng(seed)
    times: list[float] = []
    t = float(rng.exponential(1.0 / rate))
    while t < duration_s:
        times.append(t)
        t += float(rng.exponential(1.0 / rate))
    return times
