"""Configs of the released checkpoints and of the tiny test models, as ``config.json`` dicts.

The release values are those of the published ``config.json`` files (spec §2.2–2.4); the product
carries them itself so that synthetic checkpoints need nothing outside this package. The tiny
presets keep every architectural feature (GQA, LongRoPE, v2's ``kv_channels`` != hidden/heads and
RoPE-free residual LM, both AudioVAE versions with the release rate lists) at widths that run a
20-step request on a 2-core CPU in about a second.
"""

from __future__ import annotations

import copy
from typing import Any

# fmt: off
# MiniCPM4-0.5B LongRoPE factors (head_dim 64 → 32 values), shared by VoxCPM-0.5B and VoxCPM1.5.
LONGROPE_V1 = (
    1.0004360675811768, 1.0668443441390991, 1.1631425619125366, 1.3025742769241333, 1.5040205717086792,
    1.7941505908966064, 2.2101221084594727, 2.802666664123535, 3.6389970779418945, 4.804192543029785,
    6.39855432510376, 8.527148246765137, 11.277542114257812, 14.684998512268066, 18.69317054748535,
    23.13019371032715, 27.72362518310547, 32.1606559753418, 36.168827056884766, 39.57627868652344, 42.32667541503906,
    44.45526885986328, 46.04962921142578, 47.21482849121094, 48.05115509033203, 48.64370346069336, 49.05967712402344,
    49.34980392456055, 49.551246643066406, 49.69068145751953, 49.78697967529297, 49.85338592529297,
)

# VoxCPM2 LongRoPE factors (head_dim 128 → 64 values).
LONGROPE_V2 = (
    0.9977997200264581, 1.014658295992452, 1.0349680404997148, 1.059429246056193, 1.0888815016813513,
    1.1243301355211495, 1.166977103606075, 1.2182568066927284, 1.2798772354275727, 1.3538666751582975,
    1.4426259039919596, 1.5489853358570191, 1.6762658237220625, 1.8283407612492941, 2.0096956085876183,
    2.225478927469756, 2.481536379650452, 2.784415934557119, 3.1413289096347365, 3.560047844772632,
    4.048719380066383, 4.615569542115128, 5.2684819496549835, 6.014438591970396, 6.858830049237097,
    7.804668263503327, 8.851768731513417, 9.99600492938444, 11.228766118181639, 12.536757560834843,
    13.902257701387796, 15.303885189125953, 16.717837610115794, 18.119465097853947, 19.484965238406907,
    20.792956681060105, 22.02571786985731, 23.16995406772833, 24.217054535738416, 25.16289275000465,
    26.007284207271347, 26.753240849586767, 27.40615325712662, 27.973003419175363, 28.461674954469114,
    28.880393889607006, 29.237306864684626, 29.540186419591297, 29.79624387177199, 30.01202719065413,
    30.193382037992453, 30.34545697551969, 30.47273746338473, 30.579096895249787, 30.66785612408345,
    30.741845563814174, 30.80346599254902, 30.85474569563567, 30.897392663720595, 30.932841297560394,
    30.962293553185553, 30.986754758742034, 31.007064503249293, 31.02392307921529,
)
# fmt: on

_CFM = {"sigma_min": 1e-06, "solver": "euler", "t_scheduler": "log-norm", "inference_cfg_rate": 2.0}


def _lm(hidden: int, ffn: int, layers: int, factors: tuple[float, ...], kv_channels: int | None) -> dict[str, Any]:
    lm: dict[str, Any] = {
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "max_position_embeddings": 32768,
        "num_attention_heads": 16,
        "num_hidden_layers": layers,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000,
    }
    if kv_channels is not None:
        lm["kv_channels"] = kv_channels
    lm["rope_scaling"] = {
        "type": "longrope",
        "long_factor": list(factors),
        "short_factor": list(factors),
        "original_max_position_embeddings": 32768,
    }
    lm.update({"vocab_size": 73448, "use_mup": False, "scale_emb": 12, "dim_model_base": 256, "scale_depth": 1.4})
    return lm


def _local(layers: int, kv_channels: int | None = None, **over: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"hidden_dim": 1024, "ffn_dim": 4096, "num_heads": 16, "num_layers": layers}
    if kv_channels is not None:
        out["kv_channels"] = kv_channels
    out.update(over)
    return out


def _v1(patch: int, residual: int, local_layers: int, vae: dict[str, Any], max_length: int) -> dict[str, Any]:
    return {
        "architecture": "voxcpm",
        "lm_config": _lm(1024, 4096, 24, LONGROPE_V1, None),
        "patch_size": patch,
        "feat_dim": 64,
        "scalar_quantization_latent_dim": 256,
        "scalar_quantization_scale": 9,
        "residual_lm_num_layers": residual,
        "encoder_config": _local(local_layers),
        "dit_config": {**_local(local_layers), "cfm_config": dict(_CFM)},
        "audio_vae_config": vae,
        "max_length": max_length,
        "device": "cuda",
        "dtype": "bfloat16",
    }


def _v2() -> dict[str, Any]:
    return {
        "architecture": "voxcpm2",
        "lm_config": _lm(2048, 6144, 28, LONGROPE_V2, 128),
        "patch_size": 4,
        "feat_dim": 64,
        "scalar_quantization_latent_dim": 512,
        "scalar_quantization_scale": 9,
        "residual_lm_num_layers": 8,
        "residual_lm_no_rope": True,
        "encoder_config": _local(12, 128),
        "dit_config": {**_local(12, 128), "mean_mode": False, "cfm_config": dict(_CFM)},
        "audio_vae_config": {
            "encoder_dim": 128,
            "encoder_rates": [2, 5, 8, 8],
            "latent_dim": 64,
            "decoder_dim": 2048,
            "decoder_rates": [8, 6, 5, 2, 2, 2],
            "sr_bin_boundaries": [20000, 30000, 40000],
            "sample_rate": 16000,
            "out_sample_rate": 48000,
        },
        "max_length": 8192,
        "device": "cuda",
        "dtype": "bfloat16",
    }


def _shrink(cfg: dict[str, Any], head_dim: int, kv_channels: bool) -> dict[str, Any]:
    """Tiny widths, same features: 2-layer stacks, 4 heads / 2 KV heads, small VAE channels."""
    cfg = copy.deepcopy(cfg)
    lm = cfg["lm_config"]
    factors = lm["rope_scaling"]["long_factor"]
    # Keep the release's factor curve, sampled down to the tiny head_dim.
    step = len(factors) // (head_dim // 2)
    tiny = factors[::step][: head_dim // 2]
    lm.update({"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4, "num_hidden_layers": 2})
    lm["rope_scaling"].update({"long_factor": tiny, "short_factor": list(tiny)})
    if kv_channels:
        lm["kv_channels"] = head_dim  # 4 heads x 64 = 256 != hidden 128, like v2's local stacks
    local = {"hidden_dim": 64 if not kv_channels else 96, "ffn_dim": 192, "num_heads": 2 if not kv_channels else 4}
    if kv_channels:
        local["kv_channels"] = head_dim
    cfg["encoder_config"].update(local, num_layers=2)
    cfg["dit_config"].update(local, num_layers=2)
    cfg["residual_lm_num_layers"] = 2
    cfg["scalar_quantization_latent_dim"] = 32
    vae = cfg["audio_vae_config"]
    vae.update({"encoder_dim": 4, "decoder_dim": 64 if len(vae["decoder_rates"]) == 5 else 128})
    return cfg


_V1_44K_VAE = {
    "encoder_dim": 64,
    "encoder_rates": [2, 3, 6, 7, 7],
    "latent_dim": 64,
    "decoder_dim": 2048,
    "decoder_rates": [7, 7, 6, 3, 2],
    "sample_rate": 44100,
}
_V1_16K_VAE = {
    "encoder_dim": 128,
    "encoder_rates": [2, 5, 8, 8],
    "latent_dim": 64,
    "decoder_dim": 1536,
    "decoder_rates": [8, 8, 5, 2],
    "depthwise": True,
    "sample_rate": 16000,
}

PRESETS: dict[str, dict[str, Any]] = {
    "voxcpm-0.5b": _v1(2, 6, 4, _V1_16K_VAE, 4096),
    "voxcpm1.5": _v1(4, 8, 8, _V1_44K_VAE, 8192),
    "voxcpm2": _v2(),
}
PRESETS["tiny-v1"] = _shrink(PRESETS["voxcpm1.5"], head_dim=32, kv_channels=False)
PRESETS["tiny-v2"] = _shrink(PRESETS["voxcpm2"], head_dim=64, kv_channels=True)

# The 0.5B release ships a torch pickle; the later ones ship safetensors (spec §3.4).
WEIGHTS_FILE = {name: "pytorch_model.bin" if name == "voxcpm-0.5b" else "model.safetensors" for name in PRESETS}


def preset_config(name: str) -> dict[str, Any]:
    """A fresh copy of a preset's ``config.json`` dict.

    Raises:
        KeyError: ``name`` is not a preset (the message lists the presets).
    """
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name])
