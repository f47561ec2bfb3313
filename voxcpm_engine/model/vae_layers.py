"""Layers of the AudioVAE above the convolutions (:mod:`voxcpm_engine.model.vae_convs`): Snake, residual
units, and the encoder's and decoder's resampling blocks, with their fused CUDA paths.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from voxcpm_engine.model.vae_convs import CausalConv1d, CausalConvTranspose1d, StreamableModule, StreamBuffers


def snake(x: Tensor, alpha: Tensor) -> Tensor:
    """Snake activation ``x + sin(alpha * x)^2 / (alpha + 1e-9)`` in the reference's op order."""
    return x + (alpha + 1e-9).reciprocal() * torch.sin(alpha * x).pow(2)


def run_layers(layers: Iterable[nn.Module], x: Tensor, stream: StreamBuffers | None) -> Tensor:
    """Apply ``layers`` in order, handing ``stream`` to the layers that understand it."""
    for layer in layers:
        x = layer(x, stream) if isinstance(layer, StreamableModule) else layer(x)
    return x


class Snake1d(StreamableModule):
    """Per-channel Snake activation; parameter ``alpha`` has shape ``[1, C, 1]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))
        self.fused = False  # AudioVAE.use_fused_kernels: one Triton kernel instead of five passes

    def forward(self, x: Tensor, stream: StreamBuffers | None = None) -> Tensor:
        if self.fused:
            from voxcpm_engine.kernels.fused_vae import snake as fused_snake

            return fused_snake(x, self.alpha)
        if x.dtype != self.alpha.dtype:  # a bf16 decode: in fp32 like the kernel, alpha unrounded
            return snake(x.float(), self.alpha.float()).to(x.dtype)
        return snake(x, self.alpha)


class ResidualUnit(StreamableModule):
    """``x + conv1x1(snake(conv7_dilated(snake(x))))`` with a causal (optionally depthwise) k=7 conv."""

    def __init__(self, dim: int, dilation: int, groups: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            Snake1d(dim),
            CausalConv1d(dim, dim, 7, dilation=dilation, groups=groups, left_pad=6 * dilation),
            Snake1d(dim),
            CausalConv1d(dim, dim, 1),
        )
        self.kernels = "passes"  # DecoderBlock.use_unit_kernels: see fused_forward

    def forward(self, x: Tensor, stream: StreamBuffers | None = None) -> Tensor:
        if not self.block[3].fused:
            return x + run_layers(self.block, x, stream)
        return self.fused_forward(x, self.block[0](x), stream)[0]

    @property
    def snake_alpha(self) -> Tensor:
        """Alpha of the unit's first Snake."""
        return self.block[0].alpha

    def fused_forward(
        self, x: Tensor, x_snaked: Tensor, stream: StreamBuffers | None, next_alpha: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """The fused path, from ``x`` and its first Snake: the second Snake runs inside the depthwise
        kernel, the 1x1 conv is a GEMM whose bias and residual add are one pass (which also
        applies the next layer's Snake, alpha ``next_alpha``, and returns it). ``kernels`` ``"gemm"``:
        that pass is the GEMM's epilogue (no GEMM output in memory). ``"one-kernel"``: a streamed unit
        of at most 256 channels is one kernel instead (no ``h`` or GEMM output in memory)."""
        _, conv, snake_out, pointwise = self.block
        if self.kernels == "one-kernel" and conv.streams_depthwise(stream):
            from voxcpm_engine.kernels.fused_vae_unit import fits, residual_unit

            if fits(x.shape[1]):
                context = stream[conv.stream_slot]
                out = residual_unit(
                    context, x_snaked, x, conv.weight(), conv.bias, snake_out.alpha, pointwise.weight()[:, :, 0],
                    pointwise.bias, conv.dilation, next_alpha, tf32=torch.backends.cudnn.allow_tf32,
                )  # fmt: skip
                conv._advance(stream, context, x_snaked)
                return out
        if conv.streams_depthwise(stream):
            h = conv._depthwise_stream(x_snaked, stream, snake_out.alpha)
        else:
            h = snake_out(conv(x_snaked, stream))
        return pointwise.pointwise_residual(h, x, next_alpha, epilogue=self.kernels == "gemm")


def _residual_stack(dim: int, groups: int) -> list[nn.Module]:
    return [ResidualUnit(dim, dilation, groups) for dilation in (1, 3, 9)]


class EncoderBlock(StreamableModule):
    """Three residual units on ``dim`` channels, Snake, then a strided causal conv ``dim -> 2*dim``.

    Args:
        dim: Input channels.
        stride: Downsampling factor (kernel ``2 * stride``).
        groups: Groups of the residual units' k=7 convs.
        version: 1 pads the strided conv by ``2 * ceil(s / 2)``, 2 by ``s`` (spec §7.1).
    """

    def __init__(self, dim: int, stride: int, groups: int, version: int) -> None:
        super().__init__()
        left_pad = 2 * math.ceil(stride / 2) - (stride % 2 if version == 2 else 0)
        self.block = nn.Sequential(
            *_residual_stack(dim, groups),
            Snake1d(dim),
            CausalConv1d(dim, 2 * dim, 2 * stride, stride=stride, left_pad=left_pad),
        )

    def forward(self, x: Tensor, stream: StreamBuffers | None = None) -> Tensor:
        return run_layers(self.block, x, stream)


class DecoderBlock(StreamableModule):
    """Snake, causal transposed conv ``in_dim -> out_dim`` (upsample by ``stride``), three residual units."""

    def __init__(self, in_dim: int, out_dim: int, stride: int, groups: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.block = nn.Sequential(
            Snake1d(in_dim),
            CausalConvTranspose1d(in_dim, out_dim, stride),
            *_residual_stack(out_dim, groups),
        )

    def use_unit_kernels(self, kernels: str) -> None:
        """How the fused path runs its residual units (:meth:`ResidualUnit.fused_forward`)."""
        for unit in self.block[2:]:
            unit.kernels = kernels

    def forward(self, x: Tensor, stream: StreamBuffers | None = None) -> Tensor:
        snake, conv, *units = self.block
        if not (conv.fused and stream is not None and conv.stream_slot is not None):
            return run_layers(self.block, x, stream)
        # The fused streaming path: every Snake is applied by the kernel that writes its input
        # (the GEMM's row staging, the overlap-add, each unit's residual add): one pass fewer each.
        alphas = [unit.snake_alpha for unit in units] + [None]
        y, y_snaked = conv.stream_gemm(x, stream, snake.alpha, alphas[0])
        for unit, next_alpha in zip(units, alphas[1:], strict=True):
            y, y_snaked = unit.fused_forward(y, y_snaked, stream, next_alpha)
        return y


class SampleRateCondition(nn.Module):
    """V2 per-channel affine conditioning on the output-rate bucket: ``x * scale[b] + bias[b]``."""

    def __init__(self, channels: int, num_buckets: int) -> None:
        super().__init__()
        self.scale_embed = nn.Embedding(num_buckets, channels)
        self.bias_embed = nn.Embedding(num_buckets, channels)
        nn.init.ones_(self.scale_embed.weight)
        nn.init.zeros_(self.bias_embed.weight)

    def forward(self, x: Tensor, bucket: Tensor) -> Tensor:
        """Condition ``x`` ``[B, C, T]`` on ``bucket`` (int64, shape ``[1]`` or ``[B]``)."""
        y = x * self.scale_embed(bucket).unsqueeze(-1) + self.bias_embed(bucket).unsqueeze(-1)
        return y.to(x.dtype)  # fp32 embeddings promote a bf16 decode's activations: keep its dtype
