"""Tiny VoxCPM configs (every architectural feature, seconds to run on 2 CPU cores), tiny AudioVAEs, test helpers.

Kinds:
- ``v1_05b``: 0.5B-like v1, patch 2, one residual layer.
- ``v1_15``: 1.5-like v1, patch 4, GQA (4 query / 2 KV heads) in the LMs.
- ``v2``: VoxCPM2-like, patch 4, GQA, ``kv_channels`` != hidden/heads in every stack, residual LM
  without RoPE, two DiT mu tokens, ``fusion_concat_proj``.
LongRoPE factor lists have ``head_dim / 2`` entries and a LongRoPE-like shape (1 -> ~50).

These stay with the tests rather than in ``voxcpm_engine.config.presets``: each is bent to reach a
corner the parity tests need (GQA, odd ``kv_channels``, a short residual LM) and changes with them,
while a preset is a checkpoint users make (a release's shapes, or ``tiny-v1``/``tiny-v2``: a
release shrunk as a whole).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from voxcpm_engine.config.model_config import AudioVAEConfig, ModelConfig
from voxcpm_engine.config.presets import preset_config
from voxcpm_engine.model.voxcpm import VoxCPMModel

KINDS = ("v1_05b", "v1_15", "v2")
RELEASED = ("voxcpm-0.5b", "voxcpm1.5", "voxcpm2")
RELEASED_TENSOR_COUNTS = {"voxcpm-0.5b": 377, "voxcpm1.5": 467, "voxcpm2": 577}
TINY_VOCAB = 320


def longrope_factors(n: int) -> list[float]:
    """``n`` increasing factors from ~1 to ~50 (Python doubles, like the released lists)."""
    return [1.0004360675811768 + 48.85 * (i / (n - 1)) ** 2.5 for i in range(n)]


def _lm(hidden: int, heads: int, layers: int, head_dim: int, kv_channels: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_size": hidden,
        "intermediate_size": hidden * 3 // 2,
        "max_position_embeddings": 32768,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000,
        "rope_scaling": {
            "type": "longrope",
            "long_factor": longrope_factors(head_dim // 2),
            "short_factor": longrope_factors(head_dim // 2),
            "original_max_position_embeddings": 32768,
        },
        "vocab_size": TINY_VOCAB,
        "use_mup": False,
        "scale_emb": 12,
        "dim_model_base": 256,
        "scale_depth": 1.4,
    }
    if kv_channels is not None:  # released v1 configs omit the key (the reference rejects null)
        out["kv_channels"] = kv_channels
    return out


def _local(layers: int, kv_channels: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {"hidden_dim": 32, "ffn_dim": 64, "num_heads": 2, "num_layers": layers}
    if kv_channels is not None:
        out["kv_channels"] = kv_channels
    return out


def tiny_config_dict(kind: str, **overrides: Any) -> dict[str, Any]:
    """A config.json-shaped dict of a tiny model; ``overrides`` replace top-level keys."""
    if kind == "v2":
        data: dict[str, Any] = {
            "architecture": "voxcpm2",
            "lm_config": _lm(64, 4, 2, head_dim=32, kv_channels=32),
            "patch_size": 4,
            "feat_dim": 64,
            "scalar_quantization_latent_dim": 16,
            "scalar_quantization_scale": 9,
            "residual_lm_num_layers": 2,
            "residual_lm_no_rope": True,
            "encoder_config": _local(2, kv_channels=32),
            "dit_config": {**_local(2, kv_channels=32), "cfm_config": {"inference_cfg_rate": 2.0}},
            "audio_vae_config": {
                "encoder_dim": 4,
                "encoder_rates": [2, 2],
                "latent_dim": 64,
                "decoder_dim": 8,
                "decoder_rates": [2, 2, 3],
                "sr_bin_boundaries": [20000, 30000, 40000],
                "sample_rate": 16000,
                "out_sample_rate": 48000,
            },
            "max_length": 96,
            "dtype": "bfloat16",
        }
    elif kind in ("v1_05b", "v1_15"):
        patch, residual = (2, 1) if kind == "v1_05b" else (4, 2)
        data = {
            "architecture": "voxcpm",
            "lm_config": _lm(64, 4, 2, head_dim=16, kv_channels=None),
            "patch_size": patch,
            "feat_dim": 64,
            "scalar_quantization_latent_dim": 16,
            "scalar_quantization_scale": 9,
            "residual_lm_num_layers": residual,
            "encoder_config": _local(2, kv_channels=None),
            "dit_config": {**_local(2, kv_channels=None), "cfm_config": {"inference_cfg_rate": 2.0}},
            "audio_vae_config": {
                "encoder_dim": 4,
                "encoder_rates": [2, 2],
                "latent_dim": 64,
                "decoder_dim": 8,
                "decoder_rates": [2, 2],
                "sample_rate": 16000,
            },
            "max_length": 96,
            "dtype": "bfloat16",
        }
    else:
        raise ValueError(f"unknown tiny kind {kind!r}")
    data = copy.deepcopy(data)
    data.update(overrides)
    return data


def tiny_config(kind: str, **overrides: Any) -> ModelConfig:
    """Parsed :class:`ModelConfig` of :func:`tiny_config_dict`."""
    return ModelConfig.from_dict(tiny_config_dict(kind, **overrides), where=f"tiny:{kind}")


def randomize_(model: torch.nn.Module, seed: int = 0, std: float = 0.3) -> torch.nn.Module:
    """Fill every parameter with deterministic noise of a scale that keeps activations lively.

    Norm weights become ``1 + noise`` so RMSNorm stays well conditioned; everything else is
    ``N(0, std^2)`` scaled by ``1/sqrt(fan_in)`` for matrices.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("norm.weight"):
                value = 1.0 + 0.1 * noise
            elif p.dim() == 2 and "embed_tokens" not in name:
                value = noise * (std * 3.0 / p.shape[1] ** 0.5)
            else:
                value = noise * std
            p.copy_(value.to(p.dtype))
    return model


def tiny_model(kind: str, seed: int = 0, dtype: torch.dtype = torch.bfloat16, **overrides: Any) -> VoxCPMModel:
    """A randomly initialised tiny model on the CPU."""
    return randomize_(VoxCPMModel.build(tiny_config(kind, **overrides), dtype=dtype), seed)


def shared_models_dir() -> Path | None:
    """``shared/models`` beside the repository checkout (the released configs), if present."""
    path = Path(__file__).resolve().parents[3] / "shared" / "models"
    return path if path.is_dir() else None


# --- AudioVAE alone ------------------------------------------------------------------------------

RELEASES = {
    name: ModelConfig.from_dict(preset_config(name)).audio_vae for name in ("voxcpm-0.5b", "voxcpm1.5", "voxcpm2")
}

# Tiny widths with the three releases' rate lists: every test on CPU in a second or two.
TINY = {
    "v1-0.5b": AudioVAEConfig(version=1, encoder_dim=8, decoder_dim=32),
    "v1-1.5": AudioVAEConfig(
        version=1,
        encoder_dim=8,
        encoder_rates=(2, 3, 6, 7, 7),
        decoder_dim=64,
        decoder_rates=(7, 7, 6, 3, 2),
        sample_rate=44100,
    ),
    "v2": AudioVAEConfig(
        version=2,
        encoder_dim=8,
        decoder_dim=64,
        decoder_rates=(8, 6, 5, 2, 2, 2),
        out_sample_rate=48000,
        sr_bin_boundaries=(20000, 30000, 40000),
    ),
}


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Make Snake alphas, weight-norm gains and directions, biases and rate embeddings non-trivial."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("alpha"):
            p.copy_(torch.rand(p.shape, generator=g) * 1.5 + 0.25)
        elif name.endswith("weight_g"):
            p.mul_(torch.rand(p.shape, generator=g) + 0.5)
        elif name.endswith("weight_v"):
            p.copy_(torch.randn(p.shape, generator=g))
        elif name.endswith("bias"):
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        elif "scale_embed" in name:
            p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
        elif "bias_embed" in name:
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model
