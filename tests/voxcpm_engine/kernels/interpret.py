"""Shared setup of the fused-kernel tests: device, tolerances, inputs; skips without Triton.

``TRITON_INTERPRET=1`` (no CUDA) is set by ``tests/conftest.py`` before these modules load.
"""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# fp32: equal up to rounding order; bf16 only on CUDA (the interpreter's bf16 casts truncate).
DTYPES = [torch.float32] + ([torch.bfloat16] if DEVICE == "cuda" else [])
TOL = {torch.float32: 2e-6, torch.bfloat16: 2e-2}


def skip_if_compiled(kernel: object) -> None:
    """Skip the calling module when its kernels were compiled before the interpreter was set (CPU only)."""
    if DEVICE == "cpu" and isinstance(kernel, triton.runtime.JITFunction):
        pytest.skip("Triton kernels were imported without TRITON_INTERPRET=1", allow_module_level=True)


def randn(*shape: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    """Seeded normal values on the test device."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen).to(device=DEVICE, dtype=dtype)


def close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> None:
    """Equal within the tolerance of ``dtype``."""
    torch.testing.assert_close(a.float(), b.float(), atol=TOL[dtype], rtol=TOL[dtype])
