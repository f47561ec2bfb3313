"""Fused Triton kernels for the AudioVAE's streaming decode (the CUDA fast path).

At large batches the fp32 VAE decode is the biggest part of an engine step, and memory-bound:
op by op, each of its ~35 Snake activations makes five full-tensor passes, and each depthwise
k=7 conv first concatenates its streaming context to the input and then runs torch's generic
depthwise kernel. These kernels do the Snake in one pass and the depthwise conv over context and
input in place (the transposed convs' kernels: :mod:`voxcpm_engine.kernels.fused_vae_upsample`). Every
kernel takes fp32 or bf16 activations (``EngineConfig.vae_dtype``) and
sums in fp32, rounding once where it stores, and is told its rows' alignment (:func:`_align`) so
that it moves 16 bytes per access. Switched on by
:meth:`voxcpm_engine.model.audio_vae.AudioVAE.use_fused_kernels`; CUDA, or the CPU under
``TRITON_INTERPRET=1`` (tests).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.language.extra import libdevice


@triton.jit
def _sin_reduced(a):
    """``sin(a)`` as the GPU's ``sin.approx`` after a two-constant reduction to [-pi, pi] (compiled only)."""
    n = libdevice.rint(a * 0.15915494309189535)
    r = (a - n * 6.28125) - n * 0.0019353071795864769  # 2 * pi in two parts: n * 6.28125 is exact
    return tl.inline_asm_elementwise("sin.approx.f32 $0, $1;", "=f,f", [r], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _snake(x, alpha, LIBDEVICE: tl.constexpr):
    """Snake of fp32 ``x`` with fp32 ``alpha`` (broadcastable), in the reference's op order.

    ``LIBDEVICE``: 0 in the interpreter (numpy's sin), 1 libdevice's accurate sin, 2 :func:`_sin_reduced`."""
    if LIBDEVICE == 2:
        s = _sin_reduced(alpha * x)
    elif LIBDEVICE == 1:
        s = libdevice.sin(alpha * x)  # accurate at any argument; tl.sin may be the approximate PTX one
    else:
        s = tl.sin(alpha * x)  # the interpreter (numpy) has no libdevice
    return x + (1.0 / (alpha + 1e-9)) * (s * s)


SIN_MODE = 1
"""The compiled kernels' sin (see ``_snake``): 1 libdevice, 2 reduced ``sin.approx``. A switch for
measurements (``scripts/bench_vae_kernels.py``), not a setting: 2 is not the default until the
fused kernels' GPU tests pass with it and the engine's gain is measured (docs/PERFORMANCE.md)."""


def _libdevice() -> int:
    """The ``LIBDEVICE`` constexpr every kernel here takes: 0 under the interpreter, else :data:`SIN_MODE`."""
    return 0 if os.environ.get("TRITON_INTERPRET") == "1" else SIN_MODE


def _align(length: int) -> int:
    """The ``ALIGN`` constexpr of a kernel over rows of ``length`` samples: the largest power of two
    (at most 16) that divides it.

    The kernels take ``length // ALIGN`` and multiply it back, so Triton knows that every row starts
    on a multiple of ``ALIGN`` elements and that a tile's mask is constant over runs of ``ALIGN``, and
    it loads and stores up to 16 bytes per thread. Triton specializes an integer only on whether 16
    divides it, and the decoder's rows are not (1,176 or 3,528 samples per VoxCPM1.5 patch): with the
    length as a plain argument every bf16 access is a 2-byte one. :data:`ALIGN_ROWS` off gives 1.
    """
    return min(16, length & -length) if ALIGN_ROWS else 1


ALIGN_ROWS = True
"""Whether :func:`_align` tells the kernels their rows' alignment: a switch for measurements (the
same kernels with 2-byte bf16 accesses, as before it), not a setting."""


@triton.jit(do_not_specialize=["length_a"])
def _snake_kernel(
    x_ptr, alpha_ptr, y_ptr, channels, length_a, BLOCK: tl.constexpr, LIBDEVICE: tl.constexpr, ALIGN: tl.constexpr
):
    # One (batch, channel) row per program row: alpha is loaded once, no per-element index division.
    length = length_a * ALIGN  # see _align
    row = tl.program_id(0)
    t = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = t < length
    alpha = tl.load(alpha_ptr + row % channels).to(tl.float32)
    offs = row.to(tl.int64) * length + t
    x = tl.load(x_ptr + offs, mask=ok, other=0.0)
    tl.store(y_ptr + offs, _snake(x.to(tl.float32), alpha, LIBDEVICE).to(x.dtype), mask=ok)


def snake(x: Tensor, alpha: Tensor) -> Tensor:
    """Snake ``x + sin(alpha * x)^2 / (alpha + 1e-9)`` in one pass (the op-by-op form makes five).

    Args:
        x: ``[B, C, T]`` activations (made contiguous if they are not).
        alpha: ``[1, C, 1]`` per-channel parameter.
    """
    x = x.contiguous()
    y = torch.empty_like(x)
    bsz, channels, length = x.shape
    block = min(1024, triton.next_power_of_2(length))
    grid = (bsz * channels, triton.cdiv(length, block))
    align = _align(length)
    _snake_kernel[grid](x, alpha, y, channels, length // align, BLOCK=block, LIBDEVICE=_libdevice(), ALIGN=align)
    return y


def _check_context(name: str, context: Tensor, weight: Tensor, dilation: int) -> int:
    """The kernel size, once ``context`` is known to hold exactly the causal left context, contiguous."""
    ksize = weight.shape[-1]
    if context.shape[-1] != (ksize - 1) * dilation or context.stride(-1) != 1:
        raise ValueError(f"{name}: context must hold (k - 1) * dilation contiguous samples")
    return ksize


@triton.jit(do_not_specialize=["length_a", "ctx_len", "dilation", "stride_ctx_b"])
def _depthwise_conv_kernel(
    ctx_ptr,
    x_ptr,
    w_ptr,
    b_ptr,
    alpha_ptr,
    y_ptr,
    channels,
    length_a,
    ctx_len,
    dilation,
    stride_ctx_b,
    stride_ctx_c,
    KSIZE: tl.constexpr,
    BLOCK: tl.constexpr,
    SNAKE: tl.constexpr,
    LIBDEVICE: tl.constexpr,
    ALIGN: tl.constexpr,
):
    length = length_a * ALIGN  # see _align
    row = tl.program_id(0)
    b = row // channels
    c = row % channels
    t = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = t < length
    acc = tl.zeros([BLOCK], dtype=tl.float32) + tl.load(b_ptr + c).to(tl.float32)
    x_row = x_ptr + row.to(tl.int64) * length
    ctx_row = ctx_ptr + b.to(tl.int64) * stride_ctx_b + c.to(tl.int64) * stride_ctx_c
    for k in tl.static_range(KSIZE):
        # Tap k of output t reads sample t + k * dilation of [context | x]: context first, then x.
        src = t + k * dilation - ctx_len
        ptr = tl.where(src >= 0, x_row + src, ctx_row + ctx_len + src)
        w = tl.load(w_ptr + c * KSIZE + k).to(tl.float32)
        acc += w * tl.load(ptr, mask=ok, other=0.0).to(tl.float32)
    if SNAKE:  # the activation that follows the conv, applied before the store (one pass saved)
        acc = _snake(acc, tl.load(alpha_ptr + c).to(tl.float32), LIBDEVICE)
    tl.store(y_ptr + row.to(tl.int64) * length + t, acc.to(y_ptr.dtype.element_ty), mask=ok)


def depthwise_causal_conv(
    context: Tensor, x: Tensor, weight: Tensor, bias: Tensor, dilation: int, snake_alpha: Tensor | None = None
) -> Tensor:
    """Depthwise dilated conv over ``[context | x]`` without concatenating them (the streaming VAE's k=7 convs).

    Args:
        context: ``[B, C, (k - 1) * dilation]`` left context (any batch/channel strides, last dim contiguous).
        x: ``[B, C, T]`` new samples (made contiguous).
        weight: ``[C, 1, k]`` effective weight.
        bias: ``[C]``.
        dilation: Tap spacing.
        snake_alpha: ``[1, C, 1]``: apply the Snake activation with this alpha to the output.

    Returns:
        ``[B, C, T]``: the output for the new samples only.
    """
    x = x.contiguous()
    bsz, channels, length = x.shape
    ksize = _check_context("depthwise_causal_conv", context, weight, dilation)
    y = torch.empty_like(x)
    block = min(512, triton.next_power_of_2(length))
    align = _align(length)
    _depthwise_conv_kernel[(bsz * channels, triton.cdiv(length, block))](
        context, x, weight.contiguous(), bias, bias if snake_alpha is None else snake_alpha, y, channels,
        length // align, context.shape[-1], dilation, context.stride(0), context.stride(1), KSIZE=ksize,
        BLOCK=block, SNAKE=snake_alpha is not None, LIBDEVICE=_libdevice(), ALIGN=align,
        num_warps=max(1, min(4, block // 128)),
    )  # fmt: skip
    return y


@triton.jit(do_not_specialize=["channels", "length_a", "ctx_len", "dilation", "stride_ctx_b"])
def _mono_conv_kernel(
    ctx_ptr,
    x_ptr,
    w_ptr,
    b_ptr,
    y_ptr,
    channels,
    length_a,
    ctx_len,
    dilation,
    stride_ctx_b,
    stride_ctx_c,
    KSIZE: tl.constexpr,
    BLOCK_T: tl.constexpr,
    ALIGN: tl.constexpr,
):
    length = length_a * ALIGN  # see _align
    # One run of samples per program, channels summed in a serial loop: a [channels, samples] tile
    # reduced over channels ran 23x slower on an H200 (3.0 ms vs 0.13 ms at 128 x 32 x 7680).
    bat = tl.program_id(0)
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    ok = t < length
    acc = tl.zeros([BLOCK_T], dtype=tl.float32)
    for c in range(0, channels):
        x_row = x_ptr + (bat * channels + c).to(tl.int64) * length
        ctx_row = ctx_ptr + bat.to(tl.int64) * stride_ctx_b + c * stride_ctx_c
        for k in tl.static_range(KSIZE):
            src = t + k * dilation - ctx_len  # as in _depthwise_conv_kernel
            ptr = tl.where(src >= 0, x_row + src, ctx_row + ctx_len + src)
            w = tl.load(w_ptr + c * KSIZE + k).to(tl.float32)
            acc += w * tl.load(ptr, mask=ok, other=0.0).to(tl.float32)
    out = acc + tl.load(b_ptr).to(tl.float32)
    tl.store(y_ptr + bat.to(tl.int64) * length + t, out.to(y_ptr.dtype.element_ty), mask=ok)


def mono_causal_conv(
    context: Tensor, x: Tensor, weight: Tensor, bias: Tensor, dilation: int, out_dtype: torch.dtype | None = None
) -> Tensor:
    """A conv from C channels to one over ``[context | x]`` without concatenating them (the VAE's output conv).

    cuDNN runs this shape as a layout change plus an implicit GEMM with one output column; one
    pass over the input is all it needs.

    Args:
        context: ``[B, C, (k - 1) * dilation]`` left context (last dim contiguous).
        x: ``[B, C, T]`` new samples (made contiguous).
        weight: ``[1, C, k]`` effective weight.
        bias: ``[1]``.
        dilation: Tap spacing.
        out_dtype: Dtype of the output (default ``x``'s); the sum is fp32 either way.

    Returns:
        ``[B, 1, T]``: the output for the new samples only.
    """
    x = x.contiguous()
    bsz, channels, length = x.shape
    ksize = _check_context("mono_causal_conv", context, weight, dilation)
    y = x.new_empty(bsz, 1, length, dtype=out_dtype or x.dtype)
    block_t = min(1024, triton.next_power_of_2(length))
    align = _align(length)
    _mono_conv_kernel[(bsz, triton.cdiv(length, block_t))](
        context, x, weight.contiguous(), bias, y, channels, length // align, context.shape[-1], dilation,
        context.stride(0), context.stride(1), KSIZE=ksize, BLOCK_T=block_t, ALIGN=align, num_warps=4,
    )  # fmt: skip
    return y


@triton.jit(do_not_specialize=["length_a"])
def _bias_residual_kernel(
    y_ptr,
    b_ptr,
    x_ptr,
    out_ptr,
    alpha_ptr,
    snaked_ptr,
    channels,
    length_a,
    BLOCK: tl.constexpr,
    SNAKE: tl.constexpr,
    LIBDEVICE: tl.constexpr,
    ALIGN: tl.constexpr,
):
    length = length_a * ALIGN  # see _align
    row = tl.program_id(0)
    t = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = t < length
    offs = row.to(tl.int64) * length + t
    # Sums in fp32 whatever the storage dtype (bf16 decodes), rounded once at the stores.
    bias = tl.load(b_ptr + row % channels).to(tl.float32)
    y = tl.load(y_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    out = x + (y + bias)
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=ok)
    if SNAKE:  # the activation the next layer starts with, from the values in registers
        alpha = tl.load(alpha_ptr + row % channels).to(tl.float32)
        tl.store(snaked_ptr + offs, _snake(out, alpha, LIBDEVICE).to(snaked_ptr.dtype.element_ty), mask=ok)


def bias_residual_add(
    y: Tensor, bias: Tensor, x: Tensor, snake_alpha: Tensor | None = None
) -> tuple[Tensor, Tensor | None]:
    """``x + (y + bias)`` in one pass (a bias-free 1x1 conv's output, its bias, the residual); written into ``y``.

    Args:
        y: ``[B, C, T]`` contiguous, overwritten with the result.
        bias: ``[C]``.
        x: ``[B, C, T]`` residual (made contiguous).
        snake_alpha: ``[1, C, 1]``: also return the Snake of the result with this alpha.

    Returns:
        The result (``y``), and its Snake (None without ``snake_alpha``).
    """
    x = x.contiguous()
    bsz, channels, length = y.shape
    snaked = torch.empty_like(y) if snake_alpha is not None else None
    block = min(1024, triton.next_power_of_2(length))
    align = _align(length)
    _bias_residual_kernel[(bsz * channels, triton.cdiv(length, block))](
        y, bias, x, y, bias if snake_alpha is None else snake_alpha, y if snaked is None else snaked, channels,
        length // align, BLOCK=block, SNAKE=snaked is not None, LIBDEVICE=_libdevice(), ALIGN=align,
    )  # fmt: skip
    return y, snaked
