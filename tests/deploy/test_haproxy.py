"""The scale-out recipe of ``deploy/haproxy``: three real servers behind a real HAProxy, on loopback.

One cluster serves the whole module (starting it is most of the cost): three ``python -m tts_server``
processes on the tiny synthetic model (CPU, one engine thread, one inference slot, a connection cap
of 2) and HAProxy 2.6 with the configuration ``deploy/haproxy/render.py`` writes. The tests run in
file order; the last one takes instances out for good.

HAProxy comes from Debian's packages (``apt-get install -y haproxy``); without it these tests fail
rather than skip, so a CI image that lost it is noticed.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
RENDER = ROOT / "deploy" / "haproxy" / "render.py"
CAP = 2  # each instance's --max-concurrent-connections, and HAProxy's maxconn per server
NAMES = ("tts1", "tts2", "tts3")
LONG = 400  # steps of a stream that outlives a test phase (it is cancelled, never awaited)


def free_port() -> int:
    """A free loopback TCP port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Cluster:
    """The running processes and their addresses."""

    servers: dict[str, subprocess.Popen]
    ports: dict[str, int]
    haproxy: subprocess.Popen
    front: str
    stats: str
    logs: Path
    config: Path

    def url(self, name: str) -> str:
        """Direct address of one instance."""
        return f"http://127.0.0.1:{self.ports[name]}"

    def log_text(self) -> str:
        """Every process's log, for assertion messages."""
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in sorted(self.logs.iterdir()))


def _haproxy() -> str:
    """The haproxy binary (Debian puts it in /usr/sbin, which a non-root PATH may lack); fails without it."""
    path = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
    if path is None:
        pytest.fail(
            "haproxy is not installed: the scale-out recipe is tested against Debian's HAProxy 2.6. "
            "Install it with `apt-get install -y haproxy` (CI: add it to .ci/run).",
            pytrace=False,
        )
    return path


def _start_server(model: Path, port: int, log: Path) -> subprocess.Popen:
    """One instance on the tiny model: one engine thread, one inference slot, a cap of ``CAP``."""
    args = [
        sys.executable, "-m", "tts_server", "--model", str(model), "--device", "cpu", "--host", "127.0.0.1",
        "--port", str(port), "--max-num-seqs", "1", "--max-concurrent-connections", str(CAP),
        "--max-num-batched-tokens", "64", "--max-model-len", "512", "--engine-threads", "1",
        "--voices-dir", "", "--log-level", "warning", "--shutdown-grace", "60",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    with log.open("w") as out:
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def _wait_ready(cluster: Cluster, timeout_s: float = 180.0) -> None:
    """Wait until every instance's own /ready answers 200 (~25 s each alone; minutes on a loaded 2-core box)."""
    end = time.monotonic() + timeout_s
    pending = set(NAMES)
    while pending and time.monotonic() < end:
        for name in list(pending):
            assert cluster.servers[name].poll() is None, f"{name} exited\n{cluster.log_text()}"
            try:
                if httpx.get(cluster.url(name) + "/ready", timeout=2).status_code == 200:
                    pending.discard(name)
            except httpx.TransportError:
                pass
        time.sleep(0.2)
    assert not pending, f"not ready: {pending}\n{cluster.log_text()}"


def stats(cluster: Cluster) -> dict[str, dict[str, str]]:
    """HAProxy's CSV stats of the backend's rows, by server name (``BACKEND`` for the backend)."""
    text = httpx.get(cluster.stats + "/;csv", timeout=5).text.lstrip("# ")
    rows = csv.DictReader(io.StringIO(text))
    return {row["svname"]: row for row in rows if row["pxname"] == "tts_servers"}


def wait_status(cluster: Cluster, want: dict[str, str], timeout_s: float = 10.0) -> float:
    """Wait until HAProxy shows each named server in the given state (``UP``/``DOWN``); seconds taken."""
    t0 = time.monotonic()
    while True:
        now = {name: stats(cluster)[name]["status"].split()[0] for name in want}
        if now == want:
            return time.monotonic() - t0
        assert time.monotonic() - t0 < timeout_s, f"HAProxy shows {now}, wanted {want}\n{cluster.log_text()}"
        time.sleep(0.1)


def rejections(url: str) -> int:
    """The instance's count of 503s for being at its connection cap."""
    text = httpx.get(url + "/metrics", timeout=5).text
    found = re.search(r'^tts_rejections_total\{reason="connection_cap"\} ([0-9.e+]+)$', text, re.MULTILINE)
    return int(float(found.group(1))) if found else 0


def body(steps: int, rid: str | None = None) -> dict:
    """A /generate request of ``steps`` patches."""
    out = {"target_text": "Scale out.", "response_format": "pcm", "max_generate_length": steps}
    return out if rid is None else {**out, "request_id": rid}


async def hold(client: httpx.AsyncClient, url: str, rid: str) -> None:
    """Stream a long request from one instance until cancelled (keeps one of its places taken)."""
    async with client.stream("POST", url + "/generate", json=body(LONG, rid)) as response:
        assert response.status_code == 200, await response.aread()
        async for _ in response.aiter_bytes():
            pass


async def active(client: httpx.AsyncClient, url: str, want: int, timeout_s: float = 20.0) -> None:
    """Wait until the instance reports ``want`` admitted work requests."""
    end = time.monotonic() + timeout_s
    while (now := (await client.get(url + "/status")).json()["connections"]["active"]) != want:
        assert time.monotonic() < end, f"{url}: {now} active, wanted {want}"
        await asyncio.sleep(0.05)


async def through_haproxy(client: httpx.AsyncClient, cluster: Cluster, steps: int) -> httpx.Response:
    """One whole /generate through the frontend."""
    response = await client.post(cluster.front + "/generate", json=body(steps))
    assert response.status_code == 200, (response.status_code, response.text, cluster.log_text())
    assert len(response.content) > 0
    return response


@pytest.fixture(scope="module")
def cluster(tiny_v1: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three instances and HAProxy, all up and healthy; everything is killed at the end."""
    haproxy = _haproxy()
    work = tmp_path_factory.mktemp("haproxy")
    logs = work / "logs"
    logs.mkdir()
    ports = {name: free_port() for name in NAMES}
    servers = {name: _start_server(tiny_v1, ports[name], logs / f"{name}.log") for name in NAMES}
    front, stats_port = free_port(), free_port()
    config = work / "haproxy.cfg"
    render = [
        sys.executable, str(RENDER), "--servers", ",".join(f"127.0.0.1:{ports[n]}" for n in NAMES),
        "--maxconn", str(CAP), "--bind", f"127.0.0.1:{front}", "--stats-bind", f"127.0.0.1:{stats_port}",
        "--check-inter", "300ms", "--check-fall", "2", "--check-rise", "1", "--out", str(config),
    ]  # fmt: skip
    proc = None
    try:
        subprocess.run(render, check=True, timeout=30)
        checked = subprocess.run([haproxy, "-c", "-f", str(config)], capture_output=True, text=True, timeout=30)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        with (logs / "haproxy.log").open("w") as out:
            proc = subprocess.Popen([haproxy, "-db", "-f", str(config)], stdout=out, stderr=subprocess.STDOUT)
        c = Cluster(servers, ports, proc, f"http://127.0.0.1:{front}", f"http://127.0.0.1:{stats_port}", logs, config)
        _wait_ready(c)
        wait_status(c, dict.fromkeys(NAMES, "UP"))
        yield c
    finally:
        for p in [*servers.values(), *([proc] if proc else [])]:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)


def test_rendered_config_matches_the_instances(cluster: Cluster) -> None:
    """Health checks on /ready, maxconn equal to the instances' cap, 503 retried on another instance."""
    text = cluster.config.read_text()
    assert "option httpchk GET /ready" in text and "http-check expect status 200" in text
    assert f"maxconn {CAP}" in text and "option http-buffer-request" in text
    assert re.search(r"retry-on .*\b503\b", text) and "option redispatch 1" in text
    end = time.monotonic() + 20  # the first health check of each instance may still be on its way
    while True:
        rows = stats(cluster)
        if all(rows[n]["check_status"] == "L7OK" for n in NAMES) or time.monotonic() > end:
            break
        time.sleep(0.2)
    assert all(rows[n]["slim"] == str(CAP) and rows[n]["check_status"] == "L7OK" for n in NAMES), rows


def test_traffic_is_balanced_across_instances(cluster: Cluster) -> None:
    """Concurrent requests spread over all three instances, never more than maxconn on one."""

    async def go() -> Counter:
        async with httpx.AsyncClient(timeout=60) as client:
            replies = await asyncio.gather(*(through_haproxy(client, cluster, 4) for _ in range(3 * CAP)))
        return Counter(r.headers["x-tts-server"] for r in replies)

    served = asyncio.run(go())
    assert set(served) == set(NAMES), served
    rows = stats(cluster)
    assert all(int(rows[n]["smax"]) <= CAP for n in NAMES), {n: rows[n]["smax"] for n in NAMES}


def test_a_full_instance_503s_are_absorbed_by_the_others(cluster: Cluster) -> None:
    """tts1 is filled by direct clients: direct it answers 503, through HAProxy every request gets 200."""
    full = cluster.url("tts1")

    async def go() -> tuple[httpx.Response, Counter, int, int]:
        async with httpx.AsyncClient(timeout=60) as client:
            holders = [asyncio.create_task(hold(client, full, f"hold-{i}")) for i in range(CAP)]
            try:
                await active(client, full, CAP)
                direct = await client.post(full + "/generate", json=body(2))
                before = rejections(full)
                retried = int(stats(cluster)["BACKEND"]["wretr"])
                served: Counter = Counter()
                for _ in range(6):  # leastconn sees tts1 idle (its load bypasses HAProxy) and tries it
                    served[(await through_haproxy(client, cluster, 2)).headers["x-tts-server"]] += 1
                absorbed = rejections(full) - before
                retried = int(stats(cluster)["BACKEND"]["wretr"]) - retried
                # /cancel through HAProxy reaches the instance named in X-TTS-Server (tts1 is full: still routed).
                for i in range(CAP):
                    cancel = await client.post(
                        cluster.front + "/cancel", json={"request_id": f"hold-{i}"}, headers={"X-TTS-Server": "tts1"}
                    )
                    assert cancel.json()["status"] == "cancelled", cancel.text
            finally:
                for task in holders:
                    task.cancel()
                await asyncio.gather(*holders, return_exceptions=True)
            await active(client, full, 0)
        return direct, served, absorbed, retried

    direct, served, absorbed, retried = asyncio.run(go())
    assert direct.status_code == 503 and direct.headers["retry-after"], direct.text
    assert "tts1" not in served and sum(served.values()) == 6, served
    assert absorbed >= 1 and retried >= absorbed, (absorbed, retried)  # HAProxy met tts1's 503 and went elsewhere


def test_unready_or_killed_instances_are_taken_out(cluster: Cluster) -> None:
    """tts2 drains (/ready 503, still serving its stream), tts3 is killed: both go DOWN, requests still succeed."""
    draining = cluster.url("tts2")

    async def go() -> tuple[int, float, float, Counter]:
        async with httpx.AsyncClient(timeout=60) as client:
            holder = asyncio.create_task(hold(client, draining, "drain-hold"))
            try:
                await active(client, draining, 1)
                cluster.servers["tts2"].send_signal(signal.SIGTERM)  # drains: /ready 503 for the grace period
                await asyncio.sleep(0.2)
                ready = (await client.get(draining + "/ready")).status_code
                took_drain = await asyncio.to_thread(wait_status, cluster, {"tts2": "DOWN"})
                cluster.servers["tts3"].kill()
                served: Counter = Counter()
                # Right after the kill HAProxy still thinks tts3 is UP: the refused connection is retried elsewhere.
                for _ in range(3):
                    served[(await through_haproxy(client, cluster, 2)).headers["x-tts-server"]] += 1
                took_kill = await asyncio.to_thread(wait_status, cluster, {"tts3": "DOWN"})
                for _ in range(3):
                    served[(await through_haproxy(client, cluster, 2)).headers["x-tts-server"]] += 1
                assert not holder.done(), "the draining instance's own stream should still be running"
            finally:
                holder.cancel()
                await asyncio.gather(holder, return_exceptions=True)
        return ready, took_drain, took_kill, served

    ready, took_drain, took_kill, served = asyncio.run(go())
    assert ready == 503
    assert took_drain < 5 and took_kill < 5, (took_drain, took_kill)
    assert served == Counter(tts1=6), served
    assert stats(cluster)["tts1"]["status"] == "UP"
