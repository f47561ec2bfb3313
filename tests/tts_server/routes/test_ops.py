"""Operator endpoints against a real hypercorn and the tiny engine: the original server's shapes, consistency under
load, Prometheus metrics (the OpenAPI document is tested in ``test_openapi.py``)."""

import asyncio
import base64
import re

import pytest

from tests.tts_server.harness import get_all, serve, server_config, settled
from tests.tts_server.serving import sine_wav
from voxcpm_engine.types import EngineLoad

SEED_HEALTH = {
    "status", "sample_rate", "available_voices", "active_connections", "max_concurrent_connections",
    "active_inference", "queued_inference", "max_inference_slots",
}  # fmt: skip
SEED_STATUS = {"status", "can_accept_requests", "connections", "inference"}


@pytest.fixture(scope="module")
def srv(loop_runner, shared_engine, tiny_v2):
    config = server_config(tiny_v2, max_num_seqs=2, max_concurrent_connections=5)
    with serve(loop_runner, shared_engine, config) as served:
        yield served


def test_health_status_ready_queue_info_have_the_documented_shapes(srv):
    health, status, ready, queue, info, docs = get_all(srv, "/health", "/status", "/ready", "/queue", "/info", "/docs")
    h = health.json()
    assert SEED_HEALTH <= set(h) and h["status"] == "ok" and h["sample_rate"] == 48000
    assert (h["max_concurrent_connections"], h["max_inference_slots"]) == (5, 2)
    s = status.json()
    assert SEED_STATUS <= set(s) and s["status"] == "ready" and s["can_accept_requests"] is True
    assert set(s["connections"]) == {"active", "max", "utilization_pct"}
    assert set(s["inference"]) == {"active", "queued", "max_slots", "utilization_pct"}
    assert s["engine"]["alive"] is True and s["engine"]["kv_blocks_total"] > 0
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert queue.json() == {"pending_requests": [], "queue_depth": 0, "active_inference": 0}
    i = info.json()
    assert {f["name"] for f in i["formats"]} == {"pcm", "wav", "mp3", "flac", "opus", "aac"}
    assert i["model"]["version"] == 2 and "checkpoint" not in i["model"]
    assert i["limits"]["max_inference_slots"] == 2 and i["limits"]["max_text_chars"] == 4096
    assert docs.status_code == 200 and "openapi.json" in docs.text


def test_status_queue_and_health_stay_consistent_under_concurrent_load(srv):
    async def go():
        async with srv.client() as client:
            observations = []
            stop = asyncio.Event()

            async def poll():
                while not stop.is_set():
                    s, q, h = await asyncio.gather(client.get("/status"), client.get("/queue"), client.get("/health"))
                    observations.append((s.json(), q.json(), h.json()))
                    await asyncio.sleep(0.01)

            async def generate(i):
                payload = {"target_text": f"Load {i}.", "max_generate_length": 2, "response_format": "pcm"}
                return await client.post("/generate", json=payload)

            poller = asyncio.create_task(poll())
            responses = await asyncio.gather(*(generate(i) for i in range(10)))
            stop.set()
            await poller
            stats = await settled(srv)
            # Engine counters are those of the app's last poll (twice a second): wait for one after the load.
            for _ in range(300):
                if srv.services.engine_load.steps >= EngineLoad.from_stats(stats).steps:
                    break
                await asyncio.sleep(0.01)
            metrics = (await client.get("/metrics")).text
            final = [r.json() for r in await asyncio.gather(client.get("/status"), client.get("/health"))]
            return observations, responses, stats, metrics, final

    observations, responses, stats, metrics, final = srv.run(go())
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 503} and codes.count(200) >= 5  # at most 5 admitted at once; the rest may retry
    assert all(r.headers.get("retry-after") == "1" for r in responses if r.status_code == 503)
    assert len(observations) >= 3
    for s, q, h in observations:
        assert 0 <= s["inference"]["active"] <= s["inference"]["max_slots"] == 2
        assert 0 <= s["connections"]["active"] <= s["connections"]["max"] == 5
        assert q["queue_depth"] == len(q["pending_requests"]) == len(set(q["pending_requests"]))
        assert h["active_inference"] <= 2 and h["active_connections"] <= 5
        # inside one response the counts agree: every queued or running request holds a connection
        assert s["inference"]["active"] + s["inference"]["queued"] <= s["connections"]["active"]
        assert h["active_inference"] + h["queued_inference"] <= h["active_connections"]
    assert any(s["inference"]["active"] for s, _, _ in observations)
    assert (stats["running"], stats["waiting"]) == (0, 0)
    status, health = final
    assert status["inference"] == {"active": 0, "queued": 0, "max_slots": 2, "utilization_pct": 0.0}
    assert status["connections"]["active"] == health["active_connections"] == 0
    ok = codes.count(200)
    assert _metric(metrics, 'tts_requests_total{endpoint="generate",outcome="ok"}') >= ok
    assert _metric(metrics, 'tts_rejections_total{reason="connection_cap"}') >= codes.count(503)
    for name in ("tts_queue_wait_seconds_count", "tts_ttfb_seconds_count", "tts_real_time_factor_count"):
        assert _metric(metrics, name) >= ok
    assert _metric(metrics, "tts_audio_seconds_total") > 0 and _metric(metrics, "tts_engine_steps_total") > 0
    assert _metric(metrics, "tts_active_streams") == 0 and _metric(metrics, "tts_queue_depth") == 0
    # the loop served every request above: its CPU time is counted, and is part of the process's
    loop_cpu = _metric(metrics, "tts_event_loop_cpu_seconds_total")
    assert 0 < loop_cpu <= _metric(metrics, "tts_process_cpu_seconds_total")
    server = status["server"]
    assert set(server) == {"loop_busy_pct", "loop_lag_ms", "loop_cpu_s", "process_cpu_s"}
    assert server["loop_cpu_s"] >= loop_cpu - 0.0005  # read later than the scrape, to the ms
    assert 0 <= server["loop_busy_pct"] <= 100 and server["loop_lag_ms"] >= 0


def _metric(text, name):
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} missing"
    return float(match.group(1))


def test_cancel_of_an_unknown_id_and_bad_cancel_bodies(srv):
    async def go():
        async with srv.client() as client:
            return [
                await client.post("/cancel", json={"request_id": "nobody"}),
                await client.post("/cancel", json={}),
                await client.post("/cancel", json={"request_id": "bad id"}),
                await client.post("/cancel", content=b"x", headers={"content-type": "text/plain"}),
            ]

    unknown, missing, bad, wrong_type = srv.run(go())
    assert unknown.json() == {"status": "not_found", "request_id": "nobody"}
    assert missing.status_code == bad.status_code == 400
    assert missing.json()["error"]["field"] == bad.json()["error"]["field"] == "request_id"
    assert wrong_type.status_code == 415


def test_an_unexpected_error_is_a_logged_500_in_the_api_error_shape(loop_runner, shared_engine, tiny_v2, caplog):
    config = server_config(tiny_v2, max_num_seqs=1)
    with serve(loop_runner, shared_engine, config) as served:

        async def boom(request):
            raise RuntimeError("a bug")

        served.app.add_route("/boom", boom)
        served.app.add_route("/v1/boom", boom)

        async def go():
            async with served.client() as client:
                return await client.get("/boom"), await client.get("/v1/boom")

        plain, openai_shape = served.run(go())
    assert plain.status_code == 500 and plain.json()["error"]["type"] == "internal_error"
    assert "RuntimeError" in plain.json()["error"]["message"] and "a bug" not in plain.text
    assert openai_shape.status_code == 500 and openai_shape.json()["error"]["type"] == "server_error"
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert any(r.name == "tts_server.app" and "GET /boom" in r.getMessage() for r in errors)
    assert any(r.exc_info for r in errors)  # the server logs the traceback


# --- keys: voice names on the probes, /queue and /cancel per client ---------------------------------

USER = {"authorization": "Bearer user-key"}
ADMIN = {"authorization": "Bearer admin-key"}


async def _until(predicate, timeout_s=10.0):
    end = asyncio.get_running_loop().time() + timeout_s
    while not await predicate():
        assert asyncio.get_running_loop().time() < end, "condition not reached"
        await asyncio.sleep(0.02)


def test_with_keys_probes_hide_voice_names_and_queue_and_cancel_are_per_client(loop_runner, shared_engine, tiny_v2):
    config = server_config(
        tiny_v2, max_num_seqs=1, max_concurrent_connections=8, api_key="user-key", admin_key="admin-key"
    )
    wav = base64.b64encode(sine_wav(0.3)).decode()
    long = {"target_text": "Hello.", "max_generate_length": 200, "min_generate_length": 200, "response_format": "pcm"}

    async def go():
        async with (
            srv.client(headers=ADMIN) as admin,
            srv.client(headers={**USER, "x-client-id": "alice"}) as alice,
            srv.client(headers={**USER, "x-client-id": "bob"}) as bob,
            srv.client() as anonymous,
        ):
            assert (await admin.post("/voices", json={"name": "secret-name", "ref_audio": wav})).status_code == 201
            probes = {
                "health anonymous": (await anonymous.get("/health")).json()["available_voices"],
                "health wrong key": (await anonymous.get("/health", headers={"authorization": "Bearer no"})).json()[
                    "available_voices"
                ],
                "info anonymous": (await anonymous.get("/info")).json()["voices"],
                "health user": (await alice.get("/health")).json()["available_voices"],
                "info admin": (await admin.get("/info")).json()["voices"],
            }
            # One inference slot: alice's long request holds it (read as it comes), the next ones queue.
            async with alice.stream("POST", "/generate", json={**long, "request_id": "a-run"}) as running:
                assert running.status_code == 200
                reader = asyncio.create_task(running.aread())
                waiting = [
                    asyncio.create_task(alice.post("/generate", json={**long, "request_id": "a-wait"})),
                    asyncio.create_task(bob.post("/generate", json={**long, "request_id": "b-wait"})),
                ]

                async def both_queued():
                    response = await admin.get("/queue")
                    return len(response.json()["pending_requests"]) == 2

                await _until(both_queued)
                queues = {who: (await c.get("/queue")).json() for who, c in [("alice", alice), ("bob", bob)]}
                queues["admin"] = (await admin.get("/queue")).json()
                anonymous_queue = await anonymous.get("/queue")
                foreign = await bob.post("/cancel", json={"request_id": "a-wait"})
                foreign_running = await bob.post("/cancel", json={"request_id": "a-run"})
                still = (await alice.get("/queue")).json()["pending_requests"]
                own = await alice.post("/cancel", json={"request_id": "a-wait"})
                by_admin = await admin.post("/cancel", json={"request_id": "b-wait"})
                stop = await alice.post("/cancel", json={"request_id": "a-run"})
                cancelled = [(await t).status_code for t in waiting]
                await reader
            await admin.delete("/voices/secret-name")
            return probes, queues, anonymous_queue, foreign, foreign_running, still, own, by_admin, stop, cancelled

    with serve(loop_runner, shared_engine, config) as srv:
        probes, queues, anonymous_queue, foreign, foreign_running, still, own, by_admin, stop, cancelled = srv.run(go())
        srv.settled()
    assert probes == {
        "health anonymous": [],
        "health wrong key": [],
        "info anonymous": [],
        "health user": ["secret-name"],
        "info admin": ["secret-name"],
    }
    assert queues["alice"] == {"pending_requests": ["a-wait"], "queue_depth": 1, "active_inference": 1}
    assert queues["bob"]["pending_requests"] == ["b-wait"]
    assert queues["admin"]["pending_requests"] == ["a-wait", "b-wait"]
    assert anonymous_queue.status_code == 401
    assert foreign.json()["status"] == foreign_running.json()["status"] == "not_found"  # as if it did not exist
    assert still == ["a-wait"]
    assert own.json()["status"] == by_admin.json()["status"] == stop.json()["status"] == "cancelled"
    assert cancelled == [409, 409]
