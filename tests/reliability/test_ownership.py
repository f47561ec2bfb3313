"""Requests belong to the client that made them, and a cancelled id can be used again at once.

Against the live shared server (API key plus a separate admin key). Clients share the API key and
tell themselves apart with ``X-Client-Id``, as a proxy in front of the server would set it:

- ``GET /queue`` lists only the caller's waiting requests; the admin key sees every client's.
- ``POST /cancel`` of another client's id answers ``not_found`` (as for an id that does not exist)
  and leaves the request alone; its owner and the admin key can cancel it.
- After ``POST /cancel`` answers ``cancelled``, a new request may take the same id (it used to be a
  409 until the old job had wound down), and the old stream's end does not touch the new one.
"""

from __future__ import annotations

import asyncio
import time

import httpx

from tests.reliability.conftest import ADMIN_KEY, API_KEY
from tests.server_process import Server

LONG = {"target_text": "Hello there.", "max_generate_length": 200, "min_generate_length": 200, "response_format": "pcm"}
SHORT = {"target_text": "Hello.", "max_generate_length": 2, "response_format": "pcm"}
SLOTS = 4  # --max-num-seqs of tests/server_process.py


def clients(server: Server) -> tuple[httpx.AsyncClient, ...]:
    """Alice, Bob (the API key, each its own X-Client-Id) and the admin."""
    user = {"Authorization": f"Bearer {API_KEY}"}
    return (
        httpx.AsyncClient(base_url=server.url, timeout=30, headers={**user, "X-Client-Id": "alice"}),
        httpx.AsyncClient(base_url=server.url, timeout=30, headers={**user, "X-Client-Id": "bob"}),
        httpx.AsyncClient(base_url=server.url, timeout=30, headers={"Authorization": f"Bearer {ADMIN_KEY}"}),
    )


async def start(client: httpx.AsyncClient, request_id: str) -> tuple[httpx.Response, asyncio.Task[bytes]]:
    """A long streaming request, its first bytes received; the rest is read in a task (a reading client)."""
    response = await client.send(client.build_request("POST", "/generate", json={**LONG, "request_id": request_id}),
                                 stream=True)  # fmt: skip
    assert response.status_code == 200, (await response.aread()).decode()
    chunks = response.aiter_raw()
    first = await anext(chunks)

    async def rest() -> bytes:
        data = bytearray(first)
        try:
            async for chunk in chunks:
                data += chunk
        except httpx.HTTPError:  # a cancelled stream may end by breaking the transfer off
            pass
        finally:
            await response.aclose()
        return bytes(data)

    return response, asyncio.create_task(rest())


async def until_pending(admin: httpx.AsyncClient, count: int, timeout_s: float = 15.0) -> list[str]:
    end = time.monotonic() + timeout_s
    while True:
        pending = (await admin.get("/queue")).json()["pending_requests"]
        if len(pending) >= count or time.monotonic() > end:
            return pending
        await asyncio.sleep(0.02)


def test_queue_and_cancel_are_scoped_to_the_client(server: Server):
    async def go():
        alice, bob, admin = clients(server)
        async with alice, bob, admin:
            running = [await start(admin, f"own-fill-{i}") for i in range(SLOTS)]  # every slot busy
            waiting = {
                "own-a": asyncio.create_task(alice.post("/generate", json={**SHORT, "request_id": "own-a"})),
                "own-b": asyncio.create_task(bob.post("/generate", json={**SHORT, "request_id": "own-b"})),
            }
            all_pending = await until_pending(admin, 2)
            seen = {"alice": await alice.get("/queue"), "bob": await bob.get("/queue")}
            bob_cancels_alice = await bob.post("/cancel", json={"request_id": "own-a"})
            bob_cancels_running = await bob.post("/cancel", json={"request_id": "own-fill-0"})
            still_pending = (await admin.get("/queue")).json()["pending_requests"]
            alice_cancels = await alice.post("/cancel", json={"request_id": "own-a"})
            admin_cancels = await admin.post("/cancel", json={"request_id": "own-b"})
            outcomes = {rid: (await task).status_code for rid, task in waiting.items()}
            for i in range(SLOTS):
                await admin.post("/cancel", json={"request_id": f"own-fill-{i}"})
            for _, reader in running:
                await reader
            return (all_pending, seen, bob_cancels_alice, bob_cancels_running, still_pending, alice_cancels,
                    admin_cancels, outcomes)  # fmt: skip

    all_pending, seen, foreign, foreign_running, still, own, by_admin, outcomes = asyncio.run(go())
    assert sorted(all_pending) == ["own-a", "own-b"]  # the admin key sees every client's requests
    assert seen["alice"].json() == {"pending_requests": ["own-a"], "queue_depth": 1, "active_inference": SLOTS}
    assert seen["bob"].json()["pending_requests"] == ["own-b"]
    assert foreign.json() == {"status": "not_found", "request_id": "own-a"}  # indistinguishable from no such id
    assert foreign_running.json()["status"] == "not_found"
    assert sorted(still) == ["own-a", "own-b"]  # bob's attempt left alice's request alone
    assert own.json()["status"] == by_admin.json()["status"] == "cancelled"
    assert outcomes == {"own-a": 409, "own-b": 409}  # each learns it was cancelled
    server.wait_settled()


def test_a_cancelled_id_can_be_used_again_at_once(server: Server):
    async def go():
        alice, bob, admin = clients(server)
        async with alice, bob, admin:
            _, old_reader = await start(alice, "own-reuse")
            cancelled = await alice.post("/cancel", json={"request_id": "own-reuse"})
            reused = await alice.post("/generate", json={**SHORT, "request_id": "own-reuse"})  # was a 409
            old = await old_reader
            # The new request's id is free again once it finished; the old job's end did not take it.
            again = await alice.post("/generate", json={**SHORT, "request_id": "own-reuse"})
            return cancelled, reused, old, again

    cancelled, reused, old, again = asyncio.run(go())
    assert cancelled.json()["status"] == "cancelled"
    assert reused.status_code == 200, reused.text
    assert reused.headers["x-request-id"] == "own-reuse" and len(reused.content) > 0
    assert len(old) < 100 * len(reused.content)  # 200 patches against 2: the old stream stopped early
    assert again.status_code == 200, again.text
    server.wait_settled()
