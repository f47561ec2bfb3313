"""The Grafana dashboard and the Prometheus alerts of ``deploy/`` against what a real server exports.

One real ``python -m tts_server`` on the tiny model (one slot, a connection cap of 1) serves a
request and refuses one (503, connection cap), so the labelled series exist; its ``/metrics`` is
parsed with prometheus_client's parser, and every series and label that an expression of the
dashboard or of the rules names must be in it. promtool (Debian's ``prometheus`` package, or just
its binary: ``deploy/prometheus/install-promtool.sh``) checks the rules and runs their unit tests;
without it those tests fail, unless ``PROMTOOL=0`` says to skip them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.promql import Exported, check, exported, uses
from tests.server_process import running

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "voxcpm-tts.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
RELIABILITY = ROOT / "docs" / "RELIABILITY.md"


# --- the extractor ------------------------------------------------------------------------------


def test_the_extractor_finds_series_labels_and_rates_and_ignores_functions_and_keywords():
    got = uses(
        'histogram_quantile(0.99, sum by (instance, le) (rate(tts_ttfb_seconds_bucket{job="tts", '
        'instance=~"$instance"}[$__rate_interval])))'
    )
    assert got.series == {"tts_ttfb_seconds_bucket": {"job", "instance"}}
    assert got.grouping == {"instance", "le"} and got.rated == {"tts_ttfb_seconds_bucket"}
    got = uses(
        "1 - sum without (le) (a_free) / on (instance) group_left (zone) max(b_total offset 1h) > 0.95 "
        "and bool c == 1e-9 unless absent(up)"
    )
    assert set(got.series) == {"a_free", "b_total", "c", "up"} and got.rated == set()
    assert got.grouping == {"le", "instance", "zone"}
    # A name inside a string or a range is no series; rate only marks what it reads directly.
    got = uses('increase(x_total{reason="rate(y_total)"}[5m:1m]) + sum(rate(z_count[5m])) * w')
    assert got.series == {"x_total": {"reason"}, "z_count": set(), "w": set()}
    assert got.rated == {"x_total", "z_count"}
    for bad in ('{job="x"}', "sum(rate(x[5m])", "x)", "sum by x (y)"):
        with pytest.raises(ValueError):
            uses(bad)


def test_the_check_reports_missing_series_labels_and_rates_of_gauges():
    text = (
        '# TYPE a_total counter\na_total{reason="x"} 1.0\n# TYPE a_created gauge\na_created{reason="x"} 1.0\n'
        '# TYPE g gauge\ng 3.0\n# TYPE h histogram\nh_bucket{le="1.0"} 1.0\nh_bucket{le="+Inf"} 1.0\n'
        "h_sum 0.5\nh_count 1.0\n"
    )
    scrape = exported(text)
    assert scrape["a_total"] == Exported("counter", frozenset({"reason"}))
    assert check('sum by (reason, instance) (rate(a_total{job="t"}[5m])) / g', scrape) == []
    assert check("histogram_quantile(0.5, sum by (le) (rate(h_bucket[5m])))", scrape) == []
    assert check("a", scrape) == ["a: not exported by /metrics"]  # the family name is not a sample
    assert check("rate(g[5m]) + rate(a_created[5m])", scrape) == [
        "g: a gauge sample read by rate/increase",
        "a_created: a gauge sample read by rate/increase",  # prometheus_client exports _created as a gauge
    ]
    assert check('g{reason="x"} + up{zone="a"}', scrape) == ["g: no label 'reason'", "up: no label 'zone'"]
    assert check("sum by (stage) (g)", scrape) == ["grouping by 'stage': no series of the expression has it"]


# --- a real server's /metrics ---------------------------------------------------------------------


def _hold_a_connection_place(url: str) -> socket.socket:
    """A work request whose body never comes: it holds its connection place until the socket closes."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(b"POST /generate HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 999\r\n\r\n")
    return sock


def _wait_for(what: str, done: Callable[[], Any], timeout_s: float = 20.0) -> Any:
    """``done()``'s first true value (polled)."""
    end = time.monotonic() + timeout_s
    while not (value := done()):
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


@pytest.fixture(scope="module")
def metrics_text(tiny_v1: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """``/metrics`` of a server that has served one request and refused one (the server is stopped)."""
    log = tmp_path_factory.mktemp("observability") / "server.log"
    # A body timeout of 3 s: the held place is refused to the next request, then cut off (408).
    extra = ("--max-num-seqs", "1", "--max-concurrent-connections", "1", "--body-timeout", "3")
    with running(tiny_v1, log, *extra) as server:
        with server.client() as client:
            ok = client.post("/generate", json={"target_text": "Hello there.", "max_generate_length": 4})
            assert ok.status_code == 200, ok.text
            with _hold_a_connection_place(server.url) as holder:
                _wait_for("the held place", lambda: client.get("/status").json()["connections"]["active"] == 1)
                refused = client.post("/generate", json={"target_text": "Refused."})
                holder.settimeout(30)
                cut = holder.recv(4096)
            assert refused.status_code == 503, refused.text
            assert cut.startswith(b"HTTP/1.1 408"), cut

            def timed() -> str | None:  # the engine's stats are polled twice a second
                text = client.get("/metrics").text
                count = re.search(r"^tts_engine_step_seconds_count (\S+)$", text, re.M)
                return text if count and float(count.group(1)) > 0 else None

            return _wait_for("the engine's step time in /metrics", timed)


@pytest.fixture(scope="module")
def scrape(metrics_text: str) -> dict[str, Exported]:
    """Every sample name of the real server's ``/metrics``, parsed by prometheus_client."""
    return exported(metrics_text)


def _value(text: str, sample: str) -> float:
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.M)
    assert match, f"{sample} not in /metrics"
    return float(match.group(1))


def test_the_server_exports_its_limits_step_time_and_both_requests(metrics_text):
    text = metrics_text
    assert _value(text, "tts_max_inference_slots") == 1 and _value(text, "tts_max_concurrent_connections") == 1
    assert _value(text, 'tts_requests_total{endpoint="generate",outcome="ok"}') == 1
    assert _value(text, 'tts_requests_total{endpoint="generate",outcome="rejected"}') == 1
    assert _value(text, 'tts_rejections_total{reason="connection_cap"}') == 1
    assert _value(text, 'tts_connections_cut_total{reason="body_timeout"}') == 1
    steps, seconds = _value(text, "tts_engine_step_seconds_count"), _value(text, "tts_engine_step_seconds_sum")
    assert steps >= 4 and 0 < seconds / steps < 5  # a tiny model's step: milliseconds
    assert 0 < _value(text, "tts_engine_step_p99_seconds") < 5
    assert _value(text, "tts_engine_kv_blocks_total") > 0


# --- the dashboard ----------------------------------------------------------------------------------


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _panel_exprs() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in _dashboard()["panels"] for t in p["targets"]]


def test_the_dashboard_is_well_formed():
    board = _dashboard()
    assert 36 <= board["schemaVersion"] <= 41 and board["uid"] == "voxcpm-tts"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert variables["instance"]["type"] == "query" and variables["instance"]["includeAll"]
    panels = board["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    datasource = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    for p in panels:
        assert p["datasource"] == datasource, p["title"]
        assert p["targets"], f"{p['title']}: no targets"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == datasource and t["expr"].strip(), p["title"]
            # Every selector follows the instance picker, or a panel would mix in the whole fleet.
            unfiltered = [name for name, labels in uses(t["expr"]).series.items() if "instance" not in labels]
            assert not unfiltered and '"$instance"' in t["expr"], f"{p['title']}: {unfiltered} in {t['expr']}"
    # Panels do not overlap on the 24-column grid.
    cells = [
        (x, y)
        for p in panels
        for g in [p["gridPos"]]
        for x in range(g["x"], g["x"] + g["w"])
        for y in range(g["y"], g["y"] + g["h"])
    ]
    assert len(cells) == len(set(cells)) and max(x for x, _ in cells) < 24


def test_the_dashboard_covers_what_the_operators_asked_for():
    exprs = " ".join(e for _, e in _panel_exprs())
    for needed in (
        "tts_ttfb_seconds_bucket", "tts_real_time_factor_bucket", "tts_queue_depth", "tts_max_inference_slots",
        "tts_max_concurrent_connections", "tts_rejections_total", "tts_engine_step_seconds_sum",
        "tts_engine_kv_blocks_free", "tts_audio_seconds_total", "tts_engine_alive", "tts_requests_total",
    ):  # fmt: skip
        assert needed in exprs, needed
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (le) (rate(tts_ttfb_seconds_bucket" in exprs


def test_every_dashboard_expression_uses_exported_series_and_labels(scrape):
    problems = [f"{title}: {p}" for title, expr in _panel_exprs() for p in check(expr, scrape)]
    variable = next(v for v in _dashboard()["templating"]["list"] if v["name"] == "instance")
    metric, label = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["definition"]).groups()
    problems += [f"variable instance: {p}" for p in check(f"{metric}{{{label}=~'.+'}}", scrape)]
    assert problems == []


# --- the alerting rules ---------------------------------------------------------------------------


def _rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_is_labelled_annotated_and_points_at_a_runbook_section():
    anchors = {_slug(line.lstrip("#")) for line in RELIABILITY.read_text().splitlines() if line.startswith("#")}
    rules = _rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"]), rule["alert"]
        path, anchor = rule["annotations"]["runbook_url"].split("#")
        assert path == "docs/RELIABILITY.md" and anchor in anchors, f"{rule['alert']}: no section #{anchor}"
    asked = {"TTSEngineDead", "TTSTargetDown", "TTSSustainedRejections", "TTSQueueWaitP99High"}
    assert asked | {"TTSTimeToFirstAudioP99High", "TTSNoAudioProduced"} <= set(names)
    tested = set(re.findall(r"alertname: (\w+)", ALERTS_TEST.read_text()))
    assert tested == set(names), f"alerts without a promtool unit test: {set(names) - tested}"


def test_every_rule_expression_uses_exported_series_and_labels(scrape):
    problems = [f"{r['alert']}: {p}" for r in _rules() for p in check(r["expr"], scrape)]
    for rule in _rules():
        templated = set(re.findall(r"\$labels\.(\w+)", json.dumps(rule["annotations"])))
        missing = templated - _alert_labels(rule["expr"], scrape)
        problems += [f"{rule['alert']}: its annotations use $labels.{label}" for label in sorted(missing)]
    assert problems == []


def _alert_labels(expr: str, scrape: dict[str, Exported]) -> set[str]:
    """Labels an alert of ``expr`` carries: the grouping's when it aggregates, else its series' and the target's."""
    found = uses(expr)
    if found.grouping:
        return found.grouping
    return {"job", "instance"} | {label for name in found.series if name in scrape for label in scrape[name].labels}


def _promtool() -> str | None:
    """The promtool binary; None when ``PROMTOOL=0`` skips its tests, a failure when it is missing."""
    if os.environ.get("PROMTOOL") == "0":
        return None
    path = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not installed: the alerting rules are checked with Prometheus 2.42's promtool. "
            "Install it with `bash deploy/prometheus/install-promtool.sh` (Debian's package, only the binary), "
            "or set PROMTOOL=0 to skip these tests.",
            pytrace=False,
        )
    return path


@pytest.mark.parametrize("command", [["check", "rules", ALERTS], ["test", "rules", ALERTS_TEST]], ids=["check", "test"])
def test_promtool_accepts_the_rules_and_their_unit_tests_pass(command):
    promtool = _promtool()
    if promtool is None:
        pytest.skip("PROMTOOL=0")
    done = subprocess.run([promtool, *map(str, command)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
