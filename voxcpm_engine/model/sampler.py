"""Flow-matching Euler sampler with sway sampling and CFG-Zero* (spec §4.7).

Everything runs in the model dtype (bf16), op for op like the reference, so the single-request
path is bit-exact. The sampler is batched along dim 0: each row is an independent request with its
own noise, conditioning and guidance scale; all rows share the number of timesteps.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from voxcpm_engine.model.local import LocalDiT

SWAY_COEF = 1.0  # fixed in the reference's inference path


class VelocityEstimator(Protocol):
    """``(x [N,D,P], mu [N,M], t [N], cond [N,D,P], dt [N]) -> velocity [N,D,P]``, e.g. :class:`LocalDiT`."""

    def __call__(self, x: Tensor, mu: Tensor, t: Tensor, cond: Tensor, dt: Tensor) -> Tensor: ...


def draw_noise(
    shape: tuple[int, ...],
    *,
    generator: torch.Generator | None,
    dtype: torch.dtype,
    device: torch.device | str,
    temperature: float = 1.0,
) -> Tensor:
    """The starting noise of one sampler call: exactly one ``randn`` draw, scaled by ``temperature``.

    Drawn on the generator's device (so a CPU generator gives the same stream whatever the model
    device) or, without a generator, from the global RNG of ``device`` like the reference.
    """
    where = generator.device if generator is not None else device
    noise = torch.randn(shape, generator=generator, dtype=dtype, device=where) * temperature
    return noise.to(device)


NOISE_CHUNK = 32
"""Sampler steps of noise drawn per ``randn`` call (:class:`NoiseStream`)."""


class NoiseStream:
    """One request's starting noise for each sampler call, drawn from its own generator in chunks.

    Each chunk is one ``randn([NOISE_CHUNK, *shape])`` draw, scaled by ``temperature``, handed out
    one step at a time: one draw per 32 steps instead of one per step, which at large batches was
    the largest host cost of an engine step. On a CPU generator a chunk is bit-identical to 32
    single-step draws (the reference's stream, see :func:`draw_noise`); on CUDA it is a fixed
    function of the seed. Either way a request's noise does not depend on the batch it runs in,
    and the engine and single-request generation draw the same values.

    Args:
        generator: The request's RNG (``None``: the global RNG of ``device``, one step per draw).
        shape: Shape of one step's noise (``(D, P)``).
        dtype: Noise dtype (the model's).
        device: Where the noise is used.
        temperature: Noise scale.
    """

    def __init__(
        self,
        generator: torch.Generator | None,
        shape: tuple[int, ...],
        *,
        dtype: torch.dtype,
        device: torch.device | str,
        temperature: float = 1.0,
    ) -> None:
        self.generator = generator
        self.shape = shape
        self.dtype = dtype
        self.device = device
        self.temperature = temperature
        # The global RNG is shared: draw no further ahead than used, so its state after a
        # generation is the reference's.
        self.chunk = NOISE_CHUNK if generator is not None else 1
        self._chunk: Tensor | None = None
        self._next = self.chunk

    def next(self) -> Tensor:
        """The next step's noise, ``shape`` (a view into the current chunk)."""
        if self._next == self.chunk:
            self._chunk = draw_noise(
                (self.chunk, *self.shape),
                generator=self.generator,
                dtype=self.dtype,
                device=self.device,
                temperature=self.temperature,
            )
            self._next = 0
        self._next += 1
        return self._chunk[self._next - 1]


def sway_timesteps(n_timesteps: int, *, dtype: torch.dtype, device: torch.device | str) -> Tensor:
    """``n + 1`` times from 1 (noise) to 0 (data), warped by ``s(t) = 2t - 1 + cos(pi t / 2)``."""
    t_span = torch.linspace(1, 0, n_timesteps + 1, dtype=dtype, device=device)
    return t_span + SWAY_COEF * (torch.cos(torch.pi / 2 * t_span) - 1 + t_span)


def zero_init_steps(n_timesteps: int) -> int:
    """Leading Euler steps of CFG-Zero* that use zero velocity (1 for ``n <= 48``)."""
    return max(1, int((n_timesteps + 1) * 0.04))


def guided_velocity(v_cond: Tensor, v_uncond: Tensor, cfg_value: float | Tensor) -> Tensor:
    """CFG-Zero*: classifier-free guidance around the optimally rescaled unconditional velocity.

    Args:
        v_cond: Conditional velocity ``[B, D, P]``.
        v_uncond: Unconditional (``mu = 0``) velocity ``[B, D, P]``.
        cfg_value: Guidance scale, a float or a per-row ``[B]`` tensor.
    """
    b = v_cond.size(0)
    cond_flat, uncond_flat = v_cond.view(b, -1), v_uncond.view(b, -1)
    dot = torch.sum(cond_flat * uncond_flat, dim=1, keepdim=True)
    norm_sq = torch.sum(uncond_flat**2, dim=1, keepdim=True) + 1e-8
    st_star = (dot / norm_sq).view(b, 1, 1)
    delta = v_cond - v_uncond * st_star
    if isinstance(cfg_value, Tensor):
        # fp32 product rounded once = what a Python-float scale does inside the bf16 kernel.
        guided = (cfg_value.to(device=delta.device, dtype=torch.float32).view(b, 1, 1) * delta).to(delta.dtype)
    else:
        guided = cfg_value * delta
    return v_uncond * st_star + guided


def sample_euler(
    estimator: VelocityEstimator,
    noise: Tensor,
    mu: Tensor,
    cond: Tensor,
    *,
    n_timesteps: int,
    cfg_value: float | Tensor,
) -> Tensor:
    """Integrate the flow from ``noise`` (t = 1) to a latent patch (t = 0).

    Args:
        estimator: The velocity network.
        noise: Starting point ``[B, D, P]`` (from :func:`draw_noise`).
        mu: Conditioning ``[B, M]``; the unconditional branch uses ``mu = 0``.
        cond: Previous patch ``[B, D, P]`` (kept in both branches).
        n_timesteps: Euler steps (estimator is called ``n - zero_init_steps(n)`` times, batch 2B).
        cfg_value: Guidance scale, a float or a per-row ``[B]`` tensor.

    Returns:
        The sampled patch ``[B, D, P]`` in the noise dtype.
    """
    b = noise.size(0)
    t_span = sway_timesteps(n_timesteps, dtype=noise.dtype, device=noise.device)
    t, dt = t_span[0], t_span[0] - t_span[1]
    x = noise
    # Both branches in one batch: rows [0, b) conditional, [b, 2b) unconditional.
    mu_in = torch.cat([mu, torch.zeros_like(mu)])
    cond_in = torch.cat([cond, cond])
    dt_in = torch.zeros(2 * b, dtype=noise.dtype, device=noise.device)
    for step in range(1, n_timesteps + 1):
        # Zero-init steps would compute x - dt * 0 == x bit for bit, so the update is skipped.
        if step > zero_init_steps(n_timesteps):
            velocity = estimator(torch.cat([x, x]), mu_in, t.expand(2 * b), cond_in, dt_in)
            v_cond, v_uncond = velocity.split(b)
            x = x - dt * guided_velocity(v_cond, v_uncond, cfg_value)
        t = t - dt
        if step < n_timesteps:
            dt = t - t_span[step + 1]
    return x


@functools.lru_cache(maxsize=16)
def euler_schedule(n_timesteps: int, dtype: torch.dtype) -> tuple[Tensor, list[float]]:
    """The flow times and step sizes of the estimator calls of :func:`sample_euler`, in its arithmetic.

    Computed on the CPU in ``dtype`` exactly as the loop computes them on the device (same ops, same
    rounding), so a fused sampler can bake them in as constants; cached per step count (treat the
    result as read-only).

    Returns:
        ``(times [K], steps)``: the time of each of the ``K`` calls and the ``dt`` that follows it.
    """
    t_span = sway_timesteps(n_timesteps, dtype=dtype, device="cpu")
    t, dt = t_span[0], t_span[0] - t_span[1]
    times, steps = [], []
    for step in range(1, n_timesteps + 1):
        if step > zero_init_steps(n_timesteps):
            times.append(t)
            steps.append(float(dt))
        t = t - dt
        if step < n_timesteps:
            dt = t - t_span[step + 1]
    return torch.stack(times), steps


def sample_euler_fused(
    dit: LocalDiT, noise: Tensor, mu: Tensor, cond: Tensor, *, n_timesteps: int, cfg_value: float | Tensor
) -> Tensor:
    """:func:`sample_euler` for the fused CUDA path: same math, far fewer kernels.

    The loop invariants (cond projection, mu tokens, time embeddings) are computed once, the sample
    stays frames-first ``[2B, P, D]`` (no transposes per step), and each Euler update with CFG-Zero*
    is one kernel (:func:`voxcpm_engine.kernels.fused.cfg_euler_`) writing both halves of the CFG batch.

    Returns:
        ``[B, D, P]`` (a transposed view).
    """
    from voxcpm_engine.kernels.fused import cfg_euler_

    b = noise.size(0)
    times, steps = euler_schedule(n_timesteps, noise.dtype)
    if not isinstance(cfg_value, Tensor):
        cfg_value = torch.full((b,), float(cfg_value))
    cfg_value = cfg_value.to(device=noise.device, dtype=torch.float32)
    mu_tokens, cond_h = dit.prepare(torch.cat([mu, torch.zeros_like(mu)]), cond.transpose(1, 2).repeat(2, 1, 1))
    x = noise.transpose(1, 2).repeat(2, 1, 1)  # [2B, P, D]: rows [0, b) conditional, [b, 2b) unconditional
    table = dit.time_table(n_timesteps, times)
    if table is None:  # adapters patch the time MLPs: evaluate them per call, like the reference
        times = times.to(noise.device)
    for i, dt in enumerate(steps):
        time = table[i : i + 1] if table is not None else dit.time_row(times[i], 2 * b)
        velocity = dit.velocity(x, mu_tokens, cond_h, time)
        cfg_euler_(x, velocity, cfg_value, dt)
    return x[:b].transpose(1, 2)


class FlowDecoder(nn.Module):
    """The ``feat_decoder`` module: owns the velocity network (state-dict prefix ``estimator``)."""

    def __init__(self, estimator: nn.Module) -> None:
        super().__init__()
        self.estimator = estimator
        self.fused = False  # set by VoxCPMModel.use_fused_kernels: sample_euler_fused

    def forward(
        self, noise: Tensor, mu: Tensor, cond: Tensor, *, n_timesteps: int, cfg_value: float | Tensor
    ) -> Tensor:
        """Sample one patch per row; see :func:`sample_euler` (:func:`sample_euler_fused` when fused)."""
        if self.fused:
            return sample_euler_fused(self.estimator, noise, mu, cond, n_timesteps=n_timesteps, cfg_value=cfg_value)
        return sample_euler(self.estimator, noise, mu, cond, n_timesteps=n_timesteps, cfg_value=cfg_value)
