"""LoRA adapter files (spec §9): ``lora_config.json`` + weights, parsed and validated against a model.

A directory holds ``lora_config.json`` (``{"base_model": ..., "lora_config": {...}}``) and
``lora_weights.safetensors`` (or ``lora_weights.ckpt`` = ``{"state_dict": ...}``, read weights-only)
with ``<module>.lora_A [r, in]`` / ``<module>.lora_B [out, r]`` for every targeted ``nn.Linear``.
Unlike the reference, which silently skips keys it cannot place, every key and shape is checked
and any mismatch is an error naming the file and the keys. Applying adapters: :mod:`voxcpm_engine.lora.layers`.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor, nn

from voxcpm_engine.config.model_config import ModelConfig
from voxcpm_engine.io.checkpoint import CheckpointError, listing, read_tensors

CONFIG_FILE = "lora_config.json"
WEIGHT_FILES = ("lora_weights.safetensors", "lora_weights.ckpt")
ATTENTION_TARGETS = ("q_proj", "v_proj", "k_proj", "o_proj")
PROJ_TARGETS_V1 = ("enc_to_lm_proj", "lm_to_dit_proj", "res_to_dit_proj")
PROJ_TARGETS_V2 = (*PROJ_TARGETS_V1, "fusion_concat_proj")


class AdapterError(ValueError):
    """An adapter that cannot be used; the message names the file and the field or keys."""


# --------------------------------------------------------------------------------------- config


def _integer(value: Any) -> int | None:
    """An int, or an integral float (pydantic's lax int); bools and strings are rejected."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


# Bounds on a config, beyond the reference CLI's "positive": numbers past them only come from a
# corrupt or hostile file (``alpha = 1e308``, an integral float, would otherwise pass and make
# every request with the voice silent). A rank is a small fraction of a layer's width (the reference
# trains r = 8..64; VoxCPM's attention layers are 1024 or 2048 wide), so past 1024 it is no
# low-rank adapter. ``alpha / r`` multiplies the adapter's output: the reference default is 2
# (r = 8, alpha = 16), common recipes use 0.5..4; 64 leaves room for unusual training choices.
MAX_RANK = 1024
MAX_SCALING = 64
# Trained LoRA factors are of order 1e-2 (A starts Kaiming-uniform, about +-1/sqrt(fan_in); B at
# zero and grows slowly): entries beyond 1e3 are not a trained adapter.
MAX_WEIGHT_ABS = 1e3


def _shown(value: Any) -> str:
    """A value for a message, cut short (a 300-digit integer is not worth echoing)."""
    text = repr(value)
    return text if len(text) <= 24 else f"{text[:20]}... ({len(text)} characters)"


def _range_problem(r: int, alpha: int, dropout: float) -> str | None:
    """The reference CLI's rules (positive integer r and alpha, dropout in [0, 1]) plus upper bounds.

    ``r`` is at most :data:`MAX_RANK` and ``alpha / r`` (the adapter's scaling) at most
    :data:`MAX_SCALING`; integers are compared exactly, so a huge one cannot overflow a float.
    """
    if _integer(r) is None or not 1 <= r <= MAX_RANK:
        return f"lora_config.r must be an integer in [1, {MAX_RANK}], got {_shown(r)}"
    if _integer(alpha) is None or alpha < 1:
        return f"lora_config.alpha must be a positive integer, got {_shown(alpha)}"
    if alpha > MAX_SCALING * r:
        limit = f"at most {MAX_SCALING} x r = {MAX_SCALING * r} (alpha / r scales the adapter's output)"
        return f"lora_config.alpha must be {limit}, got {_shown(alpha)}"
    if not 0.0 <= dropout <= 1.0:
        return f"lora_config.dropout must be in [0, 1], got {_shown(dropout)}"
    return None


@dataclass(frozen=True)
class LoRAConfig:
    """The reference's ``LoRAConfig`` (defaults of voxcpm 2.0.3).

    ``target_proj_modules=None`` means the architecture's default list: the v2 class adds
    ``fusion_concat_proj`` (:meth:`proj_modules`). Matching is by the last attribute name of an
    ``nn.Linear``: ``target_modules_lm`` inside ``base_lm``/``residual_lm``, ``target_modules_dit``
    inside ``feat_decoder.estimator``, ``target_proj_modules`` among the model's direct children.
    The local encoder never gets LoRA.
    """

    enable_lm: bool = False
    enable_dit: bool = False
    enable_proj: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules_lm: tuple[str, ...] = ATTENTION_TARGETS
    target_modules_dit: tuple[str, ...] = ATTENTION_TARGETS
    target_proj_modules: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        problem = _range_problem(self.r, self.alpha, self.dropout)
        if problem:
            raise AdapterError(f"LoRAConfig: {problem}")

    @property
    def scaling(self) -> float:
        """``alpha / r`` as a Python float (the reference's value before its bf16 cast)."""
        return self.alpha / self.r

    def proj_modules(self, version: int) -> tuple[str, ...]:
        """Projection targets for an architecture version (explicit list, or the class default)."""
        if self.target_proj_modules is not None:
            return self.target_proj_modules
        return PROJ_TARGETS_V2 if version == 2 else PROJ_TARGETS_V1

    def to_dict(self, version: int) -> dict[str, Any]:
        """All fields in the reference's ``model_dump()`` order (what the training script writes)."""
        return {
            "enable_lm": self.enable_lm,
            "enable_dit": self.enable_dit,
            "enable_proj": self.enable_proj,
            "r": self.r,
            "alpha": self.alpha,
            "dropout": self.dropout,
            "target_modules_lm": list(self.target_modules_lm),
            "target_modules_dit": list(self.target_modules_dit),
            "target_proj_modules": list(self.proj_modules(version)),
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = CONFIG_FILE) -> LoRAConfig:
        """Parse the inner ``lora_config`` object; unknown keys are ignored like pydantic does."""
        if not isinstance(data, dict):
            raise AdapterError(f"{where}: lora_config must be an object, got {type(data).__name__}")
        kwargs: dict[str, Any] = {}
        for name, (parse, kind) in _FIELDS.items():
            if name in data:
                kwargs[name] = parse(data[name])
                if kwargs[name] is None:
                    raise AdapterError(f"{where}: lora_config.{name} must be {kind}, got {_shown(data[name])}")
        problem = _range_problem(kwargs.get("r", cls.r), kwargs.get("alpha", cls.alpha), kwargs.get("dropout", 0.0))
        if problem:
            raise AdapterError(f"{where}: {problem}")
        return cls(**kwargs)


def _number(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _names(value: Any) -> tuple[str, ...] | None:
    ok = isinstance(value, list) and all(isinstance(v, str) and v for v in value)
    return tuple(value) if ok else None


# JSON field → (parser returning None when the value has the wrong type, what it must be).
_FIELDS: dict[str, tuple[Any, str]] = {
    "enable_lm": (lambda v: v if isinstance(v, bool) else None, "true or false"),
    "enable_dit": (lambda v: v if isinstance(v, bool) else None, "true or false"),
    "enable_proj": (lambda v: v if isinstance(v, bool) else None, "true or false"),
    "r": (_integer, "an integer"),
    "alpha": (_integer, "an integer"),
    "dropout": (_number, "a number"),
    "target_modules_lm": (_names, "a list of names"),
    "target_modules_dit": (_names, "a list of names"),
    "target_proj_modules": (_names, "a list of names"),
}


def read_lora_config(path: str | Path) -> tuple[LoRAConfig, str | None]:
    """Read an official ``lora_config.json``; returns the config and its ``base_model`` (or None)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, dict) or "lora_config" not in data:
        raise AdapterError(f"{path}: expected an object with a 'lora_config' field")
    base = data.get("base_model")
    if base is not None and not isinstance(base, str):
        raise AdapterError(f"{path}: base_model must be a string or null, got {base!r}")
    return LoRAConfig.from_dict(data["lora_config"], where=str(path)), base


# -------------------------------------------------------------------------------------- targets


@functools.lru_cache(maxsize=8)
def linear_layout(cfg: ModelConfig) -> Mapping[str, tuple[int, int]]:
    """Module name → ``(in_features, out_features)`` of every ``nn.Linear`` of the model (module order)."""
    from voxcpm_engine.model.voxcpm import VoxCPMModel

    model = VoxCPMModel.build(cfg, device="meta")  # no memory; a fraction of a second even at full size
    layout = {n: (m.in_features, m.out_features) for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    return MappingProxyType(layout)


def lora_targets(cfg: ModelConfig, lora: LoRAConfig, where: str = CONFIG_FILE) -> dict[str, tuple[int, int]]:
    """The ``nn.Linear`` modules ``lora`` targets on this architecture: name → ``(in, out)``, module order.

    Raises:
        AdapterError: An enabled target list names no ``nn.Linear`` of its part of the model. The one
            tolerated miss is ``fusion_concat_proj`` on a VoxCPM1 model (the v2 class's default list
            has it; v1 models have no such layer, and the reference skips it too).
    """
    layout = linear_layout(cfg)
    groups = [
        ("target_modules_lm", lora.enable_lm, lora.target_modules_lm, ("base_lm.", "residual_lm.")),
        ("target_modules_dit", lora.enable_dit, lora.target_modules_dit, ("feat_decoder.estimator.",)),
        ("target_proj_modules", lora.enable_proj, lora.proj_modules(cfg.version), None),
    ]
    chosen: set[str] = set()
    for field_name, enabled, names, prefixes in groups:
        if not enabled:
            continue
        for short in names:
            if prefixes is None:  # projections: direct children of the model only
                hits = [short] if short in layout else []
            else:
                hits = [n for n in layout if n.startswith(prefixes) and n.rsplit(".", 1)[-1] == short]
            if not hits and not (short == "fusion_concat_proj" and cfg.version == 1):
                what = f"names no Linear layer of this {cfg.architecture} model"
                raise AdapterError(f"{where}: lora_config.{field_name}: {short!r} {what}")
            chosen.update(hits)
    return {n: layout[n] for n in layout if n in chosen}


def default_lora_targets(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """Every layer the default target lists reach with all three switches on (what an engine enables)."""
    return lora_targets(cfg, LoRAConfig(enable_lm=True, enable_dit=True, enable_proj=True))


# -------------------------------------------------------------------------------------- adapter


@dataclass(frozen=True)
class Adapter:
    """A validated adapter on the host.

    Attributes:
        config: Its ``lora_config``.
        weights: Module name → ``(A [r, in], B [out, r])`` CPU tensors as stored (fp32 from training).
        architecture: The model architecture it was validated for.
        path: Directory it was read from (None when built in memory).
        base_model: The ``base_model`` recorded in ``lora_config.json``.
    """

    config: LoRAConfig
    weights: Mapping[str, tuple[Tensor, Tensor]]
    architecture: str
    path: Path | None = None
    base_model: str | None = None
    targets: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", frozenset(self.weights))

    @property
    def rank(self) -> int:
        """LoRA rank ``r``."""
        return self.config.r

    @property
    def scaling(self) -> float:
        """``alpha / r``."""
        return self.config.scaling


def adapter_from_state_dict(
    tensors: Mapping[str, Tensor],
    lora: LoRAConfig,
    cfg: ModelConfig,
    *,
    where: str = "<memory>",
    config_where: str = CONFIG_FILE,
    path: Path | None = None,
    base_model: str | None = None,
) -> Adapter:
    """Validate ``lora_A``/``lora_B`` tensors against the targets ``lora`` enables on ``cfg``'s architecture.

    Every enabled target needs both tensors with shapes ``A [r, in]``, ``B [out, r]`` (``r`` from the
    config) and finite floating values within :data:`MAX_WEIGHT_ABS`; any other key is an error.

    Raises:
        AdapterError: Naming ``where`` (or ``config_where`` for config problems) and the keys.
    """
    targets = lora_targets(cfg, lora, where=config_where)
    if not targets:
        raise AdapterError(f"{config_where}: enables no target (enable_lm, enable_dit and enable_proj are all off)")
    pairs: dict[str, dict[str, Tensor]] = {}
    unexpected = []
    for key, tensor in tensors.items():
        module, _, leaf = key.rpartition(".")
        if leaf in ("lora_A", "lora_B") and module in targets:
            pairs.setdefault(module, {})[leaf] = tensor
        else:
            unexpected.append(key)
    r = lora.r
    missing: list[str] = []
    shapes: list[str] = []
    bad: list[str] = []
    huge: list[str] = []
    for module, (fan_in, fan_out) in targets.items():
        for leaf, shape in (("lora_A", (r, fan_in)), ("lora_B", (fan_out, r))):
            tensor = pairs.get(module, {}).get(leaf)
            if tensor is None:
                missing.append(f"{module}.{leaf}")
            elif tuple(tensor.shape) != shape:
                shapes.append(f"{module}.{leaf} {tuple(tensor.shape)} != {shape}")
            elif not tensor.is_floating_point() or not bool(torch.isfinite(tensor).all()):
                bad.append(f"{module}.{leaf}")
            elif tensor.numel() and float(tensor.abs().max()) > MAX_WEIGHT_ABS:
                huge.append(f"{module}.{leaf}")
    problems = []
    if unexpected:
        problems.append(f"{len(unexpected)} tensor(s) not targeted by the config: {listing(sorted(unexpected))}")
    if missing:
        problems.append(f"missing {len(missing)} tensor(s): {listing(missing)}")
    if shapes:
        problems.append(f"{len(shapes)} mis-shaped tensor(s) (file != expected for r={r}): {listing(shapes)}")
    if bad:
        problems.append(f"{len(bad)} tensor(s) not finite floating point: {listing(bad)}")
    if huge:
        problems.append(f"{len(huge)} tensor(s) with values beyond +-{MAX_WEIGHT_ABS:g}: {listing(huge)}")
    if problems:
        raise AdapterError(f"{where}: " + "; ".join(problems))
    weights = {m: (pairs[m]["lora_A"].detach().cpu(), pairs[m]["lora_B"].detach().cpu()) for m in targets}
    return Adapter(lora, MappingProxyType(weights), cfg.architecture, path=path, base_model=base_model)


def load_adapter(path: str | Path, model_cfg: ModelConfig) -> Adapter:
    """Read and validate an adapter directory (``lora_config.json`` + ``lora_weights.*``).

    Raises:
        AdapterError: A file is missing or unreadable, the config is invalid, or a tensor is
            unexpected, missing or mis-shaped (the message names the file and keys).
    """
    root = Path(path)
    if not root.is_dir():
        raise AdapterError(f"{root}: adapter directory not found")
    config_path = root / CONFIG_FILE
    if not config_path.is_file():
        raise AdapterError(f"{config_path}: file not found")
    lora, base_model = read_lora_config(config_path)
    weights_path = next((root / n for n in WEIGHT_FILES if (root / n).is_file()), None)
    if weights_path is None:
        raise AdapterError(f"{root}: no LoRA weights file (expected one of {', '.join(WEIGHT_FILES)})")
    try:
        tensors = read_tensors(weights_path)  # safetensors, or weights-only unpickling + state_dict unwrap
    except CheckpointError as exc:
        raise AdapterError(str(exc)) from exc
    return adapter_from_state_dict(
        tensors,
        lora,
        model_cfg,
        where=str(weights_path),
        config_where=str(config_path),
        path=root,
        base_model=base_model,
    )
