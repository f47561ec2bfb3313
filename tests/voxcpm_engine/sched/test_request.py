"""Tests of voxcpm_engine.sched.request: RequestStatus ordering, FirstAudioTimes, Request position bookkeeping."""

from __future__ import annotations

import torch

from voxcpm_engine.config.model_config import ModelConfig
from voxcpm_engine.config.presets import preset_config
from voxcpm_engine.frontend import build_prefill
from voxcpm_engine.sched.request import FirstAudioTimes, Request, RequestStatus, SamplingParams

CFG = ModelConfig.from_dict(preset_config("tiny-v2"))


def test_status_order_puts_every_final_state_above_running():
    order = [
        RequestStatus.WAITING,
        RequestStatus.RUNNING,
        RequestStatus.FINISHED_STOPPED,
        RequestStatus.FINISHED_LENGTH,
        RequestStatus.CANCELLED,
        RequestStatus.FAILED,
    ]
    assert sorted(RequestStatus) == order and [int(s) for s in order] == list(range(6))
    assert [s.is_finished for s in order] == [False, False, True, True, True, True]
    assert RequestStatus(3) is RequestStatus.FINISHED_LENGTH  # the wire carries plain ints


def test_first_audio_times_default_to_zero_and_keep_stage_order():
    times = FirstAudioTimes(added=1.0)
    assert times.as_tuple() == (1.0, 0.0, 0.0, 0.0, 0.0)
    times.queued, times.scheduled, times.first_patch, times.first_audio = 2.0, 3.5, 4.0, 4.25
    assert times.as_tuple() == (1.0, 2.0, 3.5, 4.0, 4.25)


def test_sampling_params_defaults():
    p = SamplingParams()
    assert (p.cfg_value, p.inference_timesteps, p.min_steps, p.max_steps, p.temperature) == (2.0, 10, 2, 2000, 1.0)


def test_positions_pending_and_reset_for_recompute():
    prefill = build_prefill(CFG, [201, 202, 203])  # 3 tokens + 101
    req = Request("r", prefill, SamplingParams(), torch.Generator(), arrival=7)
    assert (req.status, req.prompt_len, req.num_positions, req.num_pending) == (RequestStatus.WAITING, 4, 4, 4)
    req.num_computed = 4
    req.patches.append(torch.zeros(CFG.patch_size, CFG.feat_dim))
    assert (req.num_positions, req.num_pending) == (5, 1)
    req.block_table, req.num_cached = [3, 9], 4
    req.embed = req.lm_hidden = req.residual_hidden = torch.ones(2)
    req.reset_for_recompute()
    assert req.block_table == [] and (req.num_computed, req.num_cached) == (0, 0)
    assert req.embed is None and req.lm_hidden is None and req.residual_hidden is None
    assert len(req.patches) == 1 and req.num_pending == 5  # generated patches stay, to be re-fed
    assert req.arrival == 7 and req.prompt_len == 4


def test_requests_compare_by_identity():
    prefill = build_prefill(CFG, [5])
    a = Request("same", prefill, SamplingParams(), torch.Generator(), arrival=0)
    b = Request("same", prefill, SamplingParams(), torch.Generator(), arrival=0)
    assert a != b and a == a and a in [a] and b not in [a]
