"""Tests of tts_server.jobs.job: a job's slot, segments, audio, cancellation and errors, on a served app's services.

The jobs run on the shared tiny engine through the services of a real app (one per module, one inference
slot); the ASGI receive channel each job watches is a small stand-in for a client connection, which
says ``http.disconnect`` when the test lets it. Random-weight models never stop on their own, so a
segment's length is its ``max_steps``.
"""

import asyncio
import dataclasses
import itertools
import time

import numpy as np
import pytest

from tests.tts_server.harness import serve, server_config
from tts_server.errors import ApiError
from tts_server.jobs.job import Job, JobSpec
from tts_server.jobs.registry import CancelReason, RequestState
from tts_server.metrics import Outcome
from voxcpm_engine.single.synthesizer import GenerationParams

LONG = 200  # steps: never ends within a test unless cancelled
_ids = itertools.count()


class Connection:
    """An ASGI receive channel: its body already read, it reports a disconnect once ``leave()`` is called."""

    def __init__(self) -> None:
        self.gone = asyncio.Event()

    async def receive(self):
        await self.gone.wait()
        return {"type": "http.disconnect"}

    def leave(self) -> None:
        self.gone.set()


@pytest.fixture(scope="module")
def srv(loop_runner, shared_engine, tiny_v2):
    config = server_config(tiny_v2, max_num_seqs=1, queue_timeout=0.3, retry_after=7)
    with serve(loop_runner, shared_engine, config) as served:
        yield served


@pytest.fixture(autouse=True)
def _idle_after(srv):
    yield
    srv.settled()


def spec(*segments: str, steps=2, seed: int | None = 1, rid=None, lora=None, text_field="target_text") -> JobSpec:
    return JobSpec(
        request_id=rid or f"job-{next(_ids)}", client_id="client", endpoint="generate",
        segments=segments or ("Hello there.",), voice=None, lora=lora,
        params=GenerationParams(min_steps=steps, max_steps=steps, seed=seed), text_field=text_field,
    )  # fmt: skip


def spp(srv) -> int:
    return int(srv.services.model_info["samples_per_patch"])


def outcomes(srv, outcome: Outcome) -> float:
    return srv.services.metrics.requests.labels(endpoint="generate", outcome=outcome.value)._value.get()


def test_a_collected_job_holds_the_slot_then_gives_everything_back(srv):
    svc = srv.services
    ok_before = outcomes(srv, Outcome.OK)

    async def go():
        job = await Job.start(svc, spec(steps=3), Connection().receive)
        during = (svc.queue.active, len(svc.registry), job.record.state, job.queue_position)
        audio = await job.collect()
        return job, during, audio

    job, during, audio = srv.run(go())
    assert during == (1, 1, RequestState.RUNNING, 0)
    assert audio.dtype == np.float32 and audio.shape == (3 * spp(srv),) and np.abs(audio).max() > 0
    assert job.samples == audio.size and job.record.state is RequestState.FINISHED
    assert (svc.queue.active, len(svc.registry)) == (0, 0)
    assert outcomes(srv, Outcome.OK) == ok_before + 1
    timeline = job.spec.timeline
    assert timeline.received <= timeline.slot <= timeline.first_chunk
    job.close(Outcome.FAILED)  # idempotent: the outcome is recorded once
    assert outcomes(srv, Outcome.OK) == ok_before + 1 and job.record.state is RequestState.FINISHED


def test_segments_play_in_order_each_with_its_own_seed(srv):
    svc = srv.services

    async def collect(s):
        return await (await Job.start(svc, s, Connection().receive)).collect()

    async def go():
        both = await collect(spec("One.", "Two.", seed=5))
        first = await collect(spec("One.", seed=5))
        second = await collect(spec("Two.", seed=6))  # segment k uses seed + k
        again = await collect(spec("Two.", seed=5))
        return both, first, second, again

    both, first, second, again = srv.run(go())
    np.testing.assert_array_equal(both, np.concatenate([first, second]))
    assert not np.array_equal(second, again)


def test_a_stream_gives_the_slot_back_when_generation_ends_not_when_the_client_has_read(srv):
    svc = srv.services

    async def go():
        job = await Job.start(svc, spec(steps=4), Connection().receive)
        stream = job.stream()
        chunks = [await anext(stream)]
        for _ in range(500):  # the client reads nothing more; generation runs ahead into the buffer
            if svc.queue.active == 0:
                break
            await asyncio.sleep(0.01)
        slot_after_generation = svc.queue.active
        chunks += [c async for c in stream]
        return job, slot_after_generation, chunks

    job, slot, chunks = srv.run(go())
    assert slot == 0 and job.record.state is RequestState.FINISHED
    assert sum(c.size for c in chunks) == 4 * spp(srv) and not job.cut_off


def test_a_full_stream_buffer_holds_generation_back(srv):
    svc = srv.services
    tight = dataclasses.replace(svc, config=dataclasses.replace(svc.config, stream_buffer_seconds=1e-6))

    async def go():
        job = await Job.start(tight, spec(steps=6), Connection().receive)
        stream = job.stream()
        first = await anext(stream)
        await asyncio.sleep(0.5)  # generation waits for the client at the bound
        held = (svc.queue.active, job.samples)
        rest = [c async for c in stream]
        return first, held, rest

    first, (active, made), rest = srv.run(go())
    assert active == 1 and made < 6 * spp(srv)
    assert first.size + sum(c.size for c in rest) == 6 * spp(srv)


def test_a_client_that_stops_reading_cancels_the_job(srv):
    svc = srv.services
    cancelled_before = outcomes(srv, Outcome.CANCELLED)

    async def go():
        job = await Job.start(svc, spec(steps=LONG), Connection().receive)
        stream = job.stream()
        await anext(stream)
        await stream.aclose()  # the response stopped iterating: the client went away
        return job

    job = srv.run(go())
    assert job.record.cancel_reason is CancelReason.DISCONNECT and job.record.state is RequestState.CANCELLED
    assert outcomes(srv, Outcome.CANCELLED) == cancelled_before + 1
    assert srv.settled()["unfinished"] == 0 and (svc.queue.active, len(svc.registry)) == (0, 0)


def test_a_disconnect_while_collecting_is_a_409_naming_the_request(srv):
    svc = srv.services

    async def go():
        conn = Connection()
        job = await Job.start(svc, spec(steps=LONG, rid="leaving"), conn.receive)
        asyncio.get_running_loop().call_later(0.1, conn.leave)
        with pytest.raises(ApiError) as err:
            await job.collect()
        return job, err.value

    job, err = srv.run(go())
    assert (err.status, err.field, err.type) == (409, "request_id", "cancelled")
    assert err.message == "request 'leaving' was cancelled (the client disconnected)"
    assert job.record.cancel_reason is CancelReason.DISCONNECT and (svc.queue.active, len(svc.registry)) == (0, 0)


def test_a_duplicate_id_in_flight_is_409_and_free_again_after(srv):
    svc = srv.services

    async def go():
        first = await Job.start(svc, spec(steps=2, rid="twice"), Connection().receive)
        with pytest.raises(ApiError) as err:
            await Job.start(svc, spec(steps=2, rid="twice"), Connection().receive)
        await first.collect()
        again = await (await Job.start(svc, spec(steps=2, rid="twice"), Connection().receive)).collect()
        return err.value, again

    err, again = srv.run(go())
    assert (err.status, err.field) == (409, "request_id") and again.size == 2 * spp(srv)


def test_a_queue_timeout_is_503_with_retry_after(srv):
    svc = srv.services
    rejections = svc.metrics.rejections.labels(reason="queue_timeout")
    before = rejections._value.get()

    async def go():
        holder = await Job.start(svc, spec(steps=LONG), Connection().receive)  # the one slot
        try:
            with pytest.raises(ApiError) as err:
                await Job.start(svc, spec(steps=2, rid="waits"), Connection().receive)
        finally:
            holder.close(Outcome.CANCELLED)
        return err.value

    err = srv.run(go())
    assert (err.status, err.type, err.headers) == (503, "overloaded", {"Retry-After": "7"})
    assert err.message.startswith("queue timeout") and rejections._value.get() == before + 1
    assert outcomes(srv, Outcome.TIMEOUT) >= 1 and svc.registry.get("waits") is None


def test_input_the_engine_rejects_is_a_400_naming_the_field(srv):
    svc = srv.services

    async def go():
        with pytest.raises(ApiError) as voice:
            await Job.start(svc, spec(lora="no-such-adapter"), Connection().receive)
        with pytest.raises(ApiError) as text:
            await Job.start(svc, spec("word " * 400, text_field="input"), Connection().receive)
        return voice.value, text.value

    voice, text = srv.run(go())
    assert (voice.status, voice.field) == (400, "voice") and voice.message.startswith("voice: ")
    assert (text.status, text.field) == (400, "input") and text.message.startswith("input: ")
    assert (svc.queue.active, len(svc.registry)) == (0, 0)


def test_a_response_that_fell_behind_takes_the_buffered_chunks_merged_in_order(srv):
    svc = srv.services
    limit = round(max(0.5, 2 * svc.config.stream_write_seconds) * svc.sample_rate)  # WritePacer.merge_limit

    async def read(delay: float):
        job = await Job.start(svc, spec(steps=8, seed=3), Connection().receive)
        stream = job.stream()
        chunks = [await anext(stream)]
        await asyncio.sleep(delay)  # the client is busy: the engine runs ahead into the buffer
        chunks += [c async for c in stream]
        return chunks

    prompt, behind = srv.run(read(0.0)), srv.run(read(1.0))
    assert len(behind) < 8 and all(c.size <= max(limit, spp(srv)) for c in behind)
    np.testing.assert_array_equal(np.concatenate(behind), np.concatenate(prompt))  # the same audio, in order


def paced(srv, write: float, lead: float):
    svc = srv.services
    return dataclasses.replace(
        svc, config=dataclasses.replace(svc.config, stream_write_seconds=write, stream_lead_seconds=lead)
    )


def timed_stream(svc, steps: int):
    async def go():
        job = await Job.start(svc, spec(steps=steps, seed=5), Connection().receive)
        writes = []
        async for chunk in job.stream():
            writes.append((time.monotonic(), chunk))  # the pacing's clock
        return writes

    return go()


def test_a_stream_ahead_of_playback_writes_in_blocks_and_one_near_it_writes_every_chunk(srv):
    rate, step = srv.services.sample_rate, spp(srv)
    each = srv.run(timed_stream(paced(srv, write=0.0, lead=0.0), 12))
    blocks = srv.run(timed_stream(paced(srv, write=2 * step / rate, lead=0.0), 12))
    never_ahead = srv.run(timed_stream(paced(srv, write=2 * step / rate, lead=1e6), 12))
    assert [c.size for _, c in each] == [step] * 12 == [c.size for _, c in never_ahead]
    sizes = [c.size for _, c in blocks]
    assert sizes[0] == step  # the first audio is never held back
    assert len(sizes) < 12 and all(s >= 2 * step for s in sizes[1:-1])
    np.testing.assert_array_equal(np.concatenate([c for _, c in blocks]), np.concatenate([c for _, c in each]))


def test_audio_held_back_goes_out_by_the_time_the_sent_audio_has_played(srv):
    # The block never fills (60 s): each write between the first and the last (all that is left once
    # the generation ends) is made when the lead runs out.
    rate, step = srv.services.sample_rate, spp(srv)
    writes = srv.run(timed_stream(paced(srv, write=60.0, lead=0.0), 60))  # 60 steps outlast the first deadline
    first_at, sent = writes[0][0], writes[0][1].size
    for at, chunk in writes[1:-1]:
        assert at >= first_at + sent / rate - 0.005  # not before the audio sent so far has played
        sent += chunk.size
    assert sent + writes[-1][1].size == 60 * step and len(writes) >= 3
