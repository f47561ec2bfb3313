"""AudioVAE configs and random initialisation shared by the unit and parity tests."""

from __future__ import annotations

import torch

from voxcpm_engine.config.model_config import AudioVAEConfig, ModelConfig
from voxcpm_engine.config.presets import preset_config

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
