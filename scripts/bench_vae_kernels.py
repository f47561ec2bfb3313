"""The streamed VAE's kernels on a GPU: one residual unit and one whole decode step, variant by variant.

Usage (GPU machine, repo root): python3 scripts/bench_vae_kernels.py [--preset voxcpm1.5]
    [--batches 128 256] [--json OUT.json]

Four tables, each a median of CUDA-event timings after a warm-up:
1. One residual unit at each of the release's widths (``B x C x T`` as one decode step of ``B``
   streams makes it): the three-pass fused path (depthwise kernel, cuBLAS GEMM, bias + residual
   kernel) against the depthwise kernel plus the GEMM with its epilogue (several launch configs)
   and the one-kernel unit (16-256 channels), bf16 and fp32 (TF32).
2. The Snake's sin: libdevice's against the reduced ``sin.approx`` (``fused_vae.SIN_MODE``), its
   largest error against torch's float64 sin over the range the decoder's activations reach.
3. A whole streamed decode step (``AudioVAE.decode_stream`` of one 4-frame patch per stream):
   units passes/gemm/one-kernel, sin 1/2, rows' alignment told or not (``fused_vae.ALIGN_ROWS``),
   bf16/fp32, with the engine's TF32 convs.
4. The kernels of a bf16 decode step at the largest batch, by GPU time (``torch.profiler``), units
   passes and gemm.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from voxcpm_engine.config.model_config import ModelConfig
from voxcpm_engine.config.presets import preset_config
from voxcpm_engine.kernels import fused_vae, fused_vae_pointwise, fused_vae_unit
from voxcpm_engine.model.audio_vae import AudioVAE, conv_flags
from voxcpm_engine.model.vae_layers import DecoderBlock, ResidualUnit
from voxcpm_engine.tools.synthetic import normalize_vae_, random_state_dict

GEMM_CONFIGS = [(128, 64, 32, 8, 3), (64, 64, 64, 4, 3), (64, 64, 32, 4, 4), (128, 128, 32, 8, 3), (64, 256, 32, 8, 3)]
"""Launch configs of the GEMM with its epilogue tried beside ``fused_vae_pointwise.launch_config``'s."""

DECODE_VARIANTS = [
    ("passes", 1, False),
    ("passes", 1, True),
    ("gemm", 1, False),
    ("gemm", 1, True),
    ("gemm", 2, True),
    ("passes", 2, True),
    ("one-kernel", 1, True),
]
"""Table 3's rows: ``(units, fused_vae.SIN_MODE, fused_vae.ALIGN_ROWS)``."""

DEVICE = "cuda"  # --device cpu: a smoke run of the script itself under TRITON_INTERPRET=1


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def median_ms(fn: Callable[[], object], iters: int = 20) -> float:
    """Median wall time of ``iters`` synchronized calls after three untimed ones."""
    for _ in range(3 if DEVICE == "cuda" else 0):
        fn()
    times = []
    for _ in range(iters if DEVICE == "cuda" else 1):
        _sync()
        start = time.perf_counter()
        fn()
        _sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def release_vae(preset: str) -> AudioVAE:
    cfg = ModelConfig.from_dict(preset_config(preset)).audio_vae
    with torch.device("meta" if cfg.version == 1 else "cpu"):
        vae = AudioVAE(cfg)
    vae = vae.to_empty(device="cpu").eval() if cfg.version == 1 else vae.eval()
    vae.load_state_dict(random_state_dict(vae, torch.float32, 1))
    normalize_vae_(vae, 2)
    return vae.to(DEVICE)


def unit_table(vae: AudioVAE, batches: list[int]) -> list[dict]:
    """Table 1: each distinct (width, length) unit of a decode step; dilation 9 (the widest context)."""
    rows = []
    length = 4  # one patch of latent frames per stream and step, times each block's upsampling
    for block in [m for m in vae.decoder.model if isinstance(m, DecoderBlock)]:
        length *= block.block[1].stride
        unit = [m for m in block.block if isinstance(m, ResidualUnit)][-1]
        channels = unit.block[1].in_channels
        conv, snake_out, pointwise = unit.block[1], unit.block[2], unit.block[3]
        for dtype in (torch.bfloat16, torch.float32):
            vae.set_decode_dtype(dtype)
            for bsz in batches:
                x = torch.randn(bsz, channels, length, device=DEVICE, dtype=dtype)
                xs = torch.randn_like(x)
                context = torch.randn(bsz, channels, conv.context, device=DEVICE, dtype=dtype)

                def depthwise(xs=xs, context=context, conv=conv, snake_out=snake_out):
                    return fused_vae.depthwise_causal_conv(
                        context, xs, conv.weight(), conv.bias, conv.dilation, snake_out.alpha
                    )

                h = depthwise()

                def three_pass(x=x, pointwise=pointwise, snake_out=snake_out):
                    return pointwise.pointwise_residual(depthwise(), x, snake_out.alpha)

                def gemm(config, x=x, h=h, pw=pointwise, snake_out=snake_out):
                    return fused_vae_pointwise.pointwise_residual(
                        pw.weight()[:, :, 0], h, pw.bias, x, snake_out.alpha, tf32=True, config=config
                    )

                def one_kernel(x=x, xs=xs, context=context, conv=conv, snake_out=snake_out, pw=pointwise):
                    return fused_vae_unit.residual_unit(
                        context, xs, x, conv.weight(), conv.bias, snake_out.alpha, pw.weight()[:, :, 0], pw.bias,
                        conv.dilation, snake_out.alpha, tf32=True,
                    )  # fmt: skip

                row = {"channels": channels, "length": length, "batch": bsz, "dtype": str(dtype).split(".")[-1]}
                with conv_flags(True):
                    fused_vae.ALIGN_ROWS = False
                    row["three_pass_unaligned_ms"] = median_ms(three_pass)
                    fused_vae.ALIGN_ROWS = True
                    row["three_pass_ms"] = median_ms(three_pass)
                    row["depthwise_ms"] = median_ms(depthwise)
                    row["cublas_gemm_plus_add_ms"] = median_ms(
                        lambda h=h, x=x, pw=pointwise, a=snake_out.alpha: pw.pointwise_residual(h, x, a)
                    )
                    default = fused_vae_pointwise.launch_config(channels)
                    configs = {default, *GEMM_CONFIGS} if DEVICE == "cuda" else {default}
                    row["gemm_epilogue_ms"] = {str(c): median_ms(lambda c=c: gemm(c)) for c in sorted(configs)}
                    row["gemm_default_config"] = str(default)
                    if fused_vae_unit.fits(channels):
                        row["one_kernel_ms"] = median_ms(one_kernel)
                best = min(row["gemm_epilogue_ms"].values())
                one = row.get("one_kernel_ms", float("nan"))
                row["tensor_MiB"] = round(x.numel() * x.element_size() / 2**20, 1)
                print(
                    f"unit C={channels:4d} T={length:5d} B={bsz:3d} {row['dtype']:8s}"
                    f" 3-pass {row['three_pass_ms']:7.3f} ms (unaligned {row['three_pass_unaligned_ms']:7.3f};"
                    f" depthwise {row['depthwise_ms']:6.3f},"
                    f" cuBLAS + add {row['cublas_gemm_plus_add_ms']:6.3f})"
                    f" | depthwise + GEMM epilogue {row['depthwise_ms'] + row['gemm_epilogue_ms'][str(default)]:7.3f}"
                    f" (best {row['depthwise_ms'] + best:7.3f}) | one kernel {one:7.3f}"
                    f" | GEMM configs {row['gemm_epilogue_ms']}"
                )
                rows.append(row)
    vae.set_decode_dtype(torch.float32)
    return rows


def sin_table() -> dict:
    """Table 2: the reduced sin.approx Snake against the float64 Snake, and both sins' speed."""
    out = {}
    n = 1 << (24 if DEVICE == "cuda" else 12)
    x = torch.linspace(-200.0, 200.0, n, device=DEVICE)
    alpha = torch.full((1, 1, 1), 1.7, device=DEVICE)
    want = x.double() + (1.0 / (1.7 + 1e-9)) * torch.sin(1.7 * x.double()) ** 2
    big = torch.randn(256, 64, 7056, device=DEVICE) if DEVICE == "cuda" else torch.randn(2, 4, 64)
    alpha64 = torch.rand(1, big.shape[1], 1, device=DEVICE) + 0.5
    for mode in (1, 2):
        fused_vae.SIN_MODE = mode
        got = fused_vae.snake(x.view(1, 1, -1), alpha).view(-1)
        err = (got.double() - want).abs().max().item()
        ms = median_ms(lambda: fused_vae.snake(big, alpha64))
        out[f"sin{mode}"] = {"max_abs_error": err, "snake_ms_256x64x7056_fp32": ms}
        print(f"snake sin mode {mode}: max |error| {err:.3e} over |x| <= 200 (alpha 1.7); 115.6M fp32: {ms:.3f} ms")
    fused_vae.SIN_MODE = 1
    return out


def decode_table(vae: AudioVAE, batches: list[int]) -> list[dict]:
    """Table 3: whole streamed decode steps."""
    rows = []
    vae.tf32_convs = True
    for dtype in (torch.bfloat16, torch.float32):
        vae.set_decode_dtype(dtype)
        for bsz in batches:
            z = torch.randn(bsz, vae.latent_dim, 4, device=DEVICE)
            for units, mode, align in DECODE_VARIANTS:
                vae.use_fused_kernels(units=units)
                fused_vae.SIN_MODE, fused_vae.ALIGN_ROWS = mode, align
                state = vae.new_stream_state(bsz, DEVICE)
                with conv_flags(True, benchmark=True):
                    ms = median_ms(lambda state=state, z=z: vae.decode_stream(z, state), iters=10)
                row = {"dtype": str(dtype).split(".")[-1], "batch": bsz, "units": units, "sin": mode, "aligned": align}
                row["ms"] = ms
                print(
                    f"decode step {row['dtype']:8s} B={bsz:3d} units={units:10s} sin={mode}"
                    f" rows {'aligned  ' if align else 'unaligned'}: {ms:7.2f} ms"
                )
                rows.append(row)
    fused_vae.SIN_MODE, fused_vae.ALIGN_ROWS = 1, True
    vae.use_fused_kernels()
    vae.set_decode_dtype(torch.float32)
    return rows


def profile_table(vae: AudioVAE, batch: int, units: str) -> list[dict]:
    """Table 4: the kernels of five bf16 decode steps (libdevice sin) under torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    vae.tf32_convs = True
    vae.use_fused_kernels(units=units)
    vae.set_decode_dtype(torch.bfloat16)
    z = torch.randn(batch, vae.latent_dim, 4, device=DEVICE)
    state = vae.new_stream_state(batch, DEVICE)
    with conv_flags(True, benchmark=True):
        median_ms(lambda: vae.decode_stream(z, state), iters=3)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE == "cuda" else [])
        with profile(activities=activities) as prof:
            for _ in range(5):
                vae.decode_stream(z, state)
            _sync()
    rows = []
    for event in prof.key_averages():
        device_us = getattr(event, "self_device_time_total", 0) or getattr(event, "self_cuda_time_total", 0)
        if device_us > 0 and str(getattr(event, "device_type", "")).endswith("CUDA"):
            rows.append({"kernel": event.key[:90], "calls": event.count // 5, "ms_per_step": device_us / 5e3})
    if not rows and DEVICE == "cuda":  # this torch's averages name devices otherwise: its own table
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=30))
    rows.sort(key=lambda r: -r["ms_per_step"])
    total = sum(r["ms_per_step"] for r in rows)
    print(f"kernels of one bf16 decode step, B={batch}, units {units}: {total:.2f} ms of GPU time")
    for r in rows[:25]:
        print(f"  {r['ms_per_step']:7.3f} ms  {r['calls']:3d} calls  {r['kernel']}")
    vae.set_decode_dtype(torch.float32)
    vae.use_fused_kernels()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="voxcpm1.5")
    parser.add_argument("--batches", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--skip", nargs="*", default=[], choices=["units", "sin", "decode", "profile"])
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    torch.backends.cuda.matmul.allow_tf32 = False
    vae = release_vae(args.preset)
    vae.use_fused_kernels()
    result = {"preset": args.preset, "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"}
    if "sin" not in args.skip:
        result["sin"] = sin_table()
    if "units" not in args.skip:
        result["units"] = unit_table(vae, args.batches)
    if "decode" not in args.skip:
        result["decode"] = decode_table(vae, args.batches)
    if "profile" not in args.skip:
        result["profile"] = {u: profile_table(vae, args.batches[-1], u) for u in ("passes", "gemm")}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
