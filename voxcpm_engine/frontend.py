"""The prompt's layout (spec §6.2): positions of text, reference and prompt audio, and the length cap.

The engine lays a request out here, and the server counts a segment's positions with the same
functions (:func:`request_tokens`, :func:`prefill_length`, :func:`default_max_steps`) rather than
repeating the layout, so a segment the server plans always fits the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from voxcpm_engine.config.model_config import ModelConfig
from voxcpm_engine.io.tokenizer import TextTokenizer, prepare_text
from voxcpm_engine.types import RequestField, RequestRejected

__all__ = [
    "AUDIO_START",
    "REF_AUDIO_END",
    "REF_AUDIO_START",
    "Prefill",
    "build_prefill",
    "default_max_steps",
    "prefill_length",
    "request_tokens",
]

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
        ids.extend(map(int, tokens))
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


def prefill_length(n_text_tokens: int, prompt_patches: int = 0, ref_patches: int = 0) -> int:
    """Positions :func:`build_prefill` lays out, without building it.

    Args:
        n_text_tokens: Tokens of ``prompt_text + target_text`` (see :func:`request_tokens`).
        prompt_patches: Patches of the continuation prompt (0: none).
        ref_patches: Patches of a VoxCPM2 reference (0: none; it adds its two marker tokens).
    """
    return (ref_patches + 2 if ref_patches else 0) + n_text_tokens + 1 + prompt_patches


def request_tokens(tokenizer: TextTokenizer, text: str, prompt_text: str | None) -> tuple[list[int], list[int]]:
    """``(target ids, prompt ids)``: the target text alone (what the length cap counts) and the
    tokens the prompt lays out (the prompt's transcript followed by the target, or the target alone).
    """
    text = prepare_text(text)
    target = tokenizer.encode(text)
    return target, (tokenizer.encode(prompt_text + text) if prompt_text else target)
