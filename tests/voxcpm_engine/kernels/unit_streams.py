"""Shared setup of the residual-unit kernel tests: one tiny VAE streamed with two ways of running its units."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import pytest
import torch

from tests.voxcpm_engine.kernels.interpret import DEVICE, randn
from tests.voxcpm_engine.tiny_configs import TINY, randomize
from voxcpm_engine.model.audio_vae import AudioVAE, conv_flags


@torch.no_grad()
def streamed_with_units(
    name: str, units: str, monkeypatch: pytest.MonkeyPatch, module: ModuleType, kernel: str, record: Callable
) -> tuple[torch.Tensor, torch.Tensor, list]:
    """The same random tiny VAE ``name`` streamed in two chunks with units ``"passes"`` and ``units``.

    ``module.kernel`` is wrapped so that each call appends ``record(args)`` to the returned list.
    Returns the two decodes (passes first) and that list.
    """
    plain = randomize(AudioVAE(TINY[name])).eval().to(DEVICE)
    pair = []
    for kind in ("passes", units):
        vae = AudioVAE(TINY[name]).eval().to(DEVICE)
        vae.load_state_dict(plain.state_dict())
        vae.use_fused_kernels(units=kind)
        pair.append(vae)
    calls: list = []
    wrapped = getattr(module, kernel)
    monkeypatch.setattr(module, kernel, lambda *a, **k: calls.append(record(a)) or wrapped(*a, **k))
    z = randn(2, TINY[name].latent_dim, 3)
    outs = []
    for vae in pair:
        with conv_flags(False):  # true fp32 products on CUDA, as the kernels' ieee dot
            state = vae.new_stream_state(2, DEVICE)
            outs.append(torch.cat([vae.decode_stream(z[..., a:b], state) for a, b in ((0, 1), (1, 3))], dim=-1))
    return outs[0], outs[1], calls
