"""Checkpoint directory → validated state dicts → live modules.

The official layout (spec §3.4): ``config.json``; main weights in ``model.safetensors`` or
``pytorch_model.bin``; VAE weights in ``audiovae.safetensors`` or ``audiovae.pth``; tokenizer files.
Pickled files are read with ``weights_only=True`` (no arbitrary code), and every tensor is checked
against the modules before anything is copied: a missing, unexpected or mis-shaped tensor is an
error naming the file and the keys, never a silent partial load.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from voxcpm_engine.config.model_config import ConfigError, ModelConfig

MAIN_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
VAE_WEIGHT_FILES = ("audiovae.safetensors", "audiovae.pth")
TOKENIZER_FILE = "tokenizer.json"
_SHOW = 8  # keys listed per error line; the count says how many more there are


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the offending keys."""


def _dtype(name: str) -> torch.dtype:
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


def _first_existing(root: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (root / name).is_file():
            return root / name
    raise CheckpointError(f"{root}: no {what} file (expected one of {', '.join(names)})")


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict from safetensors, or from a torch pickle with weights-only unpickling.

    A ``{"state_dict": ...}`` wrapper is unwrapped like the reference loader does.
    """
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path), device="cpu")
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except (SafetensorError, pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read tensors ({type(exc).__name__}: {exc})") from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a mapping of tensor names to tensors")
    return obj


def listing(keys: list[str]) -> str:
    """The first few keys, and how many more there are (keeps error messages readable)."""
    shown = ", ".join(keys[:_SHOW])
    return shown + (f" (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else "")


def check_state_dict(
    path: Path, found: dict[str, torch.Tensor], expected: dict[str, torch.Size], ignore_prefix: str | None = None
) -> None:
    """Raise :class:`CheckpointError` unless ``found`` has exactly the expected names and shapes.

    Args:
        path: File the tensors came from (named in the error).
        found: Tensors read from the file.
        expected: Name → shape the module needs.
        ignore_prefix: Keys with this prefix are tolerated and dropped by the caller (a full
            fine-tune may store ``audio_vae.*`` next to the main weights).
    """
    names = {k for k in found if not (ignore_prefix and k.startswith(ignore_prefix))}
    missing = sorted(set(expected) - names)
    unexpected = sorted(names - set(expected))
    shapes = sorted(
        f"{k} {tuple(found[k].shape)} != {tuple(expected[k])}"
        for k in names & set(expected)
        if tuple(found[k].shape) != tuple(expected[k])
    )
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensor(s): {listing(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} tensor(s): {listing(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} mis-shaped tensor(s) (file != model): {listing(shapes)}")
    if problems:
        raise CheckpointError(f"{path}: " + "; ".join(problems))


def expected_shapes(module: torch.nn.Module) -> dict[str, torch.Size]:
    """Name → shape of every persistent entry of ``module``'s state dict."""
    return {k: v.shape for k, v in module.state_dict().items()}


@dataclass(frozen=True)
class CheckpointFiles:
    """Where each part of a checkpoint directory lives."""

    root: Path
    config: Path
    weights: Path
    vae_weights: Path
    tokenizer: Path

    @classmethod
    def find(cls, root: str | Path) -> CheckpointFiles:
        """Locate the files of the official layout, or raise :class:`CheckpointError`."""
        root = Path(root)
        if not root.is_dir():
            raise CheckpointError(f"{root}: checkpoint directory not found")
        config = root / "config.json"
        if not config.is_file():
            raise CheckpointError(f"{config}: file not found")
        tokenizer = root / TOKENIZER_FILE
        if not tokenizer.is_file():
            raise CheckpointError(f"{tokenizer}: file not found")
        return cls(
            root=root,
            config=config,
            weights=_first_existing(root, MAIN_WEIGHT_FILES, "main weights"),
            vae_weights=_first_existing(root, VAE_WEIGHT_FILES, "AudioVAE weights"),
            tokenizer=tokenizer,
        )


@dataclass
class LoadedCheckpoint:
    """Everything generation needs, on one device."""

    files: CheckpointFiles
    config: ModelConfig
    model: torch.nn.Module
    vae: torch.nn.Module
    tokenizer: object
    device: torch.device


def read_config(root: str | Path) -> ModelConfig:
    """Parse ``config.json`` of a checkpoint directory (a :class:`CheckpointError` on any problem)."""
    files = CheckpointFiles.find(root)
    try:
        return ModelConfig.from_json(files.config)
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from exc


def load_checkpoint(root: str | Path, device: str | torch.device = "cpu", dtype: str | None = None) -> LoadedCheckpoint:
    """Load a checkpoint directory: config, tokenizer, model (model dtype) and AudioVAE (fp32).

    Args:
        root: Checkpoint directory in the official layout.
        device: Where the modules live.
        dtype: Override of the config's dtype for the model (the VAE always runs in fp32).

    Raises:
        CheckpointError: A file is missing or unreadable, the config is invalid, or a tensor is
            missing, unexpected or mis-shaped.
    """
    from voxcpm_engine.io.tokenizer import TextTokenizer
    from voxcpm_engine.model.audio_vae import AudioVAE
    from voxcpm_engine.model.voxcpm import VoxCPMModel

    files = CheckpointFiles.find(root)
    config = read_config(root)
    device = torch.device(device)
    try:
        tokenizer = TextTokenizer.from_dir(files.root)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{files.tokenizer}: {exc}") from exc

    weights = read_tensors(files.weights)
    vae_weights = read_tensors(files.vae_weights)
    model = VoxCPMModel.build(config, device="meta", dtype=_dtype(dtype or config.dtype))
    check_state_dict(files.weights, weights, expected_shapes(model), ignore_prefix="audio_vae.")
    with torch.device("meta"):
        vae = AudioVAE(config.audio_vae)
    check_state_dict(files.vae_weights, vae_weights, expected_shapes(vae))

    # Shapes are known good: now build for real and copy (copy_ casts to each parameter's dtype).
    model = VoxCPMModel.build(config, device=device, dtype=_dtype(dtype or config.dtype))
    model.load_state_dict({k: v for k, v in weights.items() if not k.startswith("audio_vae.")}, strict=True)
    vae = AudioVAE(config.audio_vae).to(device=device)
    vae.load_state_dict(vae_weights, strict=True)
    del weights, vae_weights
    return LoadedCheckpoint(files, config, model.eval(), vae.eval(), tokenizer, device)
