"""``POST /generate`` queueing: ids, FIFO and fair order, cancellation, disconnects, the cap, the queue timeout.

A one-slot server makes the order observable: requests run one at a time, so the order in which
they complete is the order in which they got the slot. A request that must keep its slot runs
for ``LONG`` steps and is cancelled when the test is done with it.
"""

import asyncio
import time

import pytest

from tests.tts_server.harness import serve, server_config, settled
from tests.tts_server.routes.generate_helpers import LONG, body, has, lacks, pending, start_stream, until


@pytest.fixture(scope="module")
def serial(loop_runner, shared_engine, tiny_v2):
    """One slot, cap six: the queue and the cap are easy to fill."""
    config = server_config(tiny_v2, max_num_seqs=1, max_concurrent_connections=6)
    with serve(loop_runner, shared_engine, config) as served:
        yield served


def test_duplicate_id_in_flight_is_409_and_reusable_after(serial):
    async def go():
        async with serial.client() as client:
            held, rest = await start_stream(client, request_id="dup", max_generate_length=LONG)
            again = await client.post("/generate", json=body(request_id="dup"))
            await client.post("/cancel", json={"request_id": "dup"})
            async for _ in rest:
                pass
            await held.aclose()
            await settled(serial)
            reused = await client.post("/generate", json=body(request_id="dup"))
            return again, reused

    again, reused = serial.run(go())
    assert again.status_code == 409 and again.json()["error"]["field"] == "request_id"
    assert reused.status_code == 200 and reused.headers["x-request-id"] == "dup"


def test_fifo_queued_requests_enter_the_engine_in_arrival_order(serial):
    async def go():
        async with serial.client() as client:
            held, rest = await start_stream(client, request_id="hold", max_generate_length=LONG)
            started: list[str] = []

            async def one(rid):
                response = await client.post("/generate", json=body(request_id=rid, max_generate_length=1))
                started.append(rid)  # with one slot, requests complete in the order they got it
                return response

            tasks = []
            for i in range(4):
                tasks.append(asyncio.create_task(one(f"q{i}")))
                await until(lambda i=i: has(client, f"q{i}"))  # each arrives after the previous is queued
            queued = await pending(client)
            status = (await client.get("/status")).json()
            await client.post("/cancel", json={"request_id": "hold"})
            async for _ in rest:
                pass
            responses = await asyncio.gather(*tasks)
            await held.aclose()
            return queued, status, started, responses

    queued, status, started, responses = serial.run(go())
    assert queued == ["q0", "q1", "q2", "q3"]
    assert status["inference"] == {"active": 1, "queued": 4, "max_slots": 1, "utilization_pct": 100.0}
    assert [r.headers["x-queue-status"] for r in responses] == ["0", "1", "2", "3"]
    assert started == ["q0", "q1", "q2", "q3"]
    serial.settled()


def test_fair_mode_interleaves_clients(loop_runner, shared_engine, tiny_v2):
    config = server_config(tiny_v2, max_num_seqs=1, fair_queue=True, max_concurrent_connections=10)
    with serve(loop_runner, shared_engine, config) as served:

        async def go(served=served):
            async with served.client() as client:
                held, rest = await start_stream(client, request_id="hold", max_generate_length=LONG)
                order: list[str] = []

                async def one(rid, who):
                    response = await client.post(
                        "/generate", json=body(request_id=rid, max_generate_length=1), headers={"x-client-id": who}
                    )
                    order.append(rid)
                    return response.status_code

                tasks = []
                for rid, who in [("a1", "A"), ("a2", "A"), ("a3", "A"), ("b1", "B"), ("b2", "B"), ("c1", "C")]:
                    tasks.append(asyncio.create_task(one(rid, who)))
                    await until(lambda rid=rid: has(client, rid))
                queued = await pending(client)
                await client.post("/cancel", json={"request_id": "hold"})
                async for _ in rest:
                    pass
                codes = await asyncio.gather(*tasks)
                await held.aclose()
                return queued, order, codes

        queued, order, codes = served.run(go())
        assert queued == ["a1", "b1", "c1", "a2", "b2", "a3"]
        assert order == queued and codes == [200] * 6
        served.settled()


def test_cancel_queued_then_running_frees_the_slot_and_the_engine(serial):
    async def go():
        async with serial.client() as client:
            held, rest = await start_stream(client, request_id="run", max_generate_length=LONG)
            waiting = asyncio.create_task(client.post("/generate", json=body(request_id="wait")))
            await until(lambda: has(client, "wait"))
            cancel_queued = (await client.post("/cancel", json={"request_id": "wait"})).json()
            queued_response = await waiting
            after_queued = (await client.get("/status")).json()
            t0 = time.monotonic()
            cancel_running = (await client.post("/cancel", json={"request_id": "run"})).json()
            async for _ in rest:  # the stream ends cleanly, soon
                pass
            ended_in = time.monotonic() - t0
            await held.aclose()
            stats = await settled(serial, timeout_s=2.0)
            not_found = (await client.post("/cancel", json={"request_id": "run"})).json()
            return cancel_queued, queued_response, after_queued, cancel_running, ended_in, stats, not_found

    cancel_queued, queued_response, after_queued, cancel_running, ended_in, stats, not_found = serial.run(go())
    assert cancel_queued == {"status": "cancelled", "request_id": "wait"}
    assert queued_response.status_code == 409 and queued_response.json()["error"]["type"] == "cancelled"
    assert after_queued["inference"]["queued"] == 0 and after_queued["inference"]["active"] == 1
    assert cancel_running == {"status": "cancelled", "request_id": "run"}
    assert ended_in < 2.0
    assert (stats["running"], stats["waiting"]) == (0, 0)
    assert not_found == {"status": "not_found", "request_id": "run"}


def test_client_disconnect_mid_stream_and_while_queued_frees_everything(serial):
    async def go():
        async with serial.client() as client, serial.client() as other:
            held, rest = await start_stream(client, request_id="gone", max_generate_length=LONG)
            queued = asyncio.create_task(other.post("/generate", json=body(request_id="impatient")))
            await until(lambda: has(client, "impatient"))
            queued.cancel()  # the client gives up while queued: its connection closes
            await until(lambda: lacks(client, "impatient"))
            during = (await client.get("/status")).json()
            await held.aclose()  # the client goes away mid-stream
            stats = await settled(serial, timeout_s=3.0)
            status = (await client.get("/status")).json()
            return during, stats, status

    during, stats, status = serial.run(go())
    assert during["inference"] == {"active": 1, "queued": 0, "max_slots": 1, "utilization_pct": 100.0}
    assert (stats["running"], stats["waiting"]) == (0, 0)
    assert status["inference"]["active"] == 0 and status["connections"]["active"] == 0


def test_over_the_cap_surplus_gets_503_at_once(serial):
    async def go():
        async with serial.client() as client:
            held, rest = await start_stream(client, request_id="cap-run", max_generate_length=LONG)
            waiting = asyncio.create_task(client.post("/generate", json=body(request_id="cap-wait")))
            await until(lambda: has(client, "cap-wait"))
            t0 = time.monotonic()
            burst = [asyncio.create_task(client.post("/generate", json=body(request_id=f"cap-{i}"))) for i in range(8)]
            while sum(t.done() for t in burst) < 4 and time.monotonic() - t0 < 5.0:
                await asyncio.sleep(0.01)
            elapsed = time.monotonic() - t0
            await asyncio.sleep(0.3)  # nothing else may be refused or answered meanwhile
            done = [t for t in burst if t.done()]
            refused = [t.result() for t in done]
            health = await client.get("/health")
            await client.post("/cancel", json={"request_id": "cap-run"})
            async for _ in rest:
                pass
            await held.aclose()
            admitted = await asyncio.gather(*(t for t in burst if t not in done))
            return refused, admitted, elapsed, health, await waiting

    refused, admitted, elapsed, health, waited = serial.run(go())
    # cap 6: one running, one queued, four of the burst admitted (queued); the other four refused at once
    assert len(refused) == 4 and elapsed < 5.0
    assert all(r.status_code == 503 and r.headers["retry-after"] == "1" for r in refused)
    assert all(r.json()["error"]["type"] == "overloaded" for r in refused)
    assert health.status_code == 200 and health.json()["active_connections"] == 6
    assert [r.status_code for r in admitted] == [200] * 4 and waited.status_code == 200
    serial.settled()


def test_queue_timeout_is_503_and_leaves_the_queue(loop_runner, shared_engine, tiny_v2):
    config = server_config(tiny_v2, max_num_seqs=1, queue_timeout=0.3)
    with serve(loop_runner, shared_engine, config) as served:

        async def go(served=served):
            async with served.client() as client:
                held, rest = await start_stream(client, request_id="slow", max_generate_length=LONG)
                t0 = time.monotonic()
                late = await client.post("/generate", json=body(request_id="late"))
                waited = time.monotonic() - t0
                left = await pending(client)
                await held.aclose()
                await settled(served)
                return late, waited, left

        late, waited, left = served.run(go())
        assert late.status_code == 503 and late.headers["retry-after"] == "1"
        assert "queue timeout" in late.json()["error"]["message"]
        assert 0.25 < waited < 3.0 and left == []


def test_non_streaming_request_cancelled_while_running_gets_409(serial):
    async def go():
        async with serial.client() as client:
            task = asyncio.create_task(
                client.post("/generate", json=body(request_id="whole", stream=False, max_generate_length=LONG))
            )
            await until(lambda: _running(serial, "whole"))
            await client.post("/cancel", json={"request_id": "whole"})
            response = await task
            await settled(serial)
            return response

    response = serial.run(go())
    assert response.status_code == 409 and response.json()["error"]["type"] == "cancelled"


async def _running(served, rid):
    record = served.services.registry.get(rid)
    return record is not None and record.engine_request_id is not None
