"""Tests of tts_server.lifecycle: the server states, the allowed transitions, the refused ones and the exit codes."""

import pytest

from tts_server.lifecycle import EXIT_ENGINE_DEAD, EXIT_START_FAILED, Lifecycle, ServerState


def test_lifecycle_states():
    life = Lifecycle()
    assert life.state is ServerState.STARTING and not life.accepting
    life.ready()
    assert life.accepting and life.reason is None
    assert life.drain() and not life.accepting and not life.drain()
    life.engine_died("boom")
    assert life.state is ServerState.ENGINE_DEAD and life.exit_code == EXIT_ENGINE_DEAD
    assert life.shutdown_requested.is_set() and "boom" in (life.reason or "")


def _in(state: ServerState) -> Lifecycle:
    """A lifecycle brought to ``state`` through the allowed transitions."""
    life = Lifecycle()
    steps = {
        ServerState.STARTING: [],
        ServerState.READY: [life.ready],
        ServerState.DRAINING: [life.ready, life.drain],
        ServerState.ENGINE_DEAD: [life.ready, lambda: life.engine_died("gone")],
        ServerState.START_FAILED: [lambda: life.start_failed("no model")],
        ServerState.STOPPED: [life.ready, life.drain, life.stopped],
    }[state]
    for step in steps:
        step()
    assert life.state is state
    return life


def test_a_fresh_server_is_starting_and_refuses_work():
    life = Lifecycle()
    assert (life.state, life.reason, life.exit_code) == (ServerState.STARTING, "the engine is starting", 0)
    assert not life.accepting and not life.shutdown_requested.is_set()


def test_only_ready_accepts_work():
    assert [s for s in ServerState if _in(s).accepting] == [ServerState.READY]


@pytest.mark.parametrize(
    "state, ends_in",
    [
        (ServerState.STARTING, ServerState.READY),
        (ServerState.READY, ServerState.READY),
        (ServerState.DRAINING, ServerState.DRAINING),  # a drain is never undone
        (ServerState.ENGINE_DEAD, ServerState.ENGINE_DEAD),
        (ServerState.START_FAILED, ServerState.START_FAILED),
        (ServerState.STOPPED, ServerState.STOPPED),
    ],
)
def test_ready_only_from_starting(state, ends_in):
    life = _in(state)
    life.ready()
    assert life.state is ends_in


@pytest.mark.parametrize("state", [ServerState.STARTING, ServerState.READY])
def test_drain_from_starting_or_ready_keeps_exit_code_zero(state):
    life = _in(state)
    assert life.drain() is True
    assert (life.state, life.reason, life.exit_code) == (ServerState.DRAINING, "the server is shutting down", 0)
    assert not life.shutdown_requested.is_set()  # the drain's end, not its start, stops the process


@pytest.mark.parametrize(
    "state", [ServerState.DRAINING, ServerState.ENGINE_DEAD, ServerState.START_FAILED, ServerState.STOPPED]
)
def test_drain_is_refused_when_not_serving(state):
    life = _in(state)
    before = (life.state, life.reason, life.exit_code)
    assert life.drain() is False
    assert (life.state, life.reason, life.exit_code) == before


@pytest.mark.parametrize("state", [ServerState.STARTING, ServerState.READY, ServerState.DRAINING])
def test_engine_death_exits_3_and_asks_to_stop(state):
    life = _in(state)
    life.engine_died("killed by signal 9")
    assert (life.state, life.exit_code) == (ServerState.ENGINE_DEAD, EXIT_ENGINE_DEAD) and EXIT_ENGINE_DEAD == 3
    assert life.reason == "the engine is not running: killed by signal 9" and life.shutdown_requested.is_set()


def test_engine_death_after_the_stop_changes_nothing():
    life = _in(ServerState.STOPPED)
    life.engine_died("late")
    assert (life.state, life.exit_code, life.reason) == (ServerState.STOPPED, 0, "the server has stopped")
    assert not life.shutdown_requested.is_set()


def test_engine_death_after_a_failed_start_keeps_its_reason_and_exit_code():
    life = Lifecycle()
    life.start_failed("no tokenizer.json")
    life.engine_died("gone")
    assert (life.state, life.exit_code) == (ServerState.START_FAILED, EXIT_START_FAILED)
    assert life.reason == "the server could not start: no tokenizer.json"


def test_a_failed_start_exits_1_at_once():
    life = Lifecycle()
    life.start_failed("config.json is missing")
    assert (life.state, life.exit_code) == (ServerState.START_FAILED, EXIT_START_FAILED) and EXIT_START_FAILED == 1
    assert life.reason == "the server could not start: config.json is missing" and life.shutdown_requested.is_set()


@pytest.mark.parametrize("state", [ServerState.READY, ServerState.DRAINING, ServerState.ENGINE_DEAD])
def test_start_failed_only_while_starting(state):
    life = _in(state)
    before = (life.state, life.reason, life.exit_code)
    life.start_failed("too late")
    assert (life.state, life.reason, life.exit_code) == before


@pytest.mark.parametrize(
    "state, ends_in, code",
    [
        (ServerState.DRAINING, ServerState.STOPPED, 0),
        (ServerState.READY, ServerState.STOPPED, 0),
        (ServerState.ENGINE_DEAD, ServerState.ENGINE_DEAD, EXIT_ENGINE_DEAD),  # the failure stays visible
        (ServerState.START_FAILED, ServerState.START_FAILED, EXIT_START_FAILED),
    ],
)
def test_stopped_keeps_a_failure_state(state, ends_in, code):
    life = _in(state)
    life.stopped()
    assert (life.state, life.exit_code) == (ends_in, code)
    if ends_in is ServerState.STOPPED:
        assert life.reason == "the server has stopped"
