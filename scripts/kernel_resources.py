"""Registers and spills of the streamed VAE's Triton kernels, compiled for a GPU on a machine without one.

Usage (any machine with Triton, not under TRITON_INTERPRET): python3 scripts/kernel_resources.py [--arch 90] [--json]

Each kernel is compiled at the launch configs its wrapper uses (``fused_vae_unit.launch_config`` for
the one-kernel unit), for bf16 and fp32 activations and both Snake sins, and ``cuobjdump -res-usage``
of the cubin gives its registers per thread, stack (spills) and local memory. A kernel that spills
is slow on the GPU: the first build of the one-kernel unit spilled 0.4-5 KB per thread and ran
2.6x slower than the three passes it replaces. Triton's version decides the numbers; the device's may
differ by some registers, not by whether a 255-register kernel spills.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("kernel_resources.py compiles kernels: run it without TRITON_INTERPRET=1")

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from voxcpm_engine.kernels import fused_vae, fused_vae_pointwise, fused_vae_unit, fused_vae_upsample

_USAGE = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")
_GLOBAL_ACCESS = re.compile(r"(?:ld|st)\.global(?:\.\w+)*?(?:\.v(\d))?\.b(\d+)")
ALIGN = 8
"""The ``ALIGN`` the row kernels are compiled with here (``fused_vae._align`` of 1,176 and 3,528 samples)."""


def widest_access(ptx: str) -> int:
    """Bytes of the widest global load or store in ``ptx`` (16: ``ld.global.v4.b32``)."""
    widths = [int(v or 1) * int(b) // 8 for v, b in _GLOBAL_ACCESS.findall(ptx)]
    return max(widths, default=0)


def resources(kernel, pointers: list[str], scalars: list[str], dtype: str, constexprs: dict, num_warps: int, arch: int):
    """``{"reg", "stack", "shared", "local", "vector_bytes"}`` of ``kernel`` compiled for ``sm_{arch}``."""
    signature = {name: f"*{dtype}" for name in pointers} | dict.fromkeys(scalars, "i32")
    signature |= dict.fromkeys(constexprs, "constexpr")
    # As at launch: torch's tensors start 16-byte aligned, and Triton specializes pointers on that.
    attrs = {(kernel.arg_names.index(name),): [["tt.divisibility", 16]] for name in pointers}
    compiled = triton.compile(
        ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs),
        target=GPUTarget("cuda", arch, 32),
        options={"num_warps": num_warps},
    )
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        text = subprocess.run([str(tool), "-res-usage", cubin.name], capture_output=True, text=True, check=True).stdout
    match = _USAGE.search(text)
    if match is None:
        raise RuntimeError(f"no resource line in cuobjdump's output:\n{text}")
    got = dict(zip(("reg", "stack", "shared", "local"), map(int, match.groups()), strict=True))
    return got | {"vector_bytes": widest_access(compiled.asm["ptx"])}


def rows(arch: int) -> list[dict]:
    """Every kernel at its wrapper's configs; one dict per compile."""
    out = []
    unit_pointers = [
        "ctx_ptr", "xs_ptr", "x_ptr", "dw_w_ptr", "dw_b_ptr", "alpha_ptr", "pw_w_ptr", "pw_b_ptr", "next_alpha_ptr",
        "out_ptr", "snaked_ptr",
    ]  # fmt: skip
    unit_scalars = ["length", "ctx_len", "dilation", "stride_ctx_b", "stride_ctx_c"]
    for dtype in ("bf16", "fp32"):
        for sin in (1, 2):
            for channels in (16, 32, 64, 128, 256):
                block_t, block_c, num_warps = fused_vae_unit.launch_config(channels)
                const = {
                    "C": channels, "KSIZE": 7, "BLOCK_C": min(block_c, channels), "BLOCK_T": block_t,
                    "SNAKE_NEXT": True, "PRECISION": "ieee" if dtype == "bf16" else "tf32", "LIBDEVICE": sin,
                }  # fmt: skip
                got = resources(
                    fused_vae_unit._residual_unit_kernel, unit_pointers, unit_scalars, dtype, const, num_warps, arch
                )
                out.append({"kernel": "residual_unit", "channels": channels, "dtype": dtype, "sin": sin, **got})
            for channels in (64, 128, 256, 512, 1024):
                block_m, block_n, block_k, num_warps, _ = fused_vae_pointwise.launch_config(channels)
                const = {
                    "C": channels, "BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k, "SNAKE": True,
                    "PRECISION": "ieee" if dtype == "bf16" else "tf32", "LIBDEVICE": sin, "ALIGN": ALIGN,
                }  # fmt: skip
                got = resources(
                    fused_vae_pointwise._pointwise_residual_kernel,
                    ["w_ptr", "h_ptr", "b_ptr", "x_ptr", "out_ptr", "alpha_ptr", "snaked_ptr"], ["length_a"],
                    dtype, const, num_warps, arch,
                )  # fmt: skip
                out.append({"kernel": "pointwise_residual", "channels": channels, "dtype": dtype, "sin": sin, **got})
            simple = [
                ("snake", fused_vae._snake_kernel, ["x_ptr", "alpha_ptr", "y_ptr"], ["channels", "length_a"],
                 {"BLOCK": 1024, "ALIGN": ALIGN}, 4),
                ("depthwise", fused_vae._depthwise_conv_kernel,
                 ["ctx_ptr", "x_ptr", "w_ptr", "b_ptr", "alpha_ptr", "y_ptr"],
                 ["channels", "length_a", "ctx_len", "dilation", "stride_ctx_b", "stride_ctx_c"],
                 {"KSIZE": 7, "BLOCK": 512, "SNAKE": True, "ALIGN": ALIGN}, 4),
                ("bias_residual", fused_vae._bias_residual_kernel,
                 ["y_ptr", "b_ptr", "x_ptr", "out_ptr", "alpha_ptr", "snaked_ptr"], ["channels", "length_a"],
                 {"BLOCK": 1024, "SNAKE": True, "ALIGN": ALIGN}, 4),
                ("mono_conv", fused_vae._mono_conv_kernel, ["ctx_ptr", "x_ptr", "w_ptr", "b_ptr", "y_ptr"],
                 ["channels", "length_a", "ctx_len", "dilation", "stride_ctx_b", "stride_ctx_c"],
                 {"KSIZE": 7, "BLOCK_T": 1024, "ALIGN": ALIGN}, 4),
                ("overlap_add", fused_vae_upsample._overlap_add_kernel,
                 ["y_ptr", "b_ptr", "out_ptr", "alpha_ptr", "snaked_ptr"], ["out_ch", "frames_a"],
                 {"STRIDE": 3, "BLOCK_C": 32, "BLOCK_N": 128, "SNAKE": True, "ALIGN": ALIGN}, 4),
                ("snake_rows", fused_vae_upsample._snake_rows_kernel, ["x_ptr", "alpha_ptr", "rows_ptr"],
                 ["channels", "length_a"], {"BLOCK_C": 32, "BLOCK_T": 64, "ALIGN": ALIGN}, 4),
            ]  # fmt: skip
            for name, kernel, pointers, scalars, const, num_warps in simple:
                if "LIBDEVICE" in kernel.arg_names:
                    const = const | {"LIBDEVICE": sin}
                got = resources(kernel, pointers, scalars, dtype, const, num_warps, arch)
                out.append({"kernel": name, "channels": None, "dtype": dtype, "sin": sin, **got})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (default 90: H100/H200)")
    parser.add_argument("--json", action="store_true", help="one JSON list on stdout instead of the table")
    args = parser.parse_args()
    table = rows(args.arch)
    if args.json:
        print(json.dumps(table))
        return
    print(f"sm_{args.arch}, Triton {triton.__version__}")
    print("| kernel | channels | dtype | sin | registers | stack | local | static shared | widest access, bytes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in table:
        print(
            f"| {r['kernel']} | {r['channels'] or ''} | {r['dtype']} | {r['sin']} | {r['reg']} | {r['stack']}"
            f" | {r['local']} | {r['shared']} | {r['vector_bytes']} |"
        )


if __name__ == "__main__":
    main()
