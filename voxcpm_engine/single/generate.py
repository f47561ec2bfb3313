"""Single-request inference core: prefill (spec §6.3) and the AR loop (§6.4) over a laid-out prompt.

The prompt comes from :func:`voxcpm_engine.frontend.build_prefill` (text tokenized, audio already
VAE-encoded into latent patches). The loop yields latent patches; decoding them to audio is the
caller's job (with :attr:`~voxcpm_engine.frontend.Prefill.context_patches` for non-streaming decodes).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from voxcpm_engine.frontend import Prefill
from voxcpm_engine.model.attention import KVCache
from voxcpm_engine.model.sampler import NoiseStream
from voxcpm_engine.model.voxcpm import VoxCPMModel


@dataclass
class _DecodeState:
    base_cache: KVCache
    residual_cache: KVCache
    lm_hidden: Tensor  # [1, H] conditions the next patch and its stop decision
    residual_hidden: Tensor  # [1, H]


def _prefill(model: VoxCPMModel, prefill: Prefill) -> tuple[_DecodeState, Tensor]:
    """Run both LMs over the prompt; returns the state and the last prompt patch ``[1, P, D]``."""
    device, dtype = model.device, model.dtype
    capacity = model.config.max_length
    if len(prefill) > capacity:
        raise ValueError(f"prompt of {len(prefill)} positions exceeds max_length {capacity}")
    ids = prefill.text_ids.to(device)[None]
    patches = prefill.patches.to(device, dtype)[None]
    text_mask = prefill.text_mask.to(device)[None, :, None]
    audio_mask = prefill.audio_mask.to(device)[None, :, None]

    audio_embed = model.encode_patches(patches)
    x = text_mask * model.embed_text(ids) + audio_mask * audio_embed
    base_cache = model.base_lm.new_kv_cache(capacity)
    hidden = model.base_lm(x, *base_cache.append(len(prefill)))
    hidden = model.quantize(hidden) * audio_mask + hidden * text_mask
    residual_cache = model.residual_lm.new_kv_cache(capacity)
    residual = model.residual_lm(
        model.residual_input(hidden, audio_mask * audio_embed), *residual_cache.append(len(prefill))
    )
    state = _DecodeState(base_cache, residual_cache, lm_hidden=hidden[:, -1], residual_hidden=residual[:, -1])
    return state, patches[:, -1]


def _advance(model: VoxCPMModel, state: _DecodeState, audio_embed: Tensor) -> None:
    """Feed the embedding ``[1, H]`` of the newest patch through both LMs (one cache slot each)."""
    hidden = model.base_lm(audio_embed.unsqueeze(1), *state.base_cache.append(1))[:, 0]
    state.lm_hidden = model.quantize(hidden)
    residual_in = model.residual_input(state.lm_hidden, audio_embed)
    state.residual_hidden = model.residual_lm(residual_in.unsqueeze(1), *state.residual_cache.append(1))[:, 0]


@torch.inference_mode()
def generate_patches(
    model: VoxCPMModel,
    prefill: Prefill,
    *,
    cfg_value: float = 2.0,
    inference_timesteps: int = 10,
    min_steps: int = 2,
    max_steps: int = 2000,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> Iterator[Tensor]:
    """Generate latent patches autoregressively (spec §6.3-6.4).

    The starting noise of each step comes from ``generator`` (global RNG of the model device when
    None) through a :class:`NoiseStream`: on a CPU generator exactly one ``randn([1, D, P])``
    (times ``temperature``) per step, as in the reference. The stop head reads the same ``lm_hidden`` that
    conditioned the patch; a stop at step ``i`` is honoured only when ``i > min_steps`` and keeps
    that step's patch, so at least ``min(min_steps + 2, max_steps)`` patches come out. Tied stop
    logits continue. ``max_steps`` is applied as given: cap it with :func:`default_max_steps`.

    Args:
        model: The model (eval, any device).
        prefill: From :func:`build_prefill`.
        cfg_value: Classifier-free guidance scale.
        inference_timesteps: Euler steps per patch.
        min_steps: Steps before a stop may be honoured.
        max_steps: Most patches to generate.
        temperature: Noise scale (1.0 = reference).
        generator: Per-request RNG.

    Yields:
        Each new patch ``[P, D]`` in the model dtype, in order (context patches not included).

    Raises:
        ValueError: The prompt is longer than ``max_length`` (on the first ``next``).
        RuntimeError: Decoding ran past ``max_length`` positions (KV cache full).
    """
    cfg = model.config
    state, cond = _prefill(model, prefill)
    noise_stream = NoiseStream(
        generator, (cfg.feat_dim, cfg.patch_size), dtype=model.dtype, device=model.device, temperature=temperature
    )
    for i in range(max_steps):
        mu = model.dit_condition(state.lm_hidden, state.residual_hidden)
        noise = noise_stream.next()[None]
        sample = model.sample_patch(
            noise, mu, cond.transpose(1, 2).contiguous(), n_timesteps=inference_timesteps, cfg_value=cfg_value
        )
        # Keep the transposed view: the encoder must see the reference's memory layout (§4.6).
        patch = sample.transpose(1, 2)
        audio_embed = model.encode_patches(patch.unsqueeze(1))[:, 0]
        yield patch[0].contiguous()
        cond = patch
        if i > min_steps and model.stop_logits(state.lm_hidden).argmax(dim=-1)[0].item() == 1:
            return
        _advance(model, state, audio_embed)
