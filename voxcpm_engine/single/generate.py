"""Single-request inference core: prefill layout (spec §6.2), prefill (§6.3) and the AR loop (§6.4).

Text must already be tokenized; audio must already be VAE-encoded into latent patches. The loop
yields latent patches; decoding them to audio is the caller's job (with :attr:`Prefill.context_patches`
for non-streaming decodes).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from voxcpm_engine.config.model_config import ModelConfig
from voxcpm_engine.model.attention import KVCache
from voxcpm_engine.model.sampler import NoiseStream
from voxcpm_engine.model.voxcpm import VoxCPMModel
from voxcpm_engine.types import RequestField, RequestRejected

AUDIO_START = 101
REF_AUDIO_START = 103
REF_AUDIO_END = 104


@dataclass(frozen=True)
class Prefill:
    """The prompt as per-position tracks; exactly one of the masks is 1 at each position.

    Attributes:
        text_ids: ``[S]`` int64 token ids (0 at audio positions).
        patches: ``[S, P, D]`` latent patches in ``cfg.dtype`` (zeros at text positions).
        text_mask: ``[S]`` int32.
        audio_mask: ``[S]`` int32.
        context_patches: ``[C, P, D]`` trailing prompt patches (``cfg.dtype``) that the reference
            prepends to the generated latents before a non-streaming VAE decode, cropping their
            ``C * samples_per_patch`` samples afterwards. ``C = 0`` unless the sequence ends with
            prompt audio (continuation modes); then ``min(cfg.context_patches, #audio positions)``,
            counting reference positions too (as the reference does).
    """

    text_ids: Tensor
    patches: Tensor
    text_mask: Tensor
    audio_mask: Tensor
    context_patches: Tensor

    def __len__(self) -> int:
        return self.text_ids.numel()


def _check_patches(name: str, patches: Tensor, cfg: ModelConfig) -> None:
    if patches.dim() != 3 or tuple(patches.shape[1:]) != (cfg.patch_size, cfg.feat_dim):
        raise RequestRejected(
            RequestField.VOICE, f"{name} must be [N, {cfg.patch_size}, {cfg.feat_dim}], got {list(patches.shape)}"
        )


def build_prefill(
    cfg: ModelConfig,
    text_ids: Sequence[int],
    prompt_patches: Tensor | None = None,
    ref_patches: Tensor | None = None,
) -> Prefill:
    """Lay out the prompt for one of the four modes (spec §6.2).

    Layout: ``[103, ref×R, 104]`` (reference, v2 only), then ``text_ids + [101]``, then the prompt
    patches (continuation).

    Args:
        cfg: Model config.
        text_ids: Tokens of ``prompt_text + target_text`` (no BOS, no 101).
        prompt_patches: ``[A, P, D]`` continuation prompt latents, or None.
        ref_patches: ``[R, P, D]`` reference-audio latents (VoxCPM2 only), or None.

    Returns:
        The :class:`Prefill` (CPU tensors).

    Raises:
        RequestRejected: (``VOICE``) reference audio on a v1 model, or patches of the wrong shape.
    """
    if ref_patches is not None and cfg.version != 2:
        raise RequestRejected(
            RequestField.VOICE, "reference audio (ref_patches) needs a voxcpm2 model; v1 supports continuation only"
        )
    patch_shape = (cfg.patch_size, cfg.feat_dim)
    ids: list[int] = []
    is_audio: list[int] = []
    audio: list[tuple[int, Tensor]] = []  # (first position, fp32 patches) of each audio span

    def add_text(tokens: Sequence[int]) -> None:
        ids.extend(int(t) for t in tokens)
        is_audio.extend([0] * len(tokens))

    def add_audio(patches: Tensor, name: str) -> None:
        _check_patches(name, patches, cfg)
        audio.append((len(ids), patches.detach().to("cpu", torch.float32)))
        ids.extend([0] * patches.size(0))
        is_audio.extend([1] * patches.size(0))

    if ref_patches is not None:
        add_text([REF_AUDIO_START])
        add_audio(ref_patches, "ref_patches")
        add_text([REF_AUDIO_END])
    add_text([*text_ids, AUDIO_START])
    if prompt_patches is not None:
        add_audio(prompt_patches, "prompt_patches")

    audio_mask = torch.tensor(is_audio, dtype=torch.int32)
    # Laid out in fp32 and rounded once, like the reference (prompt latents come out of the VAE in
    # fp32); zeros at text positions, so a text-only prompt is made in the model dtype at once.
    dtype = getattr(torch, cfg.dtype)
    patches = torch.zeros(len(ids), *patch_shape, dtype=torch.float32 if audio else dtype)
    for start, span in audio:
        patches[start : start + span.size(0)] = span
    patches = patches.to(dtype)
    n_context = 0
    if is_audio[-1]:
        n_context = min(cfg.context_patches, int(audio_mask.sum()))
    audio_patches = patches[audio_mask.bool()]
    return Prefill(
        text_ids=torch.tensor(ids, dtype=torch.int64),
        patches=patches,
        text_mask=1 - audio_mask,
        audio_mask=audio_mask,
        context_patches=audio_patches[audio_patches.size(0) - n_context :],
    )


def default_max_steps(n_target_tokens: int, max_steps: int = 2000, ratio: float = 6.0) -> int:
    """The reference's length cap: ``min(int(n_target_tokens * ratio + 10), max_steps)``.

    ``n_target_tokens`` counts the target text alone (no prompt text, no 101).
    """
    return min(int(n_target_tokens * ratio + 10), max_steps)


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
