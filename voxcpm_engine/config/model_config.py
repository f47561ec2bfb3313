"""Model configuration: the checkpoint's ``config.json``, parsed and validated once.

The official checkpoints describe every transformer in the model by one ``lm_config`` plus
per-module overrides (spec §2.5). :class:`ModelConfig` keeps that shape and exposes the derived
per-stack configs, so every module is built from a :class:`LMConfig` the same way.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

ARCHITECTURES = ("voxcpm", "voxcpm2")


class ConfigError(ValueError):
    """A config.json that cannot describe a VoxCPM model; the message names the file and field."""


def _take(cls: type, data: Any, where: str, **overrides: Any) -> Any:
    """Build dataclass ``cls`` from a JSON object, ignoring unknown keys like the reference does."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(data).__name__}")
    kwargs: dict[str, Any] = {}
    missing = []
    for f in fields(cls):
        if f.name in overrides:
            kwargs[f.name] = overrides[f.name]
        elif f.name in data:
            kwargs[f.name] = data[f.name]
        elif f.default is MISSING and f.default_factory is MISSING:
            missing.append(f.name)
    if missing:
        raise ConfigError(f"{where}: missing required field(s) {', '.join(missing)}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _check(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{where}: {msg}")


@dataclass(frozen=True)
class RopeScaling:
    """LongRoPE parameters (``lm_config.rope_scaling``)."""

    type: str
    long_factor: tuple[float, ...]
    short_factor: tuple[float, ...]
    original_max_position_embeddings: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "long_factor", tuple(float(x) for x in self.long_factor))
        object.__setattr__(self, "short_factor", tuple(float(x) for x in self.short_factor))
        if self.type != "longrope":
            raise ValueError(f"rope_scaling.type {self.type!r} is not supported (only 'longrope')")


@dataclass(frozen=True)
class LMConfig:
    """One MiniCPM4 transformer stack (base LM, residual LM, local encoder or DiT)."""

    bos_token_id: int
    eos_token_id: int
    hidden_size: int
    intermediate_size: int
    max_position_embeddings: int
    num_attention_heads: int
    num_hidden_layers: int
    num_key_value_heads: int
    rms_norm_eps: float
    rope_scaling: RopeScaling
    vocab_size: int
    scale_emb: float
    dim_model_base: int
    scale_depth: float
    rope_theta: float
    use_mup: bool = True
    kv_channels: int | None = None
    no_rope: bool = False

    @property
    def head_dim(self) -> int:
        """Per-head width: ``kv_channels`` when set, else hidden / heads."""
        return self.kv_channels or self.hidden_size // self.num_attention_heads

    def validate(self, where: str) -> None:
        """Raise :class:`ConfigError` when shapes cannot form a transformer."""
        for name in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads"):
            _check(getattr(self, name) > 0, where, f"{name} must be positive")
        _check(self.num_hidden_layers >= 0, where, "num_hidden_layers must be >= 0")
        _check(
            self.num_attention_heads % self.num_key_value_heads == 0,
            where,
            "num_attention_heads must be a multiple of num_key_value_heads",
        )
        _check(self.head_dim % 2 == 0, where, "head_dim must be even")
        if not self.no_rope:
            n = len(self.rope_scaling.short_factor)
            _check(
                n == self.head_dim // 2 and len(self.rope_scaling.long_factor) == n,
                where,
                f"rope_scaling factors have {n} values, head_dim {self.head_dim} needs {self.head_dim // 2}",
            )


@dataclass(frozen=True)
class LocalConfig:
    """``encoder_config`` / ``dit_config``: width overrides for the local encoder and the DiT."""

    hidden_dim: int = 1024
    ffn_dim: int = 4096
    num_heads: int = 16
    num_layers: int = 4
    kv_channels: int | None = None


@dataclass(frozen=True)
class AudioVAEConfig:
    """AudioVAE V1 (``voxcpm``) or V2 (``voxcpm2``) hyper-parameters with the reference defaults."""

    version: int
    encoder_dim: int = 128
    encoder_rates: tuple[int, ...] = (2, 5, 8, 8)
    latent_dim: int = 64
    decoder_dim: int = 1536
    decoder_rates: tuple[int, ...] = (8, 8, 5, 2)
    depthwise: bool = True
    sample_rate: int = 16000
    use_noise_block: bool = False
    # V2 only.
    out_sample_rate: int | None = None
    sr_bin_boundaries: tuple[int, ...] | None = None
    cond_type: str = "scale_bias"
    cond_dim: int = 128
    cond_out_layer: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoder_rates", tuple(int(r) for r in self.encoder_rates))
        object.__setattr__(self, "decoder_rates", tuple(int(r) for r in self.decoder_rates))
        if self.sr_bin_boundaries is not None:
            object.__setattr__(self, "sr_bin_boundaries", tuple(int(b) for b in self.sr_bin_boundaries))

    @classmethod
    def defaults(cls, version: int) -> AudioVAEConfig:
        """The reference's defaults for a version (used when ``audio_vae_config`` is absent)."""
        if version == 1:
            return cls(version=1)
        return cls(
            version=2,
            decoder_dim=2048,
            decoder_rates=(8, 6, 5, 2, 2, 2),
            out_sample_rate=48000,
            sr_bin_boundaries=(20000, 30000, 40000),
        )

    @property
    def encode_hop(self) -> int:
        """Input samples per latent frame."""
        return _prod(self.encoder_rates)

    @property
    def decode_hop(self) -> int:
        """Output samples per latent frame."""
        return _prod(self.decoder_rates)

    @property
    def output_sample_rate(self) -> int:
        """Rate of decoded audio (V2 decodes at ``out_sample_rate``)."""
        return self.out_sample_rate or self.sample_rate

    def validate(self, where: str) -> None:
        """Raise :class:`ConfigError` on impossible values."""
        _check(self.version in (1, 2), where, f"unknown AudioVAE version {self.version}")
        _check(self.encoder_dim > 0 and self.decoder_dim > 0, where, "encoder_dim/decoder_dim must be positive")
        _check(bool(self.encoder_rates) and all(r > 0 for r in self.encoder_rates), where, "bad encoder_rates")
        _check(bool(self.decoder_rates) and all(r > 0 for r in self.decoder_rates), where, "bad decoder_rates")
        _check(not self.use_noise_block, where, "use_noise_block=true is not supported (no release uses it)")
        if self.version == 2:
            _check(self.cond_type == "scale_bias", where, f"cond_type {self.cond_type!r} is not supported")
            _check(not self.cond_out_layer, where, "cond_out_layer=true is not supported")
            ratio = self.output_sample_rate * self.encode_hop / self.sample_rate
            _check(
                abs(ratio - self.decode_hop) < 1e-6,
                where,
                "decoder hop must equal encoder hop scaled by out_sample_rate/sample_rate",
            )
        else:
            _check(self.encode_hop == self.decode_hop, where, "V1 encoder and decoder hops must match")


def _prod(xs: tuple[int, ...]) -> int:
    out = 1
    for x in xs:
        out *= x
    return out


@dataclass(frozen=True)
class ModelConfig:
    """A parsed, validated ``config.json`` of a VoxCPM checkpoint."""

    architecture: str
    lm: LMConfig
    encoder: LocalConfig
    dit: LocalConfig
    audio_vae: AudioVAEConfig
    patch_size: int
    feat_dim: int = 64
    residual_lm_num_layers: int = 6
    residual_lm_no_rope: bool = False
    fsq_latent_dim: int = 256
    fsq_scale: int = 9
    max_length: int = 4096
    dtype: str = "bfloat16"
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def version(self) -> int:
        """1 for ``voxcpm`` (0.5B, 1.5), 2 for ``voxcpm2``."""
        return 2 if self.architecture == "voxcpm2" else 1

    # Derived per-stack configs (spec §2.5): one LMConfig shape for every transformer.
    def base_lm_config(self) -> LMConfig:
        """The text/audio backbone."""
        return self.lm

    def residual_lm_config(self) -> LMConfig:
        """The residual acoustic LM (no embedding; v2 without positional encoding)."""
        return replace(
            self.lm,
            num_hidden_layers=self.residual_lm_num_layers,
            vocab_size=0,
            no_rope=self.residual_lm_no_rope if self.version == 2 else self.lm.no_rope,
        )

    def _local(self, loc: LocalConfig) -> LMConfig:
        return replace(
            self.lm,
            hidden_size=loc.hidden_dim,
            intermediate_size=loc.ffn_dim,
            num_attention_heads=loc.num_heads,
            num_hidden_layers=loc.num_layers,
            kv_channels=loc.kv_channels,
            vocab_size=0,
        )

    def encoder_lm_config(self) -> LMConfig:
        """The local encoder's bidirectional stack."""
        return self._local(self.encoder)

    def dit_lm_config(self) -> LMConfig:
        """The local DiT's bidirectional stack."""
        return self._local(self.dit)

    @property
    def sample_rate(self) -> int:
        """Output waveform rate (16 kHz, 44.1 kHz or 48 kHz for the releases)."""
        return self.audio_vae.output_sample_rate

    @property
    def encode_sample_rate(self) -> int:
        """Rate that prompt and reference audio are resampled to before encoding."""
        return self.audio_vae.sample_rate

    @property
    def samples_per_patch(self) -> int:
        """Output samples per generated patch (one AR step)."""
        return self.patch_size * self.audio_vae.decode_hop

    @property
    def prompt_pad_multiple(self) -> int:
        """Input samples per patch: prompt audio is padded to a multiple of this."""
        return self.patch_size * self.audio_vae.encode_hop

    @property
    def context_patches(self) -> int:
        """Trailing prompt patches kept as decoding context (``streaming_prefix_len - 1``)."""
        return 3 if self.version == 2 else 2

    @classmethod
    def from_dict(cls, data: Any, where: str = "config.json") -> ModelConfig:
        """Parse and validate a config dict; errors name ``where`` and the offending field."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a JSON object")
        arch = data.get("architecture", "voxcpm")
        if arch not in ARCHITECTURES:
            raise ConfigError(f"{where}: unknown architecture {arch!r} (supported: {', '.join(ARCHITECTURES)})")
        version = 2 if arch == "voxcpm2" else 1
        for key in ("lm_config", "encoder_config", "dit_config"):
            if key not in data:
                raise ConfigError(f"{where}: missing required field {key}")
        lm_raw = data["lm_config"]
        if not isinstance(lm_raw, dict) or "rope_scaling" not in lm_raw:
            raise ConfigError(f"{where}: lm_config: missing required field(s) rope_scaling")
        rope = _take(RopeScaling, lm_raw["rope_scaling"], f"{where}: lm_config.rope_scaling")
        lm = _take(LMConfig, lm_raw, f"{where}: lm_config", rope_scaling=rope)
        encoder = _take(LocalConfig, data["encoder_config"], f"{where}: encoder_config")
        dit = _take(LocalConfig, data["dit_config"], f"{where}: dit_config")
        vae_raw = data.get("audio_vae_config")
        if vae_raw is None:
            vae = AudioVAEConfig.defaults(version)
        else:
            base = AudioVAEConfig.defaults(version)
            merged = {f.name: getattr(base, f.name) for f in fields(AudioVAEConfig)}
            if isinstance(vae_raw, dict):
                merged.update({k: v for k, v in vae_raw.items() if k in merged})
            vae = _take(
                AudioVAEConfig,
                merged if isinstance(vae_raw, dict) else vae_raw,
                f"{where}: audio_vae_config",
                version=version,
            )
        defaults = (2, 6, 256, 4096) if version == 1 else (4, 8, 512, 8192)
        try:
            cfg = cls(
                architecture=arch,
                lm=lm,
                encoder=encoder,
                dit=dit,
                audio_vae=vae,
                patch_size=int(data.get("patch_size", defaults[0])),
                feat_dim=int(data.get("feat_dim", 64)),
                residual_lm_num_layers=int(data.get("residual_lm_num_layers", defaults[1])),
                residual_lm_no_rope=bool(data.get("residual_lm_no_rope", False)),
                fsq_latent_dim=int(data.get("scalar_quantization_latent_dim", defaults[2])),
                fsq_scale=int(data.get("scalar_quantization_scale", 9)),
                max_length=int(data.get("max_length", defaults[3])),
                dtype=str(data.get("dtype", "bfloat16")),
                raw=data,
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        cfg.validate(where)
        return cfg

    @classmethod
    def from_json(cls, path: str | Path) -> ModelConfig:
        """Read and validate ``config.json`` at ``path``."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise ConfigError(f"{path}: file not found") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: invalid JSON ({exc})") from exc
        return cls.from_dict(data, where=str(path))

    def validate(self, where: str = "config.json") -> None:
        """Check every stack and the VAE; raise :class:`ConfigError` naming the field."""
        self.lm.validate(f"{where}: lm_config")
        self.residual_lm_config().validate(f"{where}: residual_lm")
        self.encoder_lm_config().validate(f"{where}: encoder_config")
        self.dit_lm_config().validate(f"{where}: dit_config")
        self.audio_vae.validate(f"{where}: audio_vae_config")
        _check(self.patch_size > 0, where, "patch_size must be positive")
        _check(self.feat_dim == self.audio_vae.latent_dim, where, "feat_dim must equal audio_vae latent_dim")
        _check(self.fsq_latent_dim > 0 and self.fsq_scale > 0, where, "bad scalar_quantization settings")
        _check(self.max_length > 0, where, "max_length must be positive")
        _check(self.lm.vocab_size > 104, where, "lm_config.vocab_size must include the audio tokens 101-104")
        _check(self.dtype in ("bfloat16", "float16", "float32"), where, f"unsupported dtype {self.dtype!r}")
