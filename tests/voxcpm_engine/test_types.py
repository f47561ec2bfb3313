"""Tests of voxcpm_engine.types: request settings, voices, and the typed refusal that crosses processes."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest

from voxcpm_engine.types import GenerationParams, RequestField, RequestRejected, Voice


def test_a_refusal_is_a_value_error_that_keeps_its_field_through_pickle():
    err = RequestRejected(RequestField.VOICE, "unknown voice 'x'")
    assert isinstance(err, ValueError) and str(err) == "unknown voice 'x'"
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is RequestRejected and back.field is RequestField.VOICE and str(back) == str(err)


@pytest.mark.parametrize(
    ("name", "value"),
    [("cfg_value", 21.0), ("inference_timesteps", 0), ("min_steps", -1), ("max_steps", 0), ("temperature", -0.1)],
)
def test_settings_out_of_range_are_refused_as_params(name, value):
    with pytest.raises(RequestRejected, match=f"^{name} must be") as err:
        GenerationParams(**{name: value})
    assert err.value.field is RequestField.PARAMS


def test_seed_range_and_defaults():
    assert GenerationParams(seed=2**63 - 1).seed == 2**63 - 1
    with pytest.raises(RequestRejected, match="seed"):
        GenerationParams(seed=2**63)
    assert Voice() == Voice(prompt_text=None, prompt_latents=None, ref_latents=None)  # zero-shot


def test_the_module_loads_without_torch():
    code = "import sys, voxcpm_engine.types; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_model_info_for_clients_has_no_server_path_and_lists_every_device():
    from voxcpm_engine.types import ModelInfo

    info = ModelInfo(
        architecture="voxcpm2", version=2, dtype="bfloat16", device="cuda:0", sample_rate=48000,
        samples_per_patch=3840, patch_size=4, latent_dim=64, encode_sample_rate=16000, max_model_len=4096,
        max_num_seqs=128, max_loras=0, kv_blocks=1000, kernel_cache_dir=None, checkpoint="/srv/models/v2",
    )  # fmt: skip
    public = info.public(["cuda:0", "cuda:1"])
    assert "checkpoint" not in public and "/srv" not in repr(public)
    assert public["devices"] == ["cuda:0", "cuda:1"] and public["samples_per_patch"] == 3840
    assert pickle.loads(pickle.dumps(info)) == info  # it travels in the READY message


def test_engine_load_reads_a_clients_stats_and_zeroes_what_a_dead_engine_lacks():
    from voxcpm_engine.types import EngineLoad

    stats = {
        "alive": True,
        "running": 3,
        "waiting": 1,
        "steps": 99,
        "kv_blocks_free": 5,
        "kv_blocks_total": 8,
        "ipc": {},
    }
    assert EngineLoad.from_stats(stats) == EngineLoad(True, 3, 1, 99, 5, 8)
    assert EngineLoad.from_stats({"alive": False, "pid": 7}) == EngineLoad()
