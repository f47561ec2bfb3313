"""The server's CPU share over a level: the shares' arithmetic, and the poller against ``python -m tts_server``."""

import pytest

from perf.http_client import HttpLoad, http_level
from perf.metrics import StreamTrace
from perf.server_load import CpuSample, StatusPoller, cpu_shares, level_span


def test_shares_use_the_samples_inside_the_span():
    samples = [CpuSample(0.0, 0.0, 0.0), CpuSample(1.0, 0.1, 0.2), CpuSample(3.0, 1.1, 1.6), CpuSample(9.0, 5.0, 9.0)]
    assert cpu_shares(samples, 0.5, 2.5) is None  # one sample inside: no interval to divide by
    assert cpu_shares(samples, 1.0, 3.0) == {"server_loop_busy_pct": 50.0, "server_process_cpu_pct": 70.0}
    assert cpu_shares(samples, 0.5, 8.0) == cpu_shares(samples, 1.0, 3.0)
    assert cpu_shares(samples, -1.0, 3.2) == {"server_loop_busy_pct": 36.7, "server_process_cpu_pct": 53.3}
    # per request and per audio second: the busy share (50%) over the whole span (4 s) = 2 s of loop CPU
    per = cpu_shares(samples, 0.5, 4.5, requests=8, audio_s=40.0)
    assert per["server_loop_ms_per_request"] == 250.0 and per["server_loop_ms_per_audio_s"] == 50.0


def test_span_runs_from_the_first_send_to_the_last_chunk():
    a, b, refused = StreamTrace("a", 1.0), StreamTrace("b", 2.0), StreamTrace("c", 0.5, error="503")
    assert level_span([refused]) is None
    a.add_chunk(1.5, 0.1)
    b.add_chunk(4.0, 0.1)
    assert level_span([a, b, refused]) == (0.5, 4.0)


def test_poller_gives_nothing_for_a_server_without_the_figures():
    with StatusPoller("http://127.0.0.1:1", period_s=0.01) as poller:
        pass
    assert poller.samples == []


def test_poller_reads_the_real_servers_loop_over_a_level(server):
    load = HttpLoad(max_generate_length=6, min_generate_length=6)
    with StatusPoller(server, period_s=0.05) as poller:
        traces, _ = http_level(server, num_requests=4, concurrency=2, load=load)
    assert all(t.ok for t in traces), [t.error for t in traces]
    assert len(poller.samples) >= 3
    loops = [s.loop_cpu_s for s in poller.samples]
    assert loops == sorted(loops) and loops[-1] > loops[0]  # the level ran on the loop
    assert all(s.process_cpu_s >= s.loop_cpu_s for s in poller.samples)
    shares = poller.shares(traces, requests=4, audio_s=sum(t.audio_s for t in traces))
    assert shares and shares["server_loop_ms_per_request"] > 0
    assert 0 < shares["server_loop_busy_pct"] <= shares["server_process_cpu_pct"] + 1.0
    assert shares["server_loop_busy_pct"] <= 100.0 + 5.0  # one thread: at most one core (plus timing jitter)


@pytest.mark.parametrize("period", [0.0, -1.0])
def test_period_must_be_positive(period):
    with pytest.raises(ValueError, match="period_s"):
        StatusPoller("http://127.0.0.1:1", period_s=period)
