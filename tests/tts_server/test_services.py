"""tts_server.services: the Services bundle of an app served on the shared tiny VoxCPM2 engine."""

from __future__ import annotations

import dataclasses

import pytest
from starlette.applications import Starlette
from starlette.requests import Request

from tests.tts_server.harness import ENGINE_MODEL_LEN, ENGINE_SEQS, serve, server_config
from tts_server.errors import ApiError
from tts_server.jobs.queue import QueueClosed, Ticket
from tts_server.lifecycle import EXIT_ENGINE_DEAD, ServerState
from tts_server.services import Services, services
from voxcpm_engine.types import ModelInfo


@pytest.fixture(scope="module")
def srv(loop_runner, shared_engine, tiny_v2):
    with serve(loop_runner, shared_engine, server_config(tiny_v2)) as served:
        yield served


def test_the_app_holds_one_bundle(srv) -> None:
    svc = srv.services
    assert isinstance(svc, Services)
    assert services(Request({"type": "http", "app": srv.app})) is svc
    assert srv.app.state.voices is svc.voices  # each part is also under its own name for the voice routes


def test_a_starting_app_has_no_services_yet() -> None:
    with pytest.raises(ApiError) as info:
        services(Request({"type": "http", "app": Starlette()}))
    assert (info.value.status, info.value.type, info.value.headers) == (503, "overloaded", {"Retry-After": "1"})


def test_sample_rate_and_version_are_the_engines(srv, shared_engine) -> None:
    svc = srv.services
    assert svc.model == shared_engine.model_info
    assert svc.sample_rate == shared_engine.model_info.sample_rate == 48000  # tiny-v2 decodes at 48 kHz
    assert svc.model_version == 2


def test_model_info_is_public_and_lists_every_device(srv, tiny_v2) -> None:
    info = srv.services.model_info
    fields = {f.name for f in dataclasses.fields(ModelInfo)}
    assert set(info) == fields - {"checkpoint", "encode_sample_rate"} | {"devices"}
    assert info["devices"] == ["cpu"]
    assert not any(str(tiny_v2) in str(value) for value in info.values())  # no server path leaks
    assert info["architecture"] == "voxcpm2" and info["version"] == 2 and info["sample_rate"] == 48000
    assert info["max_model_len"] == ENGINE_MODEL_LEN and info["max_num_seqs"] == ENGINE_SEQS
    assert info["samples_per_patch"] > 0 and info["patch_size"] > 0 and info["latent_dim"] > 0


def test_engines_are_the_served_engine_and_alive(srv, shared_engine) -> None:
    svc = srv.services
    assert list(svc.engines) == [shared_engine] and svc.engines[0] is shared_engine
    assert shared_engine.is_alive and svc.engines_alive


def test_engine_lost_fails_the_server_once(loop_runner, shared_engine, tiny_v2) -> None:
    """An app of its own: engine_lost marks only this app's lifecycle and queue, not the shared engine."""
    with serve(loop_runner, shared_engine, server_config(tiny_v2)) as served:
        svc = served.services
        assert svc.lifecycle.state is ServerState.READY and svc.lifecycle.accepting
        svc.engine_lost("engine 0 exited with code 9")
        assert svc.lifecycle.state is ServerState.ENGINE_DEAD and not svc.lifecycle.accepting
        assert "engine 0 exited with code 9" in svc.lifecycle.reason
        assert svc.lifecycle.exit_code == EXIT_ENGINE_DEAD and svc.lifecycle.shutdown_requested.is_set()
        with pytest.raises(QueueClosed):
            served.run(svc.queue.acquire(Ticket("after-death")))
        svc.engine_lost("a second report")  # once: the first message stays
        assert "a second report" not in svc.lifecycle.reason

        async def ready():
            async with served.client() as client:
                return await client.get("/ready")

        assert served.run(ready()).status_code == 503
        assert shared_engine.is_alive  # the engine itself is untouched
