"""The machine a benchmark runs on: device name, peak bf16 FLOP/s, peak memory, run metadata."""

from __future__ import annotations

import datetime
import platform
import resource
import shlex
import sys
from typing import Any

import torch

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by device-name substring; the first match wins,
# so the more specific names come first.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM (reported as "H100 80GB HBM3")
    ("H200", 989.0),
    ("H800", 989.0),
    ("H20", 148.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 4090", 165.0),
)


def device_name(device: torch.device) -> str:
    """Marketing name of a CUDA device, or the CPU's architecture."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} torch threads)"


def peak_tflops(name: str, override: float | None = None) -> float | None:
    """Dense bf16 peak of a device by name (``override`` wins); ``None`` when unknown (CPU, unlisted GPU)."""
    if override is not None:
        return override
    for key, value in PEAK_BF16_TFLOPS:
        if key in name:
            return value
    return None


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window (CUDA; on the CPU the RSS peak is process-wide and cannot be reset)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict[str, Any]:
    """Peak memory since :func:`reset_peak_memory`: CUDA ``max_memory_allocated``, else the process's peak RSS."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return {"kind": "cuda_max_allocated", "gib": torch.cuda.max_memory_allocated(device) / 2**30}
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"kind": "process_peak_rss", "gib": rss_kib / 2**20}


def run_metadata(device: torch.device, argv: list[str] | None = None) -> dict[str, Any]:
    """What a JSON result needs to be reproduced: command line, date, device, versions."""
    argv = sys.argv if argv is None else argv
    meta: dict[str, Any] = {
        "command": " ".join(shlex.quote(a) for a in argv),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
    }
    if device.type == "cuda":
        meta["cuda"] = torch.version.cuda
    return meta
