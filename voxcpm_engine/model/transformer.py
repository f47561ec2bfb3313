"""MiniCPM4 transformer: the one stack used for the base LM, residual LM, local encoder and DiT.

Numerics follow spec §4.1-4.2 and §11 exactly (RMSNorm statistics in fp32, LongRoPE tables built
on the CPU in fp32 and rounded to the model dtype, rotation in fp32), so that a model loaded from
the official weights reproduces the reference bit for bit on CPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from voxcpm_engine.config.model_config import LMConfig
from voxcpm_engine.lora.layers import add_adapters_, get_lora_rows
from voxcpm_engine.model.attention import AttentionFn, DenseAttention, KVCache

# The fused path (voxcpm_engine.kernels.fused) is imported lazily: it needs Triton, the CPU path does not.


class RMSNorm(nn.Module):
    """Root-mean-square norm; the product is cast back to the input dtype BEFORE the weight multiply."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        variance = x.float().pow(2).mean(dim=-1, keepdim=True)
        return (x * torch.rsqrt(variance + self.eps)).to(x.dtype) * self.weight


def longrope_tables(cfg: LMConfig, n_positions: int) -> tuple[Tensor, Tensor]:
    """LongRoPE cos/sin tables ``[n_positions, head_dim]`` in fp32 on the CPU (spec §4.2).

    Each entry depends only on its position, so a table shorter than the reference's
    ``max_position_embeddings`` rows equals the reference's first rows.
    """
    dim = cfg.head_dim
    rope = cfg.rope_scaling
    # Always on the CPU: torch's vectorised CPU cos/sin produced the reference tables; numpy or CUDA
    # differ in the last fp32 bit often enough to flip hundreds of bf16 entries.
    cpu = torch.device("cpu")
    inv_freq = 1.0 / (float(cfg.rope_theta) ** (torch.arange(0, dim, 2, dtype=torch.float32, device=cpu) / dim))
    # The factor set is chosen from the configured length, never from the table we build.
    long = cfg.max_position_embeddings > rope.original_max_position_embeddings
    factors = torch.tensor(rope.long_factor if long else rope.short_factor, dtype=torch.float32, device=cpu)
    scale = cfg.max_position_embeddings / rope.original_max_position_embeddings
    scaling_factor = math.sqrt(1 + math.log(scale) / math.log(rope.original_max_position_embeddings))
    positions = torch.arange(n_positions, dtype=torch.float32, device=cpu)
    # (p * (1/f)) * inv_freq, each product rounded to fp32: p / f gives different bits (§4.2).
    freqs = torch.outer(positions, 1.0 / factors) * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos() * scaling_factor, emb.sin() * scaling_factor


class Embedding(nn.Module):
    """Token embedding table; unlike ``nn.Embedding`` it skips initialisation on the meta device."""

    def __init__(self, num_embeddings: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_embeddings, dim))
        if not self.weight.is_meta:
            self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight)

    def forward(self, ids: Tensor) -> Tensor:
        return F.embedding(ids, self.weight)


class RotaryEmbedding(nn.Module):
    """Holds the LongRoPE tables as non-persistent buffers in the model dtype."""

    def __init__(self, cfg: LMConfig, n_positions: int) -> None:
        super().__init__()
        self.cfg = cfg
        n = min(n_positions, cfg.max_position_embeddings)
        self.register_buffer("cos", torch.empty(n, cfg.head_dim), persistent=False)
        self.register_buffer("sin", torch.empty(n, cfg.head_dim), persistent=False)
        self.reset_tables()

    def reset_tables(self) -> None:
        """(Re)compute the tables on the CPU in fp32, round them to the buffer dtype, copy them in."""
        if self.cos.is_meta:
            return
        cos, sin = longrope_tables(self.cfg, self.cos.size(0))
        self.cos.copy_(cos.to(self.cos.dtype))
        self.sin.copy_(sin.to(self.sin.dtype))

    def forward(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Rows for ``positions`` (``[T]`` or ``[B, T]``), shaped to broadcast over heads."""
        cos, sin = self.cos[positions], self.sin[positions]
        if positions.dim() == 2:
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return cos, sin


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """NeoX-layout rotation computed in fp32, results cast back to the input dtype."""
    dtype = q.dtype
    q, k = q.float(), k.float()
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    return q.to(dtype), k.to(dtype)


class Attention(nn.Module):
    """Grouped-query self-attention projections; the attention itself is delegated (the seam)."""

    def __init__(self, cfg: LMConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        hidden, q_dim, kv_dim = cfg.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.q_proj = nn.Linear(hidden, q_dim, bias=False)
        self.k_proj = nn.Linear(hidden, kv_dim, bias=False)
        self.v_proj = nn.Linear(hidden, kv_dim, bias=False)
        self.o_proj = nn.Linear(q_dim, hidden, bias=False)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, attention: AttentionFn) -> Tensor:
        bsz, seq, _ = x.shape
        q = self.q_proj(x).view(bsz, seq, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(bsz, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(bsz, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rotary(q, k, *rope)
        out = attention(self.layer_idx, q, k, v)
        return self.o_proj(out.transpose(1, 2).contiguous().reshape(bsz, seq, self.num_heads * self.head_dim))

    def fuse_projections(self) -> None:
        """Store q/k/v weights as views of one ``[q + k + v, hidden]`` tensor (one GEMM on the fused path)."""
        self.qkv_weight = _fuse_weights(self.q_proj, self.k_proj, self.v_proj)

    def forward_fused(
        self, x: Tensor, positions: Tensor | None, rotary: RotaryEmbedding | None, attention: AttentionFn
    ) -> Tensor:
        """:meth:`forward` with one q/k/v GEMM (LoRA terms added to its slices) and the RoPE kernel.

        Needs :meth:`fuse_projections` first (:meth:`MiniCPM.use_fused_kernels` does both).
        """
        from voxcpm_engine.kernels.fused import rope_

        bsz, seq, _ = x.shape
        q_dim, kv_dim = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        qkv = F.linear(x, self.qkv_weight)
        q, k, v = qkv[..., :q_dim], qkv[..., q_dim : q_dim + kv_dim], qkv[..., q_dim + kv_dim :]
        if get_lora_rows() is not None:  # adapters add their terms to the fused GEMM's slices
            add_adapters_((self.q_proj, self.k_proj, self.v_proj), x, qkv)
        q = q.view(bsz, seq, self.num_heads, self.head_dim)
        k = k.view(bsz, seq, self.num_kv_heads, self.head_dim)
        v = v.view(bsz, seq, self.num_kv_heads, self.head_dim)
        if rotary is not None:
            rope_(q, k, rotary.cos, rotary.sin, positions)
        out = attention(self.layer_idx, q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.o_proj(out.transpose(1, 2).reshape(bsz, seq, q_dim))


class MLP(nn.Module):
    """SwiGLU feed-forward without biases."""

    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))

    def fuse_projections(self) -> None:
        """Store gate/up weights as views of one ``[2 * intermediate, hidden]`` tensor."""
        self.gate_up_weight = _fuse_weights(self.gate_proj, self.up_proj)

    def forward_fused(self, x: Tensor) -> Tensor:
        """:meth:`forward` with one gate/up GEMM (LoRA terms added to its slices) and the SwiGLU kernel.

        Needs :meth:`fuse_projections` first.
        """
        from voxcpm_engine.kernels.fused import silu_mul

        gate_up = F.linear(x, self.gate_up_weight)
        width = gate_up.shape[-1] // 2
        gate, up = gate_up[..., :width], gate_up[..., width:]
        if get_lora_rows() is not None:
            add_adapters_((self.gate_proj, self.up_proj), x, gate_up)
        return self.down_proj(silu_mul(gate, up))


def _fuse_weights(*linears: nn.Linear) -> Tensor:
    """Concatenate bias-free weights along the output dim and make each layer's weight a view of it.

    The parameters stay the same objects (state-dict keys, LoRA wrappers sharing them) and no memory
    is added: only their storage moves into the fused tensor.
    """
    fused = torch.cat([lin.weight.detach() for lin in linears])
    start = 0
    for lin in linears:
        rows = lin.weight.shape[0]
        lin.weight.data = fused[start : start + rows]
        start += rows
    return fused


class DecoderLayer(nn.Module):
    """Pre-norm block: ``x + attn(norm(x))`` then ``h + mlp(norm(h))`` (muP-scaled branches if enabled)."""

    def __init__(self, cfg: LMConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = Attention(cfg, layer_idx)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.branch_scale = cfg.scale_depth / math.sqrt(cfg.num_hidden_layers) if cfg.use_mup else None

    def _residual(self, x: Tensor, branch: Tensor) -> Tensor:
        return x + (branch if self.branch_scale is None else branch * self.branch_scale)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, attention: AttentionFn) -> Tensor:
        x = self._residual(x, self.self_attn(self.input_layernorm(x), rope, attention))
        return self._residual(x, self.mlp(self.post_attention_layernorm(x)))


class MiniCPM(nn.Module):
    """A MiniCPM4 stack: optional token embedding, decoder layers, final norm.

    Args:
        cfg: The stack's config (one of ``ModelConfig.*_config()``).
        causal: Attention mask used when no :class:`AttentionFn` is passed to :meth:`forward`.
        max_positions: Rows of the RoPE table (positions the stack will ever see).
    """

    def __init__(self, cfg: LMConfig, *, causal: bool, max_positions: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.causal = causal
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size) if cfg.vocab_size > 0 else None
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary = None if cfg.no_rope else RotaryEmbedding(cfg, max_positions)
        self._dense_attention = DenseAttention(causal)
        self.fused = False  # set by use_fused_kernels (CUDA fast path)

    def embed(self, ids: Tensor) -> Tensor:
        """Token embeddings, multiplied by ``scale_emb`` only under muP."""
        if self.embed_tokens is None:
            raise RuntimeError("this stack has no token embedding (vocab_size 0)")
        out = self.embed_tokens(ids)
        return out * self.cfg.scale_emb if self.cfg.use_mup else out

    def forward(self, x: Tensor, positions: Tensor | None = None, attention: AttentionFn | None = None) -> Tensor:
        """Run the stack on embeddings.

        Args:
            x: Input embeddings ``[B, T, hidden]``.
            positions: RoPE positions ``[T]`` or ``[B, T]``; default ``0..T-1``.
            attention: Where attention is computed (e.g. from :meth:`KVCache.append`); default
                plain SDPA with this stack's causal flag.

        Returns:
            Final-normed hidden states ``[B, T, hidden]``.
        """
        attention = attention or self._dense_attention
        if self.fused:
            return self._forward_fused(x, positions, attention)
        rope = None
        if self.rotary is not None:
            if positions is None:
                positions = torch.arange(x.size(1), device=x.device)
            rope = self.rotary(positions)
        for layer in self.layers:
            x = layer(x, rope, attention)
        return self.norm(x)

    def use_fused_kernels(self) -> None:
        """Switch to the fused path: Triton kernels for norms, RoPE and SwiGLU, fused q/k/v and gate/up GEMMs."""
        for layer in self.layers:
            layer.self_attn.fuse_projections()
            layer.mlp.fuse_projections()
        self._dense_attention = DenseAttention(self.causal, strided=True)
        self.fused = True

    def _forward_fused(self, x: Tensor, positions: Tensor | None, attention: AttentionFn) -> Tensor:
        # Every residual add is fused with the norm that follows it (the last one with the final norm).
        from voxcpm_engine.kernels.fused import add_rms_norm, rms_norm

        eps = self.cfg.rms_norm_eps
        layers = self.layers
        h = rms_norm(x, layers[0].input_layernorm.weight, eps)
        for i, layer in enumerate(layers):
            branch = layer.self_attn.forward_fused(h, positions, self.rotary, attention)
            x, h = add_rms_norm(x, branch, layer.branch_scale, layer.post_attention_layernorm.weight, eps)
            branch = layer.mlp.forward_fused(h)
            after = layers[i + 1].input_layernorm if i + 1 < len(layers) else self.norm
            x, h = add_rms_norm(x, branch, layer.branch_scale, after.weight, eps)
        return h

    def new_kv_cache(self, capacity: int, *, batch_size: int = 1) -> KVCache:
        """A zeroed contiguous cache for this stack on its device and dtype."""
        w = self.norm.weight
        return KVCache(
            self.cfg.num_hidden_layers,
            self.cfg.num_key_value_heads,
            self.cfg.head_dim,
            capacity,
            batch_size=batch_size,
            dtype=w.dtype,
            device=w.device,
        )
