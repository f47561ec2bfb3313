"""Tests of voxcpm_engine.worker.host_copies on the CPU (the CUDA path runs in the engine's GPU tests)."""

from __future__ import annotations

import torch

from voxcpm_engine.worker.host_copies import copies_done, to_host


def test_a_host_copy_is_float32_and_never_an_alias():
    buffer = torch.ones(2, 3, dtype=torch.bfloat16)
    host = to_host(buffer)
    buffer.fill_(5)  # the next step rewrites its static buffer
    assert host.dtype == torch.float32 and torch.equal(host, torch.ones(2, 3))
    same_dtype = torch.zeros(4)
    assert to_host(same_dtype).data_ptr() != same_dtype.data_ptr()


def test_nothing_to_wait_for_on_the_cpu():
    assert copies_done(torch.device("cpu")) is None
