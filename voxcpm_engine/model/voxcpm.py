"""The VoxCPM model (both architectures) as pure modules; the generation loop: ``voxcpm_engine.single.generate``.

Attribute names are the official state-dict prefixes (spec §3): ``state_dict()`` has exactly the
keys and shapes of the main weights file (377 / 467 / 577 tensors for 0.5B / 1.5 / 2). The
AudioVAE is a separate object and has no keys here. v1 and v2 differ only in how the residual LM
input is fused (add vs concat + ``fusion_concat_proj``) and how the DiT is conditioned (sum vs
two tokens), both parameterised below.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from voxcpm_engine.config.model_config import ModelConfig
from voxcpm_engine.model.local import LocalDiT, LocalEncoder
from voxcpm_engine.model.sampler import FlowDecoder
from voxcpm_engine.model.transformer import MiniCPM, RotaryEmbedding


class ScalarQuantizer(nn.Module):
    """FSQ bottleneck at inference: ``out_proj(round(tanh(in_proj(h)) * scale) / scale)``.

    ``torch.round`` rounds half to even, computed in the model dtype (spec §4.5).
    """

    def __init__(self, dim: int, latent_dim: int, scale: int) -> None:
        super().__init__()
        self.scale = scale
        self.in_proj = nn.Linear(dim, latent_dim)
        self.out_proj = nn.Linear(latent_dim, dim)

    def forward(self, h: Tensor) -> Tensor:
        z = torch.tanh(self.in_proj(h))
        return self.out_proj(torch.round(z * self.scale) / self.scale)


class VoxCPMModel(nn.Module):
    """VoxCPM-0.5B / VoxCPM1.5 (``voxcpm``) and VoxCPM2 (``voxcpm2``) without the AudioVAE.

    Args:
        cfg: The parsed checkpoint config.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        lm = cfg.base_lm_config()
        hidden, enc_hidden, dit_hidden = lm.hidden_size, cfg.encoder.hidden_dim, cfg.dit.hidden_dim
        self.base_lm = MiniCPM(lm, causal=True, max_positions=cfg.max_length)
        self.residual_lm = MiniCPM(cfg.residual_lm_config(), causal=True, max_positions=cfg.max_length)
        self.feat_encoder = LocalEncoder(cfg.encoder_lm_config(), cfg.feat_dim, cfg.patch_size)
        mu_tokens = 2 if cfg.version == 2 else 0
        self.feat_decoder = FlowDecoder(LocalDiT(cfg.dit_lm_config(), cfg.feat_dim, cfg.patch_size, mu_tokens))
        self.fsq_layer = ScalarQuantizer(hidden, cfg.fsq_latent_dim, cfg.fsq_scale)
        self.enc_to_lm_proj = nn.Linear(enc_hidden, hidden)
        self.lm_to_dit_proj = nn.Linear(hidden, dit_hidden)
        self.res_to_dit_proj = nn.Linear(hidden, dit_hidden)
        self.fusion_concat_proj = nn.Linear(2 * hidden, hidden) if cfg.version == 2 else None
        self.stop_proj = nn.Linear(hidden, hidden)
        self.stop_head = nn.Linear(hidden, 2, bias=False)

    @classmethod
    def build(
        cls,
        cfg: ModelConfig,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.bfloat16,
        *,
        init_weights: bool = False,
    ) -> VoxCPMModel:
        """Construct directly in ``dtype`` on ``device``, never holding an fp32 copy of the weights.

        The module tree is built on the meta device, cast, then materialised. RoPE tables are
        recomputed on the CPU in fp32 and rounded to ``dtype`` (equal to the reference's cast
        buffers). On ``device="meta"`` nothing is allocated (key/shape inspection).

        Args:
            cfg: The parsed checkpoint config.
            device: Target device.
            dtype: Parameter/activation dtype (``torch.bfloat16`` for parity).
            init_weights: Run the default initialisers; otherwise parameters are uninitialised
                memory, to be overwritten by ``load_state_dict``.

        Returns:
            The model in eval mode.
        """
        with torch.device("meta"):
            model = cls(cfg)
        model = model.to(dtype)
        if torch.device(device).type != "meta":
            model.to_empty(device=device)
            for module in model.modules():
                if isinstance(module, RotaryEmbedding):
                    module.reset_tables()
                elif init_weights and hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        return model.eval()

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.stop_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the parameters (and of every activation except the VAE's)."""
        return self.stop_head.weight.dtype

    def embed_text(self, ids: Tensor) -> Tensor:
        """Text token embeddings ``[..., H]``."""
        return self.base_lm.embed(ids)

    def encode_patches(self, patches: Tensor) -> Tensor:
        """Latent patches ``[B, T, P, D]`` -> LM-width audio embeddings ``[B, T, H]``."""
        return self.enc_to_lm_proj(self.feat_encoder(patches))

    def quantize(self, hidden: Tensor) -> Tensor:
        """The FSQ bottleneck applied to base-LM hidden states."""
        return self.fsq_layer(hidden)

    def residual_input(self, lm_hidden: Tensor, audio_embed: Tensor) -> Tensor:
        """Residual-LM input: v1 ``lm + audio``; v2 ``fusion_concat_proj([lm, audio])``."""
        if self.fusion_concat_proj is None:
            return lm_hidden + audio_embed
        return self.fusion_concat_proj(torch.cat((lm_hidden, audio_embed), dim=-1))

    def dit_condition(self, lm_hidden: Tensor, residual_hidden: Tensor) -> Tensor:
        """DiT ``mu`` ``[B, M]``: v1 the sum of both projections; v2 their concatenation (2 tokens)."""
        from_lm, from_res = self.lm_to_dit_proj(lm_hidden), self.res_to_dit_proj(residual_hidden)
        if self.fusion_concat_proj is None:
            return from_lm + from_res
        return torch.cat((from_lm, from_res), dim=-1)

    def stop_logits(self, lm_hidden: Tensor) -> Tensor:
        """``[B, 2]`` logits; index 1 means stop."""
        return self.stop_head(nn.functional.silu(self.stop_proj(lm_hidden)))

    def use_fused_kernels(self) -> None:
        """Switch every stack and the sampler to the fused Triton path (:mod:`voxcpm_engine.kernels.fused`).

        Call after the weights are loaded (q/k/v and gate/up weights are regrouped into fused
        tensors) and before CUDA graphs are captured. Needs Triton and a CUDA model (or
        ``TRITON_INTERPRET=1`` on the CPU). Calling it again does nothing.
        """
        if self.feat_decoder.fused:
            return
        for stack in (self.base_lm, self.residual_lm, self.feat_encoder.encoder, self.feat_decoder.estimator.decoder):
            stack.use_fused_kernels()
        self.feat_decoder.fused = True

    def sample_patch(
        self, noise: Tensor, mu: Tensor, cond: Tensor, *, n_timesteps: int, cfg_value: float | Tensor
    ) -> Tensor:
        """One flow-matching sample per row: ``[B, D, P]`` from noise ``[B, D, P]``, ``mu``, ``cond``."""
        return self.feat_decoder(noise, mu, cond, n_timesteps=n_timesteps, cfg_value=cfg_value)
