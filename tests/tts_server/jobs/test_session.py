"""Tests of tts_server.jobs.session on a served app's services and the tiny engine.

The transport here is the test itself: it reads ``Session.events()`` directly, or does not read at
all (a client that stalls). Random-weight models never stop on their own, so a segment's length is
its ``max_steps``.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest

from tests.tts_server.harness import serve, server_config
from tts_server.jobs.registry import CancelReason, RequestState
from tts_server.jobs.session import Session
from tts_server.jobs.session_events import SegmentStarted, SessionEnded, SessionFailed
from tts_server.jobs.session_spec import SessionSpec
from tts_server.text.incremental import BufferPolicy
from voxcpm_engine.types import GenerationParams, Voice

_ids = itertools.count()


@pytest.fixture(scope="module")
def srv(loop_runner, shared_engine, tiny_v2):
    with serve(loop_runner, shared_engine, server_config(tiny_v2, max_num_seqs=1)) as served:
        yield served


def spec(steps: int = 3, buffer_seconds: float = 30.0, context: int = 64) -> SessionSpec:
    return SessionSpec(
        request_id=f"sess-{next(_ids)}", client_id="c", voice=None, lora=None,
        params=GenerationParams(min_steps=steps, max_steps=steps, seed=1), policy=BufferPolicy(first_clause_chars=0),
        text_wait_s=0.2, max_session_chars=10_000, max_pending_chars=1000, context_patches=context,
        context_chars=64, buffer_seconds=buffer_seconds,
    )  # fmt: skip


def opened(srv, s: SessionSpec) -> Session:
    async def prepare(text: str) -> tuple[str, ...]:
        return (text,)

    return Session.open(srv.services, s, prepare)


def test_segments_continue_from_the_one_before_unless_context_is_off(srv):
    async def go(context: int):
        session = opened(srv, spec(context=context))
        session.add_text("One. Two. Three")
        session.close()
        return [e async for e in session.events()]

    events = srv.run(go(64))
    assert [(e.text, e.continued) for e in events if isinstance(e, SegmentStarted)] == [
        ("One.", False), ("Two.", True), ("Three", True),
    ]  # fmt: skip
    assert isinstance(events[-1], SessionEnded) and events[-1].segments == 3
    off = srv.run(go(0))
    assert not any(e.continued for e in off if isinstance(e, SegmentStarted))


def test_a_client_that_does_not_read_pauses_generation_and_frees_the_slot_when_dropped(srv):
    svc = srv.services

    async def go():
        session = opened(srv, spec(steps=200, buffer_seconds=0.05))
        session.add_text("A long sentence nobody listens to.")
        session.flush()
        await asyncio.sleep(1.0)
        made_then = session.samples
        await asyncio.sleep(1.0)
        paused = session.samples == made_then  # nothing taken: the speaker waits at the bound
        holding = (svc.queue.active, session.record.state)
        await session.abort(CancelReason.DISCONNECT)
        return made_then, paused, holding, svc.queue.active, session.spec.request_id in svc.registry

    made, paused, holding, active_after, registered = srv.run(go())
    limit = round(0.05 * svc.sample_rate)
    assert 0 < made and paused
    assert made < limit + 2 * svc.model.samples_per_patch  # the bound, plus the chunk that crossed it
    assert holding == (1, RequestState.RUNNING)
    assert (active_after, registered) == (0, False)


def test_cancel_while_waiting_for_text_ends_the_session(srv):
    async def go():
        session = opened(srv, spec())
        await asyncio.sleep(0.05)
        state = session.record.state
        await srv.services.registry.cancel(session.spec.request_id, CancelReason.CLIENT)
        return state, [e async for e in session.events()]

    state, events = srv.run(go())
    assert state is RequestState.IDLE
    assert isinstance(events[-1], SessionFailed) and events[-1].error.status == 409


def test_each_segment_is_prompted_with_the_latents_and_text_of_the_one_before(srv):
    svc = srv.services
    seen: list[tuple[Voice | None, GenerationParams]] = []
    generate = svc.engine.generate

    def recording(request_id, text, *, voice=None, params=None, lora=None):  # what the engine was asked for
        seen.append((voice, params))
        return generate(request_id, text, voice=voice, params=params, lora=lora)

    async def go():
        session = opened(srv, spec(steps=4))
        session.add_text("Hello. Again.")
        session.close()
        return [e async for e in session.events()]

    svc.engine.generate = recording
    try:
        srv.run(go())
    finally:
        del svc.engine.generate
    (first_voice, first), (voice, second) = seen
    assert first_voice is None and first.return_latents and second.return_latents
    assert voice.prompt_text == "Hello." and voice.ref_latents is None
    assert tuple(voice.prompt_latents.shape) == (4, svc.model.patch_size, svc.model.latent_dim)
