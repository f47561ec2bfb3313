"""Euler CFM sampler: sway schedule, zero-init step, CFG-Zero*, batching, noise drawing."""

from __future__ import annotations

import pytest
import torch

from tests.voxcpm_engine.tiny_configs import randomize_, tiny_config
from voxcpm_engine.model.local import LocalDiT
from voxcpm_engine.model.sampler import (
    NOISE_CHUNK,
    FlowDecoder,
    NoiseStream,
    draw_noise,
    guided_velocity,
    sample_euler,
    sway_timesteps,
    zero_init_steps,
)

BF16 = torch.bfloat16
# bf16 sway-sampled schedule for n = 10 (spec §4.7)
SPEC_T_SPAN_10 = [1.0, 0.953125, 0.91015625, 0.8515625, 0.7890625, 0.70703125, 0.609375, 0.4921875, 0.349609375]
SPEC_T_SPAN_10 += [0.1884765625, 0.0]


class RecordingEstimator:
    """Elementwise toy velocity field that records its inputs."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, ...]] = []

    def __call__(self, x, mu, t, cond, dt):
        self.calls.append((x.clone(), mu.clone(), t.clone(), cond.clone(), dt.clone()))
        return x * 0.5 + cond * 0.25 + mu.sum(-1).view(-1, 1, 1) * 0.125 + t.view(-1, 1, 1)


def test_sway_timesteps_match_spec():
    t_span = sway_timesteps(10, dtype=BF16, device="cpu")
    assert t_span.dtype == BF16 and t_span.tolist() == SPEC_T_SPAN_10


@pytest.mark.parametrize(("n", "expected"), [(1, 1), (10, 1), (48, 1), (49, 2), (73, 2), (74, 3)])
def test_zero_init_steps(n, expected):
    assert zero_init_steps(n) == expected


def test_estimator_calls_and_zero_init():
    est = RecordingEstimator()
    noise = torch.randn(1, 64, 4).to(BF16)
    mu, cond = torch.randn(1, 8).to(BF16), torch.randn(1, 64, 4).to(BF16)
    sample_euler(est, noise, mu, cond, n_timesteps=10, cfg_value=2.0)
    assert len(est.calls) == 9
    x0, mu0, t0, cond0, dt0 = est.calls[0]
    assert torch.equal(x0, torch.cat([noise, noise]))  # first call sees the raw noise: step 1 did not move x
    assert torch.equal(mu0, torch.cat([mu, torch.zeros_like(mu)]))  # unconditional row: mu = 0
    assert torch.equal(cond0, torch.cat([cond, cond])) and not dt0.any()
    assert [c[2][0].item() for c in est.calls] == SPEC_T_SPAN_10[1:10]
    assert all(c[2].dtype == BF16 for c in est.calls)


def test_single_step_returns_noise_bit_exact():
    est = RecordingEstimator()
    noise = torch.randn(1, 64, 2).to(BF16)
    mu, cond = torch.ones(1, 4, dtype=BF16), torch.zeros(1, 64, 2, dtype=BF16)
    out = sample_euler(est, noise, mu, cond, n_timesteps=1, cfg_value=2.0)
    assert torch.equal(out, noise) and not est.calls


def test_euler_update_matches_manual_bf16_loop():
    est = RecordingEstimator()
    noise = torch.randn(1, 64, 4).to(BF16)
    mu, cond = torch.randn(1, 8).to(BF16), torch.randn(1, 64, 4).to(BF16)
    out = sample_euler(est, noise, mu, cond, n_timesteps=5, cfg_value=1.7)
    t_span = sway_timesteps(5, dtype=BF16, device="cpu")
    x, t, dt = noise, t_span[0], t_span[0] - t_span[1]
    for step in range(1, 6):
        v = torch.zeros_like(x)
        if step > 1:
            x_in, mu_in, cond_in = torch.cat([x, x]), torch.cat([mu, 0 * mu]), torch.cat([cond, cond])
            both = RecordingEstimator()(x_in, mu_in, t.expand(2), cond_in, torch.zeros(2, dtype=BF16))
            vc, vu = both[:1], both[1:]
            s = (vc * vu).sum() / ((vu**2).sum() + 1e-8)
            v = vu * s + 1.7 * (vc - vu * s)
        x = x - dt * v
        t = t - dt
        if step < 5:
            dt = t - t_span[step + 1]
    assert torch.equal(out, x)


def test_cfg_zero_star_formula_and_tensor_scale():
    v_c, v_u = torch.randn(3, 64, 4).to(BF16), torch.randn(3, 64, 4).to(BF16)
    scales = [1.3, 2.0, 2.7]
    batched = guided_velocity(v_c, v_u, torch.tensor(scales))
    for i, s in enumerate(scales):
        single = guided_velocity(v_c[i : i + 1], v_u[i : i + 1], s)
        assert torch.equal(batched[i : i + 1], single)  # a per-row tensor scale rounds like a Python float
        c, u = v_c[i].float().flatten(), v_u[i].float().flatten()
        st = (c @ u) / (u @ u + 1e-8)
        torch.testing.assert_close(single[0].float(), (u * st + s * (c - u * st)).view(64, 4), atol=0.1, rtol=0.02)


def test_batched_rows_equal_single_requests_with_toy_estimator():
    noise, cond = torch.randn(3, 64, 4).to(BF16), torch.randn(3, 64, 4).to(BF16)
    mu = torch.randn(3, 8).to(BF16)
    cfg = torch.tensor([1.0, 2.0, 3.0])
    batched = sample_euler(RecordingEstimator(), noise, mu, cond, n_timesteps=6, cfg_value=cfg)
    for i in range(3):
        row = slice(i, i + 1)
        single = sample_euler(
            RecordingEstimator(), noise[row], mu[row], cond[row], n_timesteps=6, cfg_value=float(cfg[i])
        )
        assert torch.equal(batched[i : i + 1], single)


def test_flow_decoder_with_dit_batches_close_to_single():
    cfg = tiny_config("v2")
    dit = LocalDiT(cfg.dit_lm_config(), cfg.feat_dim, cfg.patch_size, mu_tokens=2)
    decoder = randomize_(FlowDecoder(dit).to(BF16)).eval()
    noise, cond, mu = torch.randn(2, 64, 4).to(BF16), torch.randn(2, 64, 4).to(BF16), torch.randn(2, 64).to(BF16)
    with torch.no_grad():
        both = decoder(noise, mu, cond, n_timesteps=4, cfg_value=2.0)
        one = decoder(noise[1:], mu[1:], cond[1:], n_timesteps=4, cfg_value=2.0)
    assert both.shape == (2, 64, 4) and both.dtype == BF16
    torch.testing.assert_close(both[1:], one, atol=0.1, rtol=0.05)


def test_draw_noise_matches_global_stream_and_scales():
    torch.manual_seed(11)
    expected = [torch.randn((1, 64, 4), dtype=BF16) for _ in range(2)]
    gen = torch.Generator().manual_seed(11)
    got = [draw_noise((1, 64, 4), generator=gen, dtype=BF16, device="cpu") for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))
    torch.manual_seed(11)
    assert torch.equal(draw_noise((1, 64, 4), generator=None, dtype=BF16, device="cpu"), expected[0])
    hot = draw_noise((1, 64, 4), generator=torch.Generator().manual_seed(11), dtype=BF16, device="cpu", temperature=0.5)
    assert torch.equal(hot, expected[0] * 0.5)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_noise_stream_on_a_cpu_generator_equals_one_draw_per_step(temperature):
    steps = 2 * NOISE_CHUNK + 3  # across chunk boundaries
    gen = torch.Generator().manual_seed(3)
    want = [
        draw_noise((1, 64, 4), generator=gen, dtype=BF16, device="cpu", temperature=temperature)[0]
        for _ in range(steps)
    ]
    stream = NoiseStream(torch.Generator().manual_seed(3), (64, 4), dtype=BF16, device="cpu", temperature=temperature)
    got = [stream.next() for _ in range(steps)]
    assert all(torch.equal(a, b) for a, b in zip(want, got, strict=True))
