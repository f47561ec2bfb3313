"""Paged-KV kernels of the batched engine: cache writes and causal attention over block tables.

``paged_attention`` and ``store_kv`` dispatch to flash-attn, Triton or the torch reference (see
:mod:`voxcpm_engine.kernels.dispatch`); the reference in :mod:`voxcpm_engine.kernels.reference` defines the semantics.
Importing this package needs neither Triton nor flash-attn.
"""

from .dispatch import BACKENDS, flash_attn_supports, paged_attention, select_backend, store_kv
from .reference import paged_attention_torch, store_kv_torch

__all__ = [
    "BACKENDS",
    "flash_attn_supports",
    "paged_attention",
    "paged_attention_torch",
    "select_backend",
    "store_kv",
    "store_kv_torch",
]
