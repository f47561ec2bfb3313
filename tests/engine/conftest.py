"""Engine tests: without CUDA, Triton kernels run in Triton's interpreter.

Triton reads ``TRITON_INTERPRET`` when a kernel is defined, so it is set here, before any test
module of the engine imports ``engine.kernels.*``. Only tests that ask for a Triton backend or the
fused path (``EngineConfig.fused_kernels=True``) run Triton kernels on the CPU at all.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
