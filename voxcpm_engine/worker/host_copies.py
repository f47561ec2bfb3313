"""A step's results copied to the host without waiting for the GPU: queued now, read after one sync.

The engine copies each step's audio (and a finished request's latents, when it asked for them) to
the host behind the work that makes them, then launches the next step before it waits: one event
recorded after the last copy marks when they may be read.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["copies_done", "to_host"]


def to_host(x: Tensor) -> Tensor:
    """Queue a float32 copy of ``x`` on the host (on CUDA pinned and not waited for: read it after the
    event of :func:`copies_done`).

    Always a copy: ``x`` may be a static buffer (a CUDA graph's, the VAE's) that the next step rewrites.
    """
    if not x.is_cuda:
        return x.to(torch.float32, copy=True)
    # A fresh pinned tensor (cached by torch) per call: the arrays handed out keep theirs alive.
    host = torch.empty(x.shape, dtype=torch.float32, pin_memory=True)
    host.copy_(x, non_blocking=True)
    return host


def copies_done(device: torch.device) -> torch.cuda.Event | None:
    """An event after every copy queued so far on ``device`` (None on the CPU: its copies are done)."""
    if device.type != "cuda":
        return None
    event = torch.cuda.Event()
    event.record()
    return event
