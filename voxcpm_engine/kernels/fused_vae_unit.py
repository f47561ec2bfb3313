"""One Triton kernel for a whole streaming VAE residual unit (``EngineConfig.vae_units="one-kernel"``).

A residual unit is ``x + conv1x1(snake(dwconv7(snake(x))))``. The fused path of
:mod:`voxcpm_engine.kernels.fused_vae` runs it as three passes over the activations: the depthwise
kernel (reads ``snake(x)``, writes ``h``), a cuBLAS GEMM (reads ``h``, writes ``y``) and the bias +
residual kernel (reads ``y`` and ``x``, writes the sum and the next layer's Snake of it): eight
tensor-sized reads and writes. Here one program computes every output channel of a run of frames:
it builds ``h`` a block of channels at a time in registers (the depthwise taps over context and
input in place, then the Snake), multiplies it into the output with ``tl.dot``, and adds bias and
residual before the one store (and the next Snake's). Four passes, none of them of ``h`` or ``y``.

Only for units of at most :data:`MAX_CHANNELS` channels: the accumulator holds every output
channel of the tile. These are the decoder's last, widest-in-time stages, where nearly all of the
VAE's bytes are. Sums are fp32; ``h`` is rounded to the weights' dtype before the product, as the
unfused path stores it; ``y`` is not rounded before the bias and residual are added (one rounding
fewer than the unfused path).

Measured on an H100 (docs/PERFORMANCE.md): slower than the three passes at every width and dtype,
1.3-2.4x per unit at 256 streams with these configs (1.2-1.9x with the best of four). It is bound
by its arithmetic (seven taps, two Snakes and the product per element) and by the registers that
a tile of every output channel needs (one 8-warp block per SM), not by memory. Hence
``"one-kernel"`` is not the default. Its launch configs are the ones that compile for sm_90
without spills (``scripts/kernel_resources.py``; a first build that spilled ran 2.6x slower).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from voxcpm_engine.kernels.fused_vae import _check_context, _libdevice, _snake

__all__ = ["MAX_CHANNELS", "fits", "launch_config", "residual_unit"]

MAX_CHANNELS = 256
"""Widest unit the kernel takes (its fp32 accumulator is ``channels x BLOCK_T``)."""


def fits(channels: int) -> bool:
    """Whether a unit of ``channels`` channels can run as one kernel (a power of two, 16 to :data:`MAX_CHANNELS`)."""
    return 16 <= channels <= MAX_CHANNELS and channels & (channels - 1) == 0


@triton.jit(do_not_specialize=["length", "ctx_len", "dilation", "stride_ctx_b"])
def _residual_unit_kernel(
    ctx_ptr,
    xs_ptr,
    x_ptr,
    dw_w_ptr,
    dw_b_ptr,
    alpha_ptr,
    pw_w_ptr,
    pw_b_ptr,
    next_alpha_ptr,
    out_ptr,
    snaked_ptr,
    length,
    ctx_len,
    dilation,
    stride_ctx_b,
    stride_ctx_c,
    C: tl.constexpr,
    KSIZE: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_T: tl.constexpr,
    SNAKE_NEXT: tl.constexpr,
    PRECISION: tl.constexpr,
    LIBDEVICE: tl.constexpr,  # compiled (not the interpreter)
):
    # Registers decide this kernel's speed: offsets inside a batch row are int32 (the wrapper checks
    # C * length < 2**31) and only the per-row base is int64, and the taps read [x] and [context] with
    # two masked loads instead of a per-element pointer select (the context only in a row's first tiles).
    b = tl.program_id(0)
    t0 = tl.program_id(1) * BLOCK_T
    t = t0 + tl.arange(0, BLOCK_T)
    ok = t < length
    o = tl.arange(0, C)
    row0 = b.to(tl.int64) * C * length
    xs_b = xs_ptr + row0
    ctx_b = ctx_ptr + b.to(tl.int64) * stride_ctx_b
    acc = tl.zeros([C, BLOCK_T], dtype=tl.float32)
    for c0 in tl.range(0, C, BLOCK_C, num_stages=1):
        c = c0 + tl.arange(0, BLOCK_C)
        h = tl.zeros([BLOCK_C, BLOCK_T], dtype=tl.float32) + tl.load(dw_b_ptr + c).to(tl.float32)[:, None]
        x_rows = xs_b + (c * length)[:, None]
        for k in tl.static_range(KSIZE):
            # Tap k of frame t reads sample t + k * dilation of [context | x] (as the depthwise kernel).
            src = t + (k * dilation - ctx_len)
            tap = tl.load(x_rows + src[None, :], mask=(ok & (src >= 0))[None, :], other=0.0).to(tl.float32)
            if t0 + k * dilation < ctx_len:
                ctx_rows = ctx_b + (c * stride_ctx_c)[:, None] + ctx_len
                in_ctx = (ok & (src < 0))[None, :]
                tap += tl.load(ctx_rows + src[None, :], mask=in_ctx, other=0.0).to(tl.float32)
            h += tl.load(dw_w_ptr + c * KSIZE + k).to(tl.float32)[:, None] * tap
        h = _snake(h, tl.load(alpha_ptr + c).to(tl.float32)[:, None], LIBDEVICE)
        w = tl.load(pw_w_ptr + o[:, None] * C + c[None, :])  # [C_out, BLOCK_C] of the 1x1 conv
        h = h.to(w.dtype)  # as the unfused path stores it
        if LIBDEVICE:
            acc = tl.dot(w, h, acc, input_precision=PRECISION)
        else:  # the interpreter's bf16 tl.dot is wrong (CPU tests): the same operands, multiplied in fp32
            acc = tl.dot(w.to(tl.float32), h.to(tl.float32), acc, input_precision="ieee")
    offs = (o * length)[:, None] + t[None, :]
    keep = ok[None, :]
    residual = tl.load(x_ptr + row0 + offs, mask=keep, other=0.0).to(tl.float32)
    out = residual + (acc + tl.load(pw_b_ptr + o).to(tl.float32)[:, None])
    tl.store(out_ptr + row0 + offs, out.to(out_ptr.dtype.element_ty), mask=keep)
    if SNAKE_NEXT:  # the activation the next layer starts with, from the values in registers
        alpha = tl.load(next_alpha_ptr + o).to(tl.float32)[:, None]
        tl.store(snaked_ptr + row0 + offs, _snake(out, alpha, LIBDEVICE).to(snaked_ptr.dtype.element_ty), mask=keep)


def launch_config(channels: int) -> tuple[int, int, int]:
    """``(BLOCK_T, BLOCK_C, num_warps)`` for a unit of ``channels``: the accumulator at 32 fp32 values
    per thread and ``h`` built 16 channels at a time, which ptxas compiles for sm_90 without spills."""
    block_t = {16: 128, 32: 128, 64: 128, 128: 64, 256: 32}[channels]
    return block_t, 16, 8


def residual_unit(
    context: Tensor,
    x_snaked: Tensor,
    x: Tensor,
    dw_weight: Tensor,
    dw_bias: Tensor,
    alpha: Tensor,
    pw_weight: Tensor,
    pw_bias: Tensor,
    dilation: int,
    next_alpha: Tensor | None = None,
    *,
    tf32: bool = True,
    config: tuple[int, int, int] | None = None,
) -> tuple[Tensor, Tensor | None]:
    """``x + pw(snake(dw([context | x_snaked])))`` for new frames, and the Snake of it with ``next_alpha``.

    Args:
        context: ``[B, C, 6 * dilation]`` the depthwise conv's left context (last dim contiguous).
        x_snaked: ``[B, C, T]`` the unit's input after its first Snake (the depthwise conv's input).
        x: ``[B, C, T]`` the unit's input (the residual).
        dw_weight: ``[C, 1, k]`` effective depthwise weight; ``dw_bias``: ``[C]``.
        alpha: ``[1, C, 1]`` alpha of the Snake between the two convs.
        pw_weight: ``[C, C]`` effective 1x1 weight (out x in), in the activations' dtype; ``pw_bias``: ``[C]``.
        dilation: The depthwise conv's tap spacing.
        next_alpha: ``[1, C, 1]``: also return the Snake of the result with this alpha.
        tf32: fp32 products in TF32 (the precision ``conv_flags`` chose for the VAE's convs).
        config: ``(BLOCK_T, BLOCK_C, num_warps)`` instead of :func:`launch_config`'s (benchmarks).

    Returns:
        The unit's output ``[B, C, T]`` (the activations' dtype) and its Snake (None without ``next_alpha``).
    """
    x_snaked, x = x_snaked.contiguous(), x.contiguous()
    bsz, channels, length = x.shape
    if not fits(channels):
        raise ValueError(
            f"residual_unit: {channels} channels; the kernel takes powers of two from 16 to {MAX_CHANNELS}"
        )
    if channels * length >= 2**31:
        raise ValueError(f"residual_unit: {channels} x {length} samples per row overflow the kernel's int32 offsets")
    ksize = _check_context("residual_unit", context, dw_weight, dilation)
    out = torch.empty_like(x)
    snaked = torch.empty_like(x) if next_alpha is not None else None
    block_t, block_c, num_warps = config or launch_config(channels)
    block_t = min(block_t, max(16, triton.next_power_of_2(length)))
    precision = "tf32" if tf32 and pw_weight.dtype == torch.float32 else "ieee"
    _residual_unit_kernel[(bsz, triton.cdiv(length, block_t))](
        context, x_snaked, x, dw_weight.contiguous(), dw_bias, alpha, pw_weight.contiguous(), pw_bias,
        alpha if next_alpha is None else next_alpha, out, out if snaked is None else snaked,
        length, context.shape[-1], dilation, context.stride(0), context.stride(1),
        C=channels, KSIZE=ksize, BLOCK_C=min(block_c, channels), BLOCK_T=block_t, SNAKE_NEXT=next_alpha is not None,
        PRECISION=precision, LIBDEVICE=_libdevice(), num_warps=num_warps,
    )  # fmt: skip
    return out, snaked
