"""Random-weight checkpoints in the exact official layout.

``python -m voxcpm_engine.tools.synthetic --preset NAME OUT_DIR [--seed N]`` writes ``config.json``, the main
weights (``model.safetensors``, or ``pytorch_model.bin`` for the 0.5B preset), ``audiovae.pth`` and
tokenizer files. Names, shapes and dtypes come from the model classes themselves, so the real
loader is what tests exercise; the reference implementation loads the same directories.

The weights are random but well-conditioned (unit-scale activations, weight-normed VAE convs whose
effective weight equals the stored direction). The stop head's two rows are equal, so its logits
tie and a synthetic model never stops on its own: lengths are set by ``min/max`` steps, which is
what tests and benchmarks need.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from voxcpm_engine.config.model_config import ModelConfig
from voxcpm_engine.config.presets import PRESETS, WEIGHTS_FILE, preset_config
from voxcpm_engine.io.atomic_dir import atomic_directory, check_new_directory
from voxcpm_engine.tools.progress import progress_bar


def _init_tensor(name: str, shape: torch.Size, gen: torch.Generator) -> torch.Tensor:
    """A random fp32 value for one state-dict entry, scaled by what the entry is."""
    leaf = name.rsplit(".", 1)[-1]
    if name.endswith("norm.weight") or leaf == "alpha" or name.endswith("scale_embed.weight"):
        # Around 1 but not exactly, so a weight that is ignored by mistake shows up in parity.
        return 1.0 + 0.1 * torch.randn(shape, generator=gen)
    if leaf == "bias" or name.endswith("bias_embed.weight"):
        return 0.02 * torch.randn(shape, generator=gen)
    if name.endswith("embed_tokens.weight") or leaf == "special_token":
        return torch.randn(shape, generator=gen)
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
    return torch.randn(shape, generator=gen) / math.sqrt(fan_in)


def random_state_dict(
    module: torch.nn.Module, dtype: torch.dtype, seed: int, on_tensor: Callable[[int], object] | None = None
) -> dict[str, torch.Tensor]:
    """Random tensors for every persistent state-dict entry of ``module`` (built on any device).

    Floating entries get ``dtype``; integer buffers keep their dtype and value (they are config,
    e.g. AudioVAE V2's ``sr_bin_boundaries``), so the module must be built on a real device if it
    has any. ``on_tensor`` is called with each entry's element count once it is made (progress).
    """
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    entries = module.state_dict()
    # weight_g entries last: each is derived from its weight_v.
    for name in sorted(entries, key=lambda n: n.endswith("weight_g")):
        ref = entries[name]
        if not ref.is_floating_point():
            out[name] = ref.detach().to("cpu").clone()
        elif name.endswith("weight_g"):
            # Legacy weight norm: g = ||v|| over all dims but 0, so the effective weight is v.
            v = out[name[: -len("weight_g")] + "weight_v"].float()
            out[name] = v.flatten(1).norm(dim=1).reshape(ref.shape).to(dtype)
        else:
            out[name] = _init_tensor(name, ref.shape, gen).to(dtype)
        if on_tensor is not None:
            on_tensor(ref.numel())
    if "stop_head.weight" in out:
        w = out["stop_head.weight"]
        out["stop_head.weight"] = w[:1].expand_as(w).clone()  # tied logits: never stops by itself
    return {k: out[k] for k in entries}  # module order, so files list tensors like the release


@torch.no_grad()
def normalize_vae_(vae: torch.nn.Module, seed: int, out_std: float = 0.1) -> None:
    """Rescale each VAE conv so its output has unit spread on noise input (LSUV-style init).

    Random convs stacked with Snake activations and residual sums blow activations up, and the
    decoder's final ``tanh`` then saturates into a square wave. One pass over the encoder (noise
    audio) and the decoder (unit latents) with forward hooks divides each conv's ``weight_g`` by
    the spread of its output and hands the normalised output downstream; the decoder's last conv
    targets ``out_std`` so synthetic audio stays well inside [-1, 1].
    """
    from voxcpm_engine.model.vae_convs import CausalConv1d, CausalConvTranspose1d

    gen = torch.Generator().manual_seed(seed)
    convs = [m for m in vae.modules() if isinstance(m, CausalConv1d | CausalConvTranspose1d)]
    target = {id(m): 1.0 for m in convs}
    target[id([m for m in vae.decoder.modules() if m in convs][-1])] = out_std

    def rescale(module: torch.nn.Module, _inputs: object, out: torch.Tensor) -> torch.Tensor:
        gain = target[id(module)] / float(out.std().clamp_min(1e-8))
        module.weight_g.mul_(gain)
        return (out - module.bias[:, None]) * gain + module.bias[:, None]

    hooks = [m.register_forward_hook(rescale) for m in convs]
    try:
        vae.encode(0.1 * torch.randn(1, 1, 8 * vae.encode_hop, generator=gen))
        vae.decode(torch.randn(1, vae.latent_dim, 8, generator=gen))
    finally:
        for h in hooks:
            h.remove()


def write_checkpoint(preset: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write a synthetic checkpoint of ``preset`` into ``out_dir`` (created; must not exist or be empty).

    The directory appears complete or not at all: files are written to a temporary sibling that is
    renamed into place at the end. A full-size preset takes a while (most of it drawing and saving
    the main weights): on a terminal a bar on stderr counts the parameters written (see
    :mod:`voxcpm_engine.tools.progress`).

    Returns:
        The checkpoint directory.
    """
    from voxcpm_engine.model.audio_vae import AudioVAE
    from voxcpm_engine.model.voxcpm import VoxCPMModel
    from voxcpm_engine.tools.synthetic_tokenizer import write_tokenizer_files

    out = Path(out_dir)
    check_new_directory(out)
    raw = preset_config(preset)
    cfg = ModelConfig.from_dict(raw, where=f"preset {preset}")
    with atomic_directory(out) as tmp:
        (tmp / "config.json").write_text(json.dumps(raw, indent=4, ensure_ascii=False) + "\n", encoding="utf-8")
        model = VoxCPMModel.build(cfg, device="meta", dtype=torch.bfloat16)
        # Built before the main weights only to know the bar's total; its own random init is overwritten below.
        vae = AudioVAE(cfg.audio_vae)
        total = sum(t.numel() for m in (model, vae) for t in m.state_dict().values())
        with progress_bar(total, desc=f"writing {preset}", unit="param", unit_scale=True) as bar:
            bar.set_postfix_str("random weights")
            weights = random_state_dict(model, torch.bfloat16, seed, on_tensor=bar.update)
            del model
            bar.set_postfix_str(f"saving {WEIGHTS_FILE[preset]}")
            if WEIGHTS_FILE[preset].endswith(".safetensors"):
                save_file(weights, str(tmp / WEIGHTS_FILE[preset]), metadata={"format": "pt"})
            else:
                torch.save(weights, tmp / WEIGHTS_FILE[preset])
            del weights
            bar.set_postfix_str("audio VAE")
            vae.load_state_dict(random_state_dict(vae, torch.float32, seed + 1, on_tensor=bar.update))
            normalize_vae_(vae, seed + 2)
            # Wrapped like the released files (nano-vllm-voxcpm reads ["state_dict"]; our loader takes both).
            torch.save({"state_dict": vae.state_dict()}, tmp / "audiovae.pth")
            bar.set_postfix_str("tokenizer")
            write_tokenizer_files(tmp, cfg.lm.vocab_size)
            bar.set_postfix_str("done")
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: a checkpoint (``--preset``) or a LoRA adapter for a checkpoint (``--lora --base``)."""
    parser = argparse.ArgumentParser(
        prog="python -m voxcpm_engine.tools.synthetic",
        description="Write a random-weight VoxCPM checkpoint, or a LoRA adapter for one, in the official layout.",
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--preset", choices=list(PRESETS), help="model shapes to use")
    what.add_argument("--lora", action="store_true", help="write a LoRA adapter for the checkpoint --base")
    parser.add_argument("out_dir", type=Path, help="directory to create (must not exist or be empty)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    parser.add_argument("--base", type=Path, help="(--lora) base checkpoint directory")
    parser.add_argument("--rank", type=int, help="(--lora) LoRA rank (default 8)")
    parser.add_argument("--enable-proj", action="store_true", help="(--lora) also adapt the projection layers")
    args = parser.parse_args(argv)
    if args.lora and args.base is None:
        parser.error("--lora needs --base CKPT_DIR")
    if not args.lora and (args.base is not None or args.rank is not None or args.enable_proj):
        parser.error("--base, --rank and --enable-proj go with --lora")
    if args.rank is not None and args.rank < 1:
        parser.error("--rank must be a positive integer")
    from voxcpm_engine.io.checkpoint import CheckpointError  # a bad --base directory

    try:
        if args.lora:
            from voxcpm_engine.tools.synthetic_lora import write_lora

            rank = args.rank or 8
            path = write_lora(args.base, args.out_dir, rank=rank, seed=args.seed, enable_proj=args.enable_proj)
            print(f"wrote LoRA adapter (rank {rank}, seed {args.seed}) for {args.base} to {path}")
            return 0
        path = write_checkpoint(args.preset, args.out_dir, seed=args.seed)
    except (FileExistsError, OSError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.preset} checkpoint (seed {args.seed}) to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
