"""Tests of voxcpm_engine.config.engine_config: EngineConfig validation, model checks and block arithmetic."""

from __future__ import annotations

import dataclasses

import pytest

from voxcpm_engine.config.engine_config import EngineConfig
from voxcpm_engine.config.model_config import ModelConfig
from voxcpm_engine.config.presets import preset_config


def test_defaults_are_valid_and_frozen():
    cfg = EngineConfig()
    assert (cfg.max_num_seqs, cfg.max_num_batched_tokens, cfg.max_model_len, cfg.block_size) == (16, 1024, 2048, 16)
    assert cfg.num_kv_blocks is None and cfg.enable_prefix_caching and cfg.max_loras == 0
    assert cfg.vae_dtype == "float32" and EngineConfig(vae_dtype="bfloat16").vae_dtype == "bfloat16"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.block_size = 8  # type: ignore[misc]


@pytest.mark.parametrize(
    ("units", "dtype", "kernels"),
    [
        ("auto", "float32", "passes"),  # cuBLAS's fp32 GEMM beats the Triton GEMM's IEEE fp32 products
        ("auto", "bfloat16", "gemm"),
        ("passes", "bfloat16", "passes"),
        ("gemm", "float32", "gemm"),
        ("one-kernel", "bfloat16", "one-kernel"),
    ],
)
def test_vae_units_auto_picks_the_faster_kernels_for_the_vae_dtype(units, dtype, kernels):
    cfg = EngineConfig(vae_units=units, vae_dtype=dtype)
    assert cfg.vae_unit_kernels == kernels and cfg.vae_units == units


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_num_seqs": 0}, "EngineConfig.max_num_seqs must be >= 1, got 0"),
        ({"max_num_seqs": 8, "max_num_batched_tokens": 7}, "max_num_batched_tokens must be >= max_num_seqs, got 7"),
        ({"max_model_len": 1}, "max_model_len must be >= 2, got 1"),
        ({"block_size": 0}, "block_size must be >= 1, got 0"),
        ({"num_kv_blocks": 0}, "num_kv_blocks must be >= 1, got 0"),
        ({"gpu_memory_utilization": 0.0}, r"gpu_memory_utilization must be in \(0, 1\], got 0.0"),
        ({"gpu_memory_utilization": 1.01}, r"gpu_memory_utilization must be in \(0, 1\], got 1.01"),
        ({"max_loras": -1}, "max_loras must be >= 0, got -1"),
        ({"max_lora_rank": 0}, "max_lora_rank must be >= 1, got 0"),
        ({"cuda_graph_timesteps": (10, 0)}, r"cuda_graph_timesteps must be in \[1, 100\], got \(10, 0\)"),
        ({"cuda_graph_timesteps": (101,)}, r"cuda_graph_timesteps must be in \[1, 100\], got \(101,\)"),
        ({"vae_dtype": "float16"}, "EngineConfig.vae_dtype must be one of float32, bfloat16, got 'float16'"),
        ({"vae_dtype": "bf16"}, "EngineConfig.vae_dtype must be one of float32, bfloat16, got 'bf16'"),
        ({"vae_units": True}, "EngineConfig.vae_units must be one of auto, passes, gemm, one-kernel, got True"),
    ],
)
def test_invalid_limits_name_the_field_and_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EngineConfig(**kwargs)


def test_limits_at_their_bounds_are_accepted():
    cfg = EngineConfig(
        max_num_seqs=4,
        max_num_batched_tokens=4,
        max_model_len=2,
        block_size=1,
        num_kv_blocks=1,
        gpu_memory_utilization=1.0,
        max_lora_rank=1,
        cuda_graph_timesteps=(1, 100),
    )
    assert cfg.max_num_batched_tokens == cfg.max_num_seqs == 4
    assert EngineConfig(cuda_graph_timesteps=()).cuda_graph_timesteps == ()  # no graphs at all


def test_validate_for_checks_max_model_len_against_the_model():
    model = ModelConfig.from_dict(preset_config("tiny-v2"))
    assert model.max_length == 8192
    EngineConfig(max_model_len=8192).validate_for(model)
    with pytest.raises(ValueError, match="max_model_len 8193 exceeds the model's max_length 8192"):
        EngineConfig(max_model_len=8193).validate_for(model)


def test_block_arithmetic_rounds_up():
    cfg = EngineConfig(block_size=16, max_num_seqs=3, max_model_len=40)
    assert [cfg.blocks_for(n) for n in (0, 1, 16, 17, 32, 33)] == [0, 1, 1, 2, 2, 3]
    assert cfg.default_cpu_blocks() == 3 * 3  # three requests of 40 positions: 3 blocks each
