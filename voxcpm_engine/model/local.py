"""Per-patch modules: the local encoder (patch -> one vector) and the local DiT (velocity network).

Both wrap a bidirectional :class:`MiniCPM` over a short sequence. Layout details matter for bit
parity on CPU: a ``Linear`` with bias takes a different kernel path (matmul + separate bias add
instead of a fused addmm) on non-contiguous inputs, so the inputs are laid out exactly like the
reference's (spec §4.4, §4.6).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from voxcpm_engine.config.model_config import LMConfig
from voxcpm_engine.model.transformer import MiniCPM


class LocalEncoder(nn.Module):
    """``VoxCPMLocEnc``: a learned CLS token plus the projected patch frames, CLS output returned.

    Args:
        cfg: The encoder stack config (``ModelConfig.encoder_lm_config()``).
        feat_dim: Latent channels ``D``.
        patch_size: Frames per patch ``P`` (sizes the RoPE table: positions ``0..P``).
    """

    def __init__(self, cfg: LMConfig, feat_dim: int, patch_size: int) -> None:
        super().__init__()
        self.special_token = nn.Parameter(torch.empty(1, 1, 1, cfg.hidden_size))
        self.in_proj = nn.Linear(feat_dim, cfg.hidden_size)
        self.encoder = MiniCPM(cfg, causal=False, max_positions=patch_size + 1)
        if not self.special_token.is_meta:  # meta init would pull in torch._dynamo (seconds)
            self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.special_token)

    def forward(self, patches: Tensor) -> Tensor:
        """Encode ``[B, T, P, D]`` patches independently into ``[B, T, hidden]``.

        The input may be a non-contiguous view; it is used as given (the reference feeds the
        transposed sampler output straight in during decoding).
        """
        bsz, n_patches, patch, _ = patches.shape
        x = self.in_proj(patches)
        cls = self.special_token.expand(bsz, n_patches, 1, -1)
        x = torch.cat([cls, x], dim=2).reshape(bsz * n_patches, patch + 1, -1)
        return self.encoder(x)[:, 0].reshape(bsz, n_patches, -1)


def timestep_embedding(t: Tensor, dim: int, scale: int = 1000) -> Tensor:
    """Sinusoidal embedding ``[N, dim]`` (sin half first) of ``t`` ``[N]``, computed in ``t.dtype``.

    Every op rounds to ``t.dtype`` (bf16 at inference), including the ``arange``, and ``scale * t``
    is rounded before the multiply by the frequencies: this order is what the weights saw (§4.6).
    """
    half = dim // 2
    exponent = math.log(10000) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=t.dtype, device=t.device) * -exponent)
    args = scale * t.unsqueeze(1) * freqs.unsqueeze(0)
    return torch.cat((args.sin(), args.cos()), dim=-1)


class TimestepMLP(nn.Module):
    """Linear -> SiLU -> Linear on a time embedding."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class LocalDiT(nn.Module):
    """``VoxCPMLocDiT`` (v1) / ``VoxCPMLocDiTV2`` (v2): predicts the flow velocity of one patch.

    Token sequence: v1 ``[mu + time | cond (P) | x (P)]``; v2 ``[mu_1 | mu_2 | time | cond | x]``.

    Args:
        cfg: The DiT stack config (``ModelConfig.dit_lm_config()``).
        feat_dim: Latent channels ``D``.
        patch_size: Frames per patch ``P``.
        mu_tokens: 0 adds ``mu`` (``[N, hidden]``) into the time token (v1); ``n > 0`` splits ``mu``
            (``[N, n * hidden]``) into ``n`` tokens placed before the time token (v2: 2).
    """

    def __init__(self, cfg: LMConfig, feat_dim: int, patch_size: int, mu_tokens: int) -> None:
        super().__init__()
        hidden = cfg.hidden_size
        self.hidden = hidden
        self.mu_tokens = mu_tokens
        self.in_proj = nn.Linear(feat_dim, hidden)
        self.cond_proj = nn.Linear(feat_dim, hidden)
        self.out_proj = nn.Linear(hidden, feat_dim)
        self.time_mlp = TimestepMLP(hidden)
        self.delta_time_mlp = TimestepMLP(hidden)
        self.decoder = MiniCPM(cfg, causal=False, max_positions=mu_tokens + 1 + 2 * patch_size)
        self._time_tables: dict[int, Tensor] = {}  # fused path: per step count, see time_table()

    def forward(self, x: Tensor, mu: Tensor, t: Tensor, cond: Tensor, dt: Tensor) -> Tensor:
        """Velocity ``[N, D, P]`` for noisy ``x`` ``[N, D, P]`` at time ``t`` ``[N]``.

        Args:
            x: Noisy patch ``[N, D, P]``.
            mu: LM conditioning ``[N, hidden]`` (v1) or ``[N, mu_tokens * hidden]`` (v2).
            t: Flow time ``[N]`` (1 = noise, 0 = data).
            cond: Previous patch ``[N, D, P]``.
            dt: Step size for mean-flow mode ``[N]`` (zeros at inference).
        """
        # Transpose to [N, P, D] and make contiguous BEFORE the biased linears (bit parity, §4.6).
        x = self.in_proj(x.transpose(1, 2).contiguous())
        cond = self.cond_proj(cond.transpose(1, 2).contiguous())
        time = self._time_token(t, dt)
        if self.mu_tokens:
            prefix = [mu.view(x.size(0), self.mu_tokens, self.hidden), time.unsqueeze(1)]
        else:
            prefix = [(mu + time).unsqueeze(1)]
        hidden = self.decoder(torch.cat([*prefix, cond, x], dim=1))
        return self.out_proj(hidden[:, -x.size(1) :]).transpose(1, 2).contiguous()

    # --- fused sampler path (CUDA): the loop-invariant work is done once per sampler call --------

    def time_table(self, n_timesteps: int, times: Tensor) -> Tensor | None:
        """``[K, hidden]`` time-token contributions for the sampler's ``K`` estimator calls.

        ``time_mlp(t) + delta_time_mlp(dt = 0)`` depends only on the step count, so it is computed
        once per count (from ``times``, the ``K`` flow times of the calls) and cached. ``None`` when
        an adapter patches the time MLPs (their output then depends on the row's voice).
        """
        mlps = (
            self.time_mlp.linear_1,
            self.time_mlp.linear_2,
            self.delta_time_mlp.linear_1,
            self.delta_time_mlp.linear_2,
        )
        if any(type(m) is not nn.Linear for m in mlps):
            return None
        table = self._time_tables.get(n_timesteps)
        if table is None:
            times = times.to(self.in_proj.weight.device)
            table = self._time_tables[n_timesteps] = self._time_token(times, torch.zeros_like(times))
        return table

    def time_row(self, t: Tensor, rows: int) -> Tensor:
        """The time-token contribution ``[rows, hidden]`` at flow time ``t`` (0-dim, on the model's device)."""
        t = t.expand(rows)
        return self._time_token(t, torch.zeros_like(t))

    def _time_token(self, t: Tensor, dt: Tensor) -> Tensor:
        """``time_mlp(emb(t)) + delta_time_mlp(emb(dt))``, ``[N, hidden]`` (the reference's op order)."""
        dtype = self.in_proj.weight.dtype
        time = self.time_mlp(timestep_embedding(t, self.hidden).to(dtype))
        return time + self.delta_time_mlp(timestep_embedding(dt, self.hidden).to(dtype))

    def prepare(self, mu: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        """Loop invariants of a sampler call: ``mu`` as tokens ``[N, m, hidden]``, the projected cond ``[N, P, H]``.

        Args:
            mu: ``[N, mu_tokens * hidden]`` (v2) or ``[N, hidden]`` (v1; one token, the time is added later).
            cond: Previous patch ``[N, P, D]`` (contiguous).
        """
        tokens = mu.view(mu.size(0), max(self.mu_tokens, 1), self.hidden)
        return tokens, self.cond_proj(cond)

    def velocity(self, x: Tensor, mu_tokens: Tensor, cond: Tensor, time: Tensor) -> Tensor:
        """:meth:`forward` on the fused path: ``x`` ``[N, P, D]`` in, velocity ``[N, P, D]`` out.

        Args:
            x: Noisy patch ``[N, P, D]`` (frames first: no transposes inside the loop).
            mu_tokens: From :meth:`prepare`.
            cond: Projected cond from :meth:`prepare`.
            time: ``[1, hidden]`` or ``[N, hidden]`` time-token contribution.
        """
        x_h = self.in_proj(x)
        n = x.size(0)
        if self.mu_tokens:
            prefix = [mu_tokens, time.unsqueeze(1).expand(n, 1, self.hidden)]
        else:
            prefix = [mu_tokens + time.unsqueeze(1)]
        hidden = self.decoder(torch.cat([*prefix, cond, x_h], dim=1))
        return self.out_proj(hidden[:, -x.size(1) :])
