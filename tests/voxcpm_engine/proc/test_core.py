"""Tests of voxcpm_engine.proc.core: the engine-core step loop over a pipe, run in this process."""

import threading
from multiprocessing import Pipe

import numpy as np
import pytest
import torch

from tests.voxcpm_engine.proc.engine_helpers import CONFIG, TEXT, flac, params, tone
from voxcpm_engine.engine import Engine
from voxcpm_engine.io.checkpoint import load_checkpoint
from voxcpm_engine.io.prompt_audio import load_audio
from voxcpm_engine.proc.core import EngineCore, serve
from voxcpm_engine.proc.messages import (
    AddRequest,
    Call,
    ErrorKind,
    Fatal,
    Method,
    Reply,
    Shutdown,
    StepOutputs,
    recv_message,
    send_message,
)
from voxcpm_engine.sched.request import RequestStatus


@pytest.fixture(scope="module")
def local(tiny_v2):
    return Engine(load_checkpoint(tiny_v2), CONFIG)


def test_core_failure_fails_in_flight_requests_and_reports(local):
    """An exception inside the step loop: FAILED outputs for every request in flight, then Fatal, exit 1."""
    parent, child = Pipe()
    send_message(parent, AddRequest("f", TEXT, params=params(3, 1)))
    calls = []

    def broken_step():
        calls.append(1)
        raise RuntimeError("kernel exploded")

    local.step = broken_step
    try:
        assert serve(EngineCore(local, child)) == 1
    finally:
        del local.step
    outputs, fatal = recv_message(parent), recv_message(parent)
    assert isinstance(outputs, StepOutputs) and isinstance(fatal, Fatal) and calls == [1]
    [out] = outputs.outputs
    assert (out.request_id, out.status) == ("f", RequestStatus.FAILED)
    assert out.error == fatal.message == "engine core failed: RuntimeError: kernel exploded"
    assert "kernel exploded" in fatal.traceback
    local.abort("f")
    local.step()
    assert not local.has_unfinished()


def test_the_core_encodes_decoded_samples_only(local):
    """The engine process never decodes a file: ``encode_prompt`` takes mono float32 at the encoder's rate."""
    parent, child = Pipe()
    core = EngineCore(local, child)
    rate = local.frontend.config.encode_sample_rate
    audio = flac(tone(rate, 0.3), rate)
    samples = load_audio(audio, rate)
    try:
        ok = core.call(Call(1, Method.ENCODE_PROMPT, (samples, rate, False)))
        assert ok.error is None and torch.equal(ok.value, local.frontend.encode_prompt(audio))
        refused = [
            ((audio, rate, False), "must be a numpy array"),
            ((samples, 2 * rate, False), f"must be at the encoder's {rate} Hz"),
            ((samples.astype(np.float64), rate, False), "must be 1-D float32"),
            ((samples[None], rate, False), "must be 1-D float32"),
        ]
        for args, match in refused:
            reply = core.call(Call(2, Method.ENCODE_PROMPT, args))
            assert reply.error_kind is ErrorKind.VALUE and match in reply.error, reply
    finally:
        core.close()


def test_prompt_encodes_take_turns_with_the_steps(local):
    """Prompts that arrive together are encoded one per step while a request runs, so a stream waits
    for one encode at a time, not for all of them; while idle they are all encoded at once."""
    parent, child = Pipe()
    rate = local.frontend.config.encode_sample_rate
    samples = load_audio(flac(tone(rate, 0.1), rate), rate)
    send_message(parent, AddRequest("turns", TEXT, params=params(4, 1)))
    for call_id in range(3):
        send_message(parent, Call(call_id, Method.ENCODE_PROMPT, (samples, rate, False)))
    core = EngineCore(local, child)
    thread = threading.Thread(target=serve, args=(core,), daemon=True)
    thread.start()
    order = []
    try:
        finished = False
        while not finished or order.count("R") < 3:
            message = recv_message(parent)
            if isinstance(message, Reply):
                assert message.error is None, message.error
                order.append("R")
            elif isinstance(message, StepOutputs):
                order.append("S")
                finished = finished or any(RequestStatus(o.status).is_finished for o in message.outputs)
        assert "RR" not in "".join(order), order  # never two encodes without a step between them
        assert order.count("S") == 4, order
        for call_id in (10, 11):  # idle: no step to take turns with
            send_message(parent, Call(call_id, Method.ENCODE_PROMPT, (samples, rate, False)))
        assert [recv_message(parent).call_id for _ in range(2)] == [10, 11]
    finally:
        send_message(parent, Shutdown())
        thread.join(10)
    assert not thread.is_alive() and not local.has_unfinished()
