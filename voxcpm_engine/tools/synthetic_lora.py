"""Random LoRA adapters in the official layout, for a given base checkpoint.

``python -m voxcpm_engine.tools.synthetic --lora --base CKPT_DIR OUT_DIR [--rank R] [--seed N]`` writes
``lora_weights.safetensors`` (fp32 ``<module>.lora_A`` / ``.lora_B``, like the training script) and
``lora_config.json`` (``{"base_model": ..., "lora_config": {all LoRAConfig fields}}``), with LoRA on
the LM and DiT attention projections (plus the projection layers with ``enable_proj``).

Unlike a freshly initialised adapter (``B = 0``), ``B`` is random so the adapter changes the
output: each targeted layer's LoRA branch adds about ``STRENGTH`` times a unit-scale activation,
whatever the rank and alpha.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from voxcpm_engine.io.atomic_dir import atomic_directory, check_new_directory
from voxcpm_engine.io.checkpoint import read_config
from voxcpm_engine.io.lora_files import CONFIG_FILE, WEIGHT_FILES, LoRAConfig, lora_targets

STRENGTH = 0.1  # typical |B A x| * scaling per layer, relative to a unit-scale input


def synthetic_lora_tensors(targets: dict[str, tuple[int, int]], lora: LoRAConfig, seed: int) -> dict[str, torch.Tensor]:
    """fp32 ``lora_A [r, in]`` / ``lora_B [out, r]`` for each target, in module order."""
    gen = torch.Generator().manual_seed(seed)
    r = lora.r
    b_std = STRENGTH / (math.sqrt(r) * lora.scaling)  # A x has unit-scale entries; B sums r of them
    tensors: dict[str, torch.Tensor] = {}
    for name, (fan_in, fan_out) in targets.items():
        tensors[f"{name}.lora_A"] = torch.randn(r, fan_in, generator=gen) / math.sqrt(fan_in)
        tensors[f"{name}.lora_B"] = torch.randn(fan_out, r, generator=gen) * b_std
    return tensors


def write_lora(
    base_ckpt_dir: str | Path,
    out_dir: str | Path,
    rank: int = 8,
    seed: int = 0,
    alpha: int | None = None,
    enable_proj: bool = False,
) -> Path:
    """Write a random adapter for the architecture of ``base_ckpt_dir`` into ``out_dir``.

    The directory appears complete or not at all (temporary sibling renamed into place).

    Args:
        base_ckpt_dir: Base checkpoint directory (its ``config.json`` sets the architecture and
            shapes; it is recorded as ``base_model``).
        out_dir: Directory to create (must not exist, or be empty).
        rank: LoRA rank ``r``.
        seed: Random seed (same seed and arguments, same bytes).
        alpha: LoRA alpha; default ``2 * rank`` (scaling 2.0, like the released r=8/alpha=16 configs).
        enable_proj: Also target the projection layers (v2: including ``fusion_concat_proj``).

    Returns:
        The adapter directory.

    Raises:
        FileExistsError: ``out_dir`` exists and is not an empty directory.
        voxcpm_engine.io.checkpoint.CheckpointError: ``base_ckpt_dir`` is not a readable checkpoint.
    """
    out = Path(out_dir)
    check_new_directory(out)
    cfg = read_config(base_ckpt_dir)
    lora = LoRAConfig(
        enable_lm=True, enable_dit=True, enable_proj=enable_proj, r=rank, alpha=2 * rank if alpha is None else alpha
    )
    tensors = synthetic_lora_tensors(lora_targets(cfg, lora), lora, seed)
    document = {"base_model": str(base_ckpt_dir), "lora_config": lora.to_dict(cfg.version)}
    with atomic_directory(out) as tmp:
        save_file(tensors, str(tmp / WEIGHT_FILES[0]), metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out
