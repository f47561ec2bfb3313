"""Fused Triton kernels for the AudioVAE's streaming decode (the CUDA fast path).

At large batches the fp32 VAE decode is the biggest part of an engine step, and memory-bound:
op by op, each of its ~35 Snake activations makes five full-tensor passes, and each depthwise
k=7 conv first concatenates its streaming context to the input and then runs torch's generic
depthwise kernel. These kernels do the Snake in one pass and the depthwise conv over context and
input in place. Switched on by :meth:`engine.model.audio_vae.AudioVAE.use_fused_kernels`; CUDA, or
the CPU under ``TRITON_INTERPRET=1`` (tests).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.language.extra import libdevice


@triton.jit(do_not_specialize=["n", "channels", "length"])
def _snake_kernel(x_ptr, alpha_ptr, y_ptr, n, channels, length, BLOCK: tl.constexpr, LIBDEVICE: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    alpha = tl.load(alpha_ptr + (offs // length) % channels, mask=ok, other=1.0).to(tl.float32)
    x = tl.load(x_ptr + offs, mask=ok, other=0.0)
    xf = x.to(tl.float32)
    if LIBDEVICE:
        s = libdevice.sin(alpha * xf)  # accurate at any argument; tl.sin may be the approximate PTX one
    else:
        s = tl.sin(alpha * xf)  # the interpreter (numpy) has no libdevice
    tl.store(y_ptr + offs, (xf + (1.0 / (alpha + 1e-9)) * (s * s)).to(x.dtype), mask=ok)


def snake(x: Tensor, alpha: Tensor) -> Tensor:
    """Snake ``x + sin(alpha * x)^2 / (alpha + 1e-9)`` in one pass (the op-by-op form makes five).

    Args:
        x: ``[B, C, T]`` activations (made contiguous if they are not).
        alpha: ``[1, C, 1]`` per-channel parameter.
    """
    x = x.contiguous()
    y = torch.empty_like(x)
    n = x.numel()
    block = 1024
    libdevice_ok = os.environ.get("TRITON_INTERPRET") != "1"
    _snake_kernel[(triton.cdiv(n, block),)](x, alpha, y, n, x.shape[1], x.shape[2], BLOCK=block, LIBDEVICE=libdevice_ok)
    return y


@triton.jit(do_not_specialize=["length", "ctx_len", "dilation", "stride_ctx_b"])
def _depthwise_conv_kernel(
    ctx_ptr,
    x_ptr,
    w_ptr,
    b_ptr,
    y_ptr,
    channels,
    length,
    ctx_len,
    dilation,
    stride_ctx_b,
    stride_ctx_c,
    KSIZE: tl.constexpr,
    BLOCK: tl.constexpr,
):
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
        from_x = tl.load(x_row + src, mask=ok & (src >= 0), other=0.0)
        from_ctx = tl.load(ctx_row + ctx_len + src, mask=ok & (src < 0), other=0.0)
        w = tl.load(w_ptr + c * KSIZE + k).to(tl.float32)
        acc += w * tl.where(src >= 0, from_x, from_ctx).to(tl.float32)
    tl.store(y_ptr + row.to(tl.int64) * length + t, acc.to(y_ptr.dtype.element_ty), mask=ok)


def depthwise_causal_conv(context: Tensor, x: Tensor, weight: Tensor, bias: Tensor, dilation: int) -> Tensor:
    """Depthwise dilated conv over ``[context | x]`` without concatenating them (the streaming VAE's k=7 convs).

    Args:
        context: ``[B, C, (k - 1) * dilation]`` left context (any batch/channel strides, last dim contiguous).
        x: ``[B, C, T]`` new samples (made contiguous).
        weight: ``[C, 1, k]`` effective weight.
        bias: ``[C]``.
        dilation: Tap spacing.

    Returns:
        ``[B, C, T]``: the output for the new samples only.
    """
    x = x.contiguous()
    bsz, channels, length = x.shape
    ksize = weight.shape[-1]
    if context.shape[-1] != (ksize - 1) * dilation or context.stride(-1) != 1:
        raise ValueError("depthwise_causal_conv: context must hold (k - 1) * dilation contiguous samples")
    y = torch.empty_like(x)
    block = min(512, triton.next_power_of_2(length))
    _depthwise_conv_kernel[(bsz * channels, triton.cdiv(length, block))](
        context, x, weight.contiguous(), bias, y, channels, length, context.shape[-1], dilation,
        context.stride(0), context.stride(1), KSIZE=ksize, BLOCK=block,
    )  # fmt: skip
    return y
