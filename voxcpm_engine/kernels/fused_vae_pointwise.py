"""The residual unit's 1x1 conv as one Triton GEMM with its bias, residual add and next Snake fused in.

The fused path of :mod:`voxcpm_engine.kernels.fused_vae` ends each residual unit with a cuBLAS GEMM
(reads ``h``, writes ``y``) and then the bias + residual kernel (reads ``y`` and ``x``, writes the
sum and the next layer's Snake of it). Here the GEMM's epilogue does the second kernel's work on
the accumulator in registers, so ``y`` is never written or read: a unit makes six tensor-sized
passes instead of eight. Unlike the one-kernel unit (:mod:`voxcpm_engine.kernels.fused_vae_unit`),
``h`` is still written by the depthwise kernel, so this kernel is a plain tiled GEMM: a tile of
output channels by a run of frames, summed over input channels a block at a time
(:func:`launch_config`).

Sums are fp32; ``y`` is not rounded before the bias and residual are added (one rounding fewer
than the unfused path). fp32 products take TF32 when the VAE's convs do.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from voxcpm_engine.kernels.fused_vae import _align, _libdevice, _snake

__all__ = ["launch_config", "pointwise_residual"]


@triton.jit(do_not_specialize=["length_a"])
def _pointwise_residual_kernel(
    w_ptr,
    h_ptr,
    b_ptr,
    x_ptr,
    out_ptr,
    alpha_ptr,
    snaked_ptr,
    length_a,
    C: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SNAKE: tl.constexpr,
    PRECISION: tl.constexpr,
    LIBDEVICE: tl.constexpr,  # compiled (not the interpreter)
    ALIGN: tl.constexpr,
):
    length = length_a * ALIGN  # fused_vae._align: rows aligned, so loads and stores of up to 16 bytes
    # Programs that share a run of frames are adjacent (output-channel tiles fastest), so the
    # second and later tiles find that run of h in L2. Offsets inside a batch row are int32 (the
    # wrapper checks C * length < 2**31); only the row's base is int64.
    tiles_m: tl.constexpr = (C + BLOCK_M - 1) // BLOCK_M
    pid = tl.program_id(0)
    m = (pid % tiles_m) * BLOCK_M + tl.arange(0, BLOCK_M)
    n = (pid // tiles_m) * BLOCK_N + tl.arange(0, BLOCK_N)
    row0 = tl.program_id(1).to(tl.int64) * C * length
    m_ok = m < C
    n_ok = n < length
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in tl.range(0, C, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < C
        a = tl.load(w_ptr + (m * C)[:, None] + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(h_ptr + row0 + (k * length)[:, None] + n[None, :], mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        if LIBDEVICE:
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
        else:  # the interpreter's bf16 tl.dot is wrong (CPU tests): the same operands, multiplied in fp32
            acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    offs = (m * length)[:, None] + n[None, :]
    keep = m_ok[:, None] & n_ok[None, :]
    residual = tl.load(x_ptr + row0 + offs, mask=keep, other=0.0).to(tl.float32)
    out = residual + (acc + tl.load(b_ptr + m, mask=m_ok, other=0.0).to(tl.float32)[:, None])
    tl.store(out_ptr + row0 + offs, out.to(out_ptr.dtype.element_ty), mask=keep)
    if SNAKE:  # the activation the next layer starts with, from the values in registers
        alpha = tl.load(alpha_ptr + m, mask=m_ok, other=1.0).to(tl.float32)[:, None]
        tl.store(snaked_ptr + row0 + offs, _snake(out, alpha, LIBDEVICE).to(snaked_ptr.dtype.element_ty), mask=keep)


def launch_config(channels: int) -> tuple[int, int, int, int, int]:
    """``(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages)`` for a unit of ``channels``.

    A tile of up to 64 output channels by 128 frames, input channels 32 at a time: ptxas compiles
    it for sm_90 in 78-102 registers without spilling, in bf16 and fp32 (``scripts/kernel_resources.py``;
    128 x 128 tiles spilled once the epilogue's Snake was in).
    """
    block_m = max(16, min(64, triton.next_power_of_2(channels)))
    block_k = max(16, min(32, triton.next_power_of_2(channels)))
    return block_m, 128, block_k, 8 if block_m >= 64 else 4, 3


def pointwise_residual(
    weight: Tensor,
    h: Tensor,
    bias: Tensor,
    x: Tensor,
    next_alpha: Tensor | None = None,
    *,
    tf32: bool = True,
    config: tuple[int, int, int, int, int] | None = None,
) -> tuple[Tensor, Tensor | None]:
    """``x + (weight @ h + bias)`` per batch row, and the Snake of it with ``next_alpha``.

    Args:
        weight: ``[C, C]`` effective 1x1 conv weight (out x in), in the activations' dtype.
        h: ``[B, C, T]`` the conv's input (made contiguous).
        bias: ``[C]``.
        x: ``[B, C, T]`` the residual (made contiguous).
        next_alpha: ``[1, C, 1]``: also return the Snake of the result with this alpha.
        tf32: fp32 products in TF32 (the precision ``conv_flags`` chose for the VAE's convs).
        config: :func:`launch_config`'s tuple, for benchmarks.

    Returns:
        The result ``[B, C, T]`` (the activations' dtype) and its Snake (None without ``next_alpha``).
    """
    h, x, weight = h.contiguous(), x.contiguous(), weight.contiguous()
    bsz, channels, length = h.shape
    if weight.shape != (channels, channels) or x.shape != h.shape:
        raise ValueError(f"pointwise_residual: weight {tuple(weight.shape)}, h {tuple(h.shape)}, x {tuple(x.shape)}")
    if channels * length >= 2**31:
        raise ValueError(f"pointwise_residual: {channels} x {length} samples per row overflow int32 offsets")
    out = torch.empty_like(x)
    snaked = torch.empty_like(x) if next_alpha is not None else None
    block_m, block_n, block_k, num_warps, num_stages = config or launch_config(channels)
    block_n = min(block_n, max(16, triton.next_power_of_2(length)))
    grid = (triton.cdiv(channels, block_m) * triton.cdiv(length, block_n), bsz)
    precision = "tf32" if tf32 and weight.dtype == torch.float32 else "ieee"
    align = _align(length)
    _pointwise_residual_kernel[grid](
        weight, h, bias, x, out, bias if next_alpha is None else next_alpha, out if snaked is None else snaked,
        length // align, C=channels, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        SNAKE=snaked is not None, PRECISION=precision, LIBDEVICE=_libdevice(), ALIGN=align,
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    return out, snaked
