"""Fused Triton kernels for the AudioVAE's streaming transposed convs (the CUDA fast path).

A streamed transposed conv (kernel ``2 * stride``) runs as one GEMM over frames laid out as rows:
:func:`snake_rows` writes ``[context | snake(x)]`` in that layout in one pass, and
:func:`overlap_add` adds the GEMM's two kernel halves of neighbouring frames and the bias (and the
next layer's Snake). Same conventions as :mod:`voxcpm_engine.kernels.fused_vae`: fp32 or bf16
activations, fp32 sums, one rounding at each store, rows' alignment told (``fused_vae._align``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from voxcpm_engine.kernels.fused_vae import _align, _libdevice, _snake

__all__ = ["overlap_add", "snake_rows"]


@triton.jit(do_not_specialize=["frames_a"])
def _overlap_add_kernel(
    y_ptr,
    b_ptr,
    out_ptr,
    alpha_ptr,
    snaked_ptr,
    out_ch,
    frames_a,
    STRIDE: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SNAKE: tl.constexpr,
    LIBDEVICE: tl.constexpr,
    ALIGN: tl.constexpr,
):
    # y is [B, frames + 1, 2, STRIDE, out_ch] (channels fastest: loads coalesce along c); out is
    # [B, out_ch, frames * STRIDE] (samples fastest: stores coalesce along n); Triton converts
    # the tile's layout in between.
    frames = frames_a * ALIGN  # see _align: output rows of frames * STRIDE samples
    bat = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)[:, None]
    n = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]  # output sample
    length = frames * STRIDE
    ok = (c < out_ch) & (n < length)
    t = n // STRIDE
    j = n % STRIDE
    frame = 2 * STRIDE * out_ch
    y_b = y_ptr + bat.to(tl.int64) * (frames + 1) * frame
    # Sample j of output frame t: tap j of input frame t + 1 plus tap STRIDE + j of frame t.
    # Sums in fp32 whatever the storage dtype (bf16 decodes), rounded once at the stores.
    cur = tl.load(y_b + (t + 1) * frame + j * out_ch + c, mask=ok, other=0.0).to(tl.float32)
    prev = tl.load(y_b + t * frame + (STRIDE + j) * out_ch + c, mask=ok, other=0.0).to(tl.float32)
    bias = tl.load(b_ptr + c, mask=c < out_ch, other=0.0).to(tl.float32)
    val = (cur + prev) + bias
    offs = bat.to(tl.int64) * out_ch * length + c.to(tl.int64) * length + n
    tl.store(out_ptr + offs, val.to(out_ptr.dtype.element_ty), mask=ok)
    if SNAKE:  # the activation the next layer starts with, from the values in registers
        alpha = tl.load(alpha_ptr + c, mask=c < out_ch, other=1.0).to(tl.float32)
        tl.store(snaked_ptr + offs, _snake(val, alpha, LIBDEVICE).to(snaked_ptr.dtype.element_ty), mask=ok)


def overlap_add(
    y: Tensor, bias: Tensor, stride: int, snake_alpha: Tensor | None = None
) -> tuple[Tensor, Tensor | None]:
    """The overlap-add of a streaming transposed conv (kernel ``2 * stride``) computed as a GEMM.

    Args:
        y: ``[B, F + 1, 2, stride, C]``: every input frame (the context frame first) times both
            kernel halves, contiguous.
        bias: ``[C]``.
        stride: Upsampling factor.
        snake_alpha: ``[1, C, 1]``: also return the Snake of the output with this alpha.

    Returns:
        ``[B, C, F * stride]``: output sample ``t * stride + j`` is ``y[t + 1, 0, j] + y[t, 1, j] + bias``;
        and its Snake (None without ``snake_alpha``).
    """
    bsz, frames1, _, _, channels = y.shape
    frames = frames1 - 1
    out = torch.empty(bsz, channels, frames * stride, dtype=y.dtype, device=y.device)
    snaked = torch.empty_like(out) if snake_alpha is not None else None
    block_c, block_n = 32, 128
    grid = (bsz, triton.cdiv(channels, block_c), triton.cdiv(frames * stride, block_n))
    align = _align(frames)
    _overlap_add_kernel[grid](
        y.contiguous(), bias, out, bias if snake_alpha is None else snake_alpha, out if snaked is None else snaked,
        channels, frames // align, STRIDE=stride, BLOCK_C=block_c, BLOCK_N=block_n,
        SNAKE=snaked is not None, LIBDEVICE=_libdevice(), ALIGN=align,
    )  # fmt: skip
    return out, snaked


@triton.jit(do_not_specialize=["length_a"])
def _snake_rows_kernel(
    x_ptr,
    alpha_ptr,
    rows_ptr,
    channels,
    length_a,
    BLOCK_C: tl.constexpr,
    BLOCK_T: tl.constexpr,
    LIBDEVICE: tl.constexpr,
    ALIGN: tl.constexpr,
):
    length = length_a * ALIGN  # see _align
    # x is [B, C, T] (time fastest: loads coalesce along t); rows is [B, T + 1, C] (channels
    # fastest: stores coalesce along c), row 0 holding the context frame.
    bat = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)[:, None]
    t = tl.program_id(2) * BLOCK_T + tl.arange(0, BLOCK_T)[None, :]
    ok = (c < channels) & (t < length)
    x = tl.load(x_ptr + (bat * channels + c).to(tl.int64) * length + t, mask=ok, other=0.0)
    alpha = tl.load(alpha_ptr + c, mask=c < channels, other=1.0).to(tl.float32)
    dst = rows_ptr + (bat.to(tl.int64) * (length + 1) + t + 1) * channels + c
    tl.store(dst, _snake(x.to(tl.float32), alpha, LIBDEVICE).to(x.dtype), mask=ok)


def snake_rows(x: Tensor, alpha: Tensor, context: Tensor) -> Tensor:
    """``[context | snake(x)]`` laid out as GEMM rows (one per frame), in one pass over ``x``.

    Args:
        x: ``[B, C, T]`` (made contiguous).
        alpha: ``[1, C, 1]`` Snake parameter.
        context: ``[B, C, 1]`` the frame before ``x``, already activated.

    Returns:
        ``[B, T + 1, C]``.
    """
    x = x.contiguous()
    bsz, channels, length = x.shape
    rows = x.new_empty(bsz, length + 1, channels)
    rows[:, :1].copy_(context.transpose(1, 2))
    block_c, block_t = 32, 64
    grid = (bsz, triton.cdiv(channels, block_c), triton.cdiv(length, block_t))
    align = _align(length)
    _snake_rows_kernel[grid](
        x, alpha, rows, channels, length // align, BLOCK_C=block_c, BLOCK_T=block_t,
        LIBDEVICE=_libdevice(), ALIGN=align,
    )  # fmt: skip
    return rows
