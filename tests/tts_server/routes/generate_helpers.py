"""Helpers shared by the ``/generate`` test modules."""

import asyncio
import time

TEXT = "Hello from the server test."
LONG = 200  # steps: never ends within a test unless cancelled


def body(**fields):
    return {"target_text": TEXT, "max_generate_length": 2, "response_format": "pcm", **fields}


def spp(served):
    return int(served.services.model_info["samples_per_patch"])


async def start_stream(client, **fields):
    """Send a streaming request and wait for its first bytes; returns (response, byte iterator)."""
    request = client.build_request("POST", "/generate", json=body(**fields))
    response = await client.send(request, stream=True)
    assert response.status_code == 200, (await response.aread()).decode()
    chunks = response.aiter_bytes()
    await anext(chunks)
    return response, chunks


async def until(condition, timeout_s=5.0):
    end = time.monotonic() + timeout_s
    while not await condition():
        assert time.monotonic() < end, "condition not reached"
        await asyncio.sleep(0.02)


async def pending(client):
    return (await client.get("/queue")).json()["pending_requests"]


async def has(client, rid):
    return rid in await pending(client)


async def lacks(client, rid):
    return not await has(client, rid)
