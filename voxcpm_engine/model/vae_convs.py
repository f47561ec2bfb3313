"""Weight-normed causal convolutions of the AudioVAE, with their streaming and fused CUDA paths.

Parameter names, shapes and registration order follow the official ``audiovae.pth`` (the reference
builds its convolutions with the legacy ``torch.nn.utils.weight_norm``, which stores ``bias``,
``weight_g`` and ``weight_v``). The effective weight is recomputed with ``torch._weight_norm`` on
every call, which is the exact kernel the legacy forward pre-hook runs, so fp32 results are
bit-identical to the reference (spec §7.1).

Streaming (spec §6.6): every layer's ``forward`` takes an optional ``stream`` list. A convolution
that needs left context owns a slot in it (``stream_slot``, assigned by the model), reads its
previous input tail from there and writes the new tail back. With ``stream=None`` the layer behaves
like the reference (zero left padding).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

StreamBuffers = list[Tensor]
"""Per-convolution left-context tensors of one decoding stream, indexed by ``stream_slot``."""


class StreamableModule(nn.Module):
    """A layer whose ``forward(x, stream)`` can carry causal left context between calls."""

    def forward(self, x: Tensor, stream: StreamBuffers | None = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError


class _WeightNormConv(StreamableModule):
    """Legacy weight-norm parameters (``bias``, ``weight_g``, ``weight_v``) shared by both conv kinds.

    Args:
        weight_shape: Shape of the convolution weight (``weight_v``); the norm is taken over all
            dims but dim 0, so ``weight_g`` is ``[weight_shape[0], 1, 1]``.
        bias_size: Number of output channels.
        context: Left context (input samples) the layer needs when streaming; 0 means stateless.
    """

    def __init__(self, weight_shape: tuple[int, int, int], bias_size: int, context: int) -> None:
        super().__init__()
        # Registration order matches legacy weight_norm (it deletes `weight` and appends g, v after `bias`).
        self.bias = nn.Parameter(torch.empty(bias_size))
        self.weight_g = nn.Parameter(torch.empty(weight_shape[0], 1, 1))
        self.weight_v = nn.Parameter(torch.empty(weight_shape))
        self.register_buffer("folded_weight", None, persistent=False)
        self.register_buffer("folded_bias", None, persistent=False)  # only when compute_dtype differs
        self.compute_dtype: torch.dtype | None = None  # None: the parameters' dtype (see AudioVAE.set_decode_dtype)
        self.context = context
        self.stream_slot: int | None = None
        self.fused = False  # AudioVAE.use_fused_kernels: streaming fast paths (depthwise kernel, GEMM)
        if self.weight_v.device.type != "meta":  # shape-only builds (loader checks) skip the init: it is slow there
            self._reset_parameters()

    @torch.no_grad()
    def _reset_parameters(self) -> None:
        # Same distribution as a fresh nn.Conv1d / nn.ConvTranspose1d wrapped by weight_norm.
        nn.init.kaiming_uniform_(self.weight_v, a=math.sqrt(5))
        fan_in, _ = nn.init._calculate_fan_in_and_fan_out(self.weight_v)
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        nn.init.uniform_(self.bias, -bound, bound)
        self.weight_g.copy_(torch.norm_except_dim(self.weight_v, 2, 0))

    def weight(self) -> Tensor:
        """The effective weight ``g * v / ||v||`` (or the cached one after :meth:`fold`)."""
        return self._normed_weight() if self.folded_weight is None else self.folded_weight

    def _normed_weight(self) -> Tensor:
        # In the parameters' dtype (fp32), then rounded to compute_dtype if that is set: a norm over
        # up to 7 x 2048 taps taken in bf16 would lose more than the rounded weight does.
        weight = torch._weight_norm(self.weight_v, self.weight_g, 0)
        return weight if self.compute_dtype is None else weight.to(self.compute_dtype)

    def conv_bias(self) -> Tensor:
        """The bias in the dtype of :meth:`weight` (torch's convs want both in the input's dtype).

        The fused kernels take ``bias`` itself: they add it in fp32 whatever the activations' dtype.
        """
        if self.folded_bias is not None:
            return self.folded_bias
        return self.bias if self.compute_dtype is None else self.bias.to(self.compute_dtype)

    @torch.no_grad()
    def fold(self) -> None:
        """Cache the effective weight; it is then reused until :meth:`unfold` (no gradients flow to g/v)."""
        self.folded_weight = self._normed_weight().detach()
        self.folded_bias = None if self.compute_dtype is None else self.bias.detach().to(self.compute_dtype)

    def unfold(self) -> None:
        """Drop the cached weight and recompute it on every call again."""
        self.folded_weight = None
        self.folded_bias = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        # A cached weight would otherwise silently keep the old parameters.
        if self.folded_weight is not None:
            self.fold()

    def _with_context(self, x: Tensor, stream: StreamBuffers | None) -> Tensor:
        """Prepend the causal left context: zeros without a stream, the previous tail with one."""
        if self.context == 0:
            return x
        if stream is None or self.stream_slot is None:
            return F.pad(x, (self.context, 0))
        x = torch.cat([stream[self.stream_slot], x], dim=-1)
        stream[self.stream_slot] = x[..., -self.context :]
        return x


class CausalConv1d(_WeightNormConv):
    """Weight-normed Conv1d with ``left_pad`` zeros on the left and none on the right.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Kernel width.
        stride: Temporal stride (only stride 1 can stream).
        dilation: Kernel dilation.
        groups: Channel groups (``in_channels`` for depthwise).
        left_pad: Zero samples prepended; the reference's ``2 * padding [- output_padding]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        left_pad: int = 0,
    ) -> None:
        super().__init__((out_channels, in_channels // groups, kernel_size), out_channels, context=left_pad)
        self.stride = stride
        self.dilation = dilation
        self.groups = groups
        self.out_dtype: torch.dtype | None = None  # the fused mono path's output dtype (None: the input's)

    @property
    def in_channels(self) -> int:
        """Input channels (the width of the streaming context)."""
        return self.weight_v.shape[1] * self.groups

    def forward(self, x: Tensor, stream: StreamBuffers | None = None) -> Tensor:
        if self.streams_depthwise(stream):
            return self._depthwise_stream(x, stream)
        if self._streams_to_mono(stream):
            return self._mono_stream(x, stream)
        x = self._with_context(x, stream)
        return F.conv1d(x, self.weight(), self.conv_bias(), self.stride, 0, self.dilation, self.groups)

    @property
    def _depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels == self.weight_v.shape[0] and self.stride == 1

    def streams_depthwise(self, stream: StreamBuffers | None) -> bool:
        """Whether a call with ``stream`` takes the fused depthwise kernel."""
        return self.fused and stream is not None and self.stream_slot is not None and self._depthwise

    @property
    def pointwise(self) -> bool:
        """A stateless 1x1 conv: a matrix product over channels."""
        return self.weight_v.shape[-1] == 1 and self.groups == 1 and self.stride == 1 and self.context == 0

    def pointwise_residual(
        self, h: Tensor, residual: Tensor, snake_alpha: Tensor | None = None, *, epilogue: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """``residual + conv(h)`` for a 1x1 conv: one GEMM (cuDNN's 1x1 conv is 2x slower) and one fused add.

        Returns the sum and, with ``snake_alpha``, its Snake (the next layer's activation, same pass).
        ``epilogue``: one Triton GEMM that adds bias and residual (and takes the Snake) before its
        store (:mod:`voxcpm_engine.kernels.fused_vae_pointwise`), instead of cuBLAS's plus a pass.
        """
        from voxcpm_engine.kernels.fused_vae import bias_residual_add

        if epilogue:
            from voxcpm_engine.kernels.fused_vae_pointwise import pointwise_residual

            return pointwise_residual(
                self.weight()[:, :, 0], h, self.bias, residual, snake_alpha, tf32=torch.backends.cudnn.allow_tf32
            )

        with _matmul_tf32(torch.backends.cudnn.allow_tf32):  # the conv precision conv_flags chose
            y = torch.matmul(self.weight()[:, :, 0], h)
        return bias_residual_add(y, self.bias, residual, snake_alpha)

    def _depthwise_stream(self, x: Tensor, stream: StreamBuffers, snake_alpha: Tensor | None = None) -> Tensor:
        # The fused path: one kernel reads the context and the new samples in place (no cat, and
        # torch's generic depthwise kernel is slow), then the new context is the tail of [context | x].
        from voxcpm_engine.kernels.fused_vae import depthwise_causal_conv

        context = stream[self.stream_slot]
        y = depthwise_causal_conv(context, x, self.weight(), self.bias, self.dilation, snake_alpha)
        self._advance(stream, context, x)
        return y

    def _streams_to_mono(self, stream: StreamBuffers | None) -> bool:
        return (
            self.fused
            and stream is not None
            and self.stream_slot is not None
            and self.weight_v.shape[0] == 1
            and self.groups == 1
            and self.stride == 1
        )

    def _mono_stream(self, x: Tensor, stream: StreamBuffers) -> Tensor:
        from voxcpm_engine.kernels.fused_vae import mono_causal_conv

        context = stream[self.stream_slot]
        y = mono_causal_conv(context, x, self.weight(), self.bias, self.dilation, out_dtype=self.out_dtype)
        self._advance(stream, context, x)
        return y

    def _advance(self, stream: StreamBuffers, context: Tensor, x: Tensor) -> None:
        """The new context: the tail of ``[context | x]``."""
        n = self.context
        stream[self.stream_slot] = x[..., -n:] if x.shape[-1] >= n else torch.cat([context, x], dim=-1)[..., -n:]


class CausalConvTranspose1d(_WeightNormConv):
    """Weight-normed ConvTranspose1d (kernel ``2 * stride``) upsampling T frames to exactly ``T * stride``.

    The plain transposed conv yields ``(T + 1) * stride`` samples; the last ``stride`` are dropped
    (the reference trims ``2 * ceil(s / 2) - s % 2``, which equals ``s`` for every stride). Output
    sample t depends on input frames ``t // s - 1`` and ``t // s``, so streaming keeps one frame.

    Args:
        in_channels: Input channels (dim 0 of the weight, hence of ``weight_g``).
        out_channels: Output channels.
        stride: Upsampling factor.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__((in_channels, out_channels, 2 * stride), out_channels, context=1)
        self.stride = stride
        self._gemm_cache: Tensor | None = None  # the folded weight in the GEMM's layout

    @property
    def in_channels(self) -> int:
        """Input channels (the width of the streaming context)."""
        return self.weight_v.shape[0]

    def forward(self, x: Tensor, stream: StreamBuffers | None = None) -> Tensor:
        s = self.stride
        if stream is None or self.stream_slot is None:
            return F.conv_transpose1d(x, self.weight(), self.conv_bias(), s)[..., :-s]
        if self.fused:
            return self.stream_gemm(x, stream)[0]
        x = self._with_context(x, stream)
        # The first s samples belong to the previous frame and were emitted by the previous call.
        return F.conv_transpose1d(x, self.weight(), self.conv_bias(), s)[..., s:-s]

    def stream_gemm(
        self, x: Tensor, stream: StreamBuffers, snake_in: Tensor | None = None, snake_out: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """The streaming transposed conv as one GEMM plus an overlap-add (cuDNN's kernel for it is slow).

        With kernel ``2s``, output block j of the ``T`` new frames is ``W[..., :s]`` applied to frame
        j plus ``W[..., s:]`` applied to the frame before it (the context frame comes first). The
        frames go through the GEMM as rows of one ``[B * (T + 1), C_in]`` matrix, written straight
        from the context and the input (no concatenation first): a batched product over
        ``[C_in, T + 1]`` slices re-reads the whole weight per batch row, 35x slower for the
        first, widest layer at batch 128.

        Args:
            x: ``[B, C_in, T]`` new frames.
            stream: The stream's context buffers.
            snake_in: Alpha of the Snake before this conv: ``x`` is then taken before it, and the
                activation happens while the rows are written.
            snake_out: Alpha of the Snake after it: its output is returned too (same pass).

        Returns:
            ``[B, C_out, T * s]``, and its Snake (None without ``snake_out``).
        """
        from voxcpm_engine.kernels.fused_vae_upsample import overlap_add, snake_rows

        s, (bsz, in_ch, frames) = self.stride, x.shape
        if snake_in is not None:
            rows = snake_rows(x, snake_in, stream[self.stream_slot])
            stream[self.stream_slot] = rows[:, -1:].transpose(1, 2)
        else:
            rows = x.new_empty(bsz, frames + 1, in_ch)
            rows[:, :1].copy_(stream[self.stream_slot].transpose(1, 2))
            rows[:, 1:].copy_(x.transpose(1, 2))
            stream[self.stream_slot] = x[..., -1:]
        with _matmul_tf32(torch.backends.cudnn.allow_tf32):  # the conv precision conv_flags chose
            y = rows.view(bsz * (frames + 1), in_ch) @ self._gemm_weight()
        return overlap_add(y.view(bsz, frames + 1, 2, s, -1), self.bias, s, snake_out)

    def _gemm_weight(self) -> Tensor:
        """``[C_in, 2s * C_out]`` with columns ordered (kernel half, tap, channel); cached while folded."""
        folded = self.folded_weight
        if folded is not None and self._gemm_cache is not None and self._gemm_cache.device == folded.device:
            return self._gemm_cache
        weight = folded if folded is not None else self.weight()
        gemm = weight.permute(0, 2, 1).reshape(self.in_channels, -1).contiguous()
        if folded is not None:
            self._gemm_cache = gemm
        return gemm

    def fold(self) -> None:
        """See :meth:`_WeightNormConv.fold`; also drops the cached GEMM layout of the weight."""
        super().fold()
        self._gemm_cache = None

    def unfold(self) -> None:
        """See :meth:`_WeightNormConv.unfold`."""
        super().unfold()
        self._gemm_cache = None


@contextlib.contextmanager
def _matmul_tf32(enabled: bool) -> Iterator[None]:
    # bf16 GEMMs (a bf16 decode) accumulate in fp32 all the way: no bf16 split-K partial sums.
    matmul = torch.backends.cuda.matmul
    before = matmul.allow_tf32, matmul.allow_bf16_reduced_precision_reduction
    matmul.allow_tf32, matmul.allow_bf16_reduced_precision_reduction = enabled, False
    try:
        yield
    finally:
        matmul.allow_tf32, matmul.allow_bf16_reduced_precision_reduction = before
