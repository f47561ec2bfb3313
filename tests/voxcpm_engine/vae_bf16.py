"""What the bf16 AudioVAE decode tests share: the error measure, its bounds, a release-shaped VAE.

The bounds are measured, not promised. A random-weight decoder's sensitivity to rounding depends
on its initialisation far more than on bf16 itself: the same fp32 -> bf16 decode measured (CPU,
eager, latents that are bf16 values already, as the LM hands them over)

- tests' ``randomize`` init, tiny widths: 49.0 dB (V1 0.5B rates), 45.7 (V1 1.5), 34.6 (V2);
- the synthetic checkpoints' LSUV-normalised init (:func:`voxcpm_engine.tools.synthetic.normalize_vae_`):
  25.0, 23.1 and 12.5 dB at tiny widths, 21.6 dB at VoxCPM1.5's real shapes, where rounding only
  the folded weights to bf16 (fp32 activations) already gives 27.2 dB and rounding any one kind of
  activation alone 27-30 dB: that network turns a 2^-9 relative error into ~-28 dB at its output.

So these bounds catch a broken bf16 path (a cast in the wrong place, bf16 accumulation, a stale
fp32 weight: errors of 0 to 10 dB), not the fidelity of the released model, which needs its real
weights (the GPU test reads ``VOXCPM_VAE_CHECKPOINT`` for that).
"""

from __future__ import annotations

import torch

from voxcpm_engine.config.model_config import ModelConfig
from voxcpm_engine.config.presets import preset_config
from voxcpm_engine.model.audio_vae import AudioVAE
from voxcpm_engine.tools.synthetic import normalize_vae_, random_state_dict

TINY_SNR_DB = 30.0
"""bf16 vs fp32 decode of the tests' tiny ``randomize``-initialised VAEs (measured >= 34.6 dB)."""

RELEASE_SNR_DB = 18.0
"""bf16 vs fp32 decode of a VoxCPM1.5-shaped synthetic VAE (measured 21.6 dB, see the module docstring)."""


SYNTHETIC_TINY_SNR_DB = 12.0
"""bf16 vs fp32 streamed decode of the ``tiny-v1`` / ``tiny-v2`` synthetic checkpoints (LSUV init, see
above; measured 18.4-20.2 and 15.0-17.1 dB per stream through VaeStreams, 17.2 and 16.3 dB for a
zero-shot and a prompted request through the engine on ``tiny-v1``; 12.0 dB for that prompted
request on ``tiny-v2``, whose synthetic VAE is the most sensitive, so the engine test uses ``tiny-v1``)."""

STREAM_SNR_DB = 40.0
"""bf16 streamed decode vs the bf16 whole decode: the same roundings but for conv blocking, which
differs with the chunk shape and thread count (measured: equal with 2 CPU threads; 48.1 dB with one
at VoxCPM1.5 shapes, where one-ulp differences are amplified as above). A state bug is ~0 dB."""


CUDA_STREAM_SNR_DB = 24.0
""":data:`STREAM_SNR_DB` on CUDA, through the captured graphs and compiled kernels at VoxCPM1.5 shapes:
cuBLAS and cuDNN choose their algorithms (and so the fp32 summation order) per shape, so a 4-frame
chunk in a padded batch of 4 and the whole sequence of one stream round to different bf16 values in
places, each flip amplified as above (measured 27.1 dB on an H100). A state bug is still ~0 dB."""


INTERPRETER_SNR_DB = 18.0
"""bf16 vs fp32 decode of the tiny VAEs on the fused paths in Triton's interpreter (CPU tests only).
The interpreter truncates at bf16 stores instead of rounding to nearest (its 1 + 0.75 * 2^-7 stores
as 1.0), a biased error that adds up coherently: measured 40.8 / 36.9 / 22.2 dB (V1 0.5B, V1 1.5,
V2) against 49.3 / 46.9 / 34.8 for the same decode op by op. Compiled kernels round, and the CUDA
tests hold them to :data:`TINY_SNR_DB`."""


def snr_db(got: torch.Tensor, ref: torch.Tensor) -> float:
    """Signal-to-error ratio of ``got`` against ``ref`` in dB (inf when equal)."""
    ref, err = ref.double(), got.double() - ref.double()
    noise = float(err.pow(2).mean())
    return float("inf") if noise == 0 else 10.0 * float(torch.log10(ref.pow(2).mean() / noise))


def release_vae(preset: str = "voxcpm1.5", seed: int = 1) -> AudioVAE:
    """A random-weight AudioVAE of a release's real shapes, initialised like a synthetic checkpoint (~2 s)."""
    cfg = ModelConfig.from_dict(preset_config(preset)).audio_vae
    # A meta build skips the kaiming init of ~86M parameters (slow, overwritten anyway); V2's integer
    # buffer is config that random_state_dict copies, so V2 builds on the CPU.
    with torch.device("meta" if cfg.version == 1 else "cpu"):
        vae = AudioVAE(cfg)
    vae = vae.to_empty(device="cpu").eval() if cfg.version == 1 else vae.eval()
    vae.load_state_dict(random_state_dict(vae, torch.float32, seed))
    normalize_vae_(vae, seed + 1)
    return vae


def bf16_latents(vae: AudioVAE, batch: int, frames: int, seed: int = 3) -> torch.Tensor:
    """Unit-normal latents rounded to bf16 values (the LM's patches are bf16), in fp32."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, vae.latent_dim, frames, generator=gen).bfloat16().float()
