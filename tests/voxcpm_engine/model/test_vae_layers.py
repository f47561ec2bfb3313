"""voxcpm_engine.model.vae_layers: Snake, residual units, encoder/decoder resampling blocks, rate conditioning.

Streamed chunks are compared with a whole pass within fp32 rounding (``STREAM_ATOL``).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.voxcpm_engine.tiny_configs import randomize
from voxcpm_engine.model.vae_convs import CausalConv1d, CausalConvTranspose1d
from voxcpm_engine.model.vae_layers import (
    DecoderBlock,
    EncoderBlock,
    ResidualUnit,
    SampleRateCondition,
    Snake1d,
    run_layers,
    snake,
)

STREAM_ATOL = 1e-6


def build(module: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize(module, seed).eval()


def new_stream(module: nn.Module, batch: int) -> list[torch.Tensor]:
    """Give every conv that needs context a slot (as AudioVAE does) and return zeroed buffers."""
    stateful = [m for m in module.modules() if isinstance(m, CausalConv1d | CausalConvTranspose1d) and m.context > 0]
    for slot, m in enumerate(stateful):
        m.stream_slot = slot
    return [torch.zeros(batch, m.in_channels, m.context) for m in stateful]


def streamed(module: nn.Module, x: torch.Tensor, bounds: list[int]) -> torch.Tensor:
    stream = new_stream(module, x.shape[0])
    with torch.no_grad():
        return torch.cat([module(x[..., a:b], stream) for a, b in zip(bounds, bounds[1:], strict=False)], dim=-1)


# --- Snake ---------------------------------------------------------------------------------------


def test_snake_matches_its_formula() -> None:
    x = torch.linspace(-6, 6, 240).reshape(1, 3, -1)
    alpha = torch.tensor([0.3, 1.0, 2.5]).reshape(1, 3, 1)
    expected = x + torch.sin(alpha * x) ** 2 / (alpha + 1e-9)
    torch.testing.assert_close(snake(x, alpha), expected, atol=1e-6, rtol=1e-6)
    # Values by hand: x = pi / 2, alpha = 1 gives pi / 2 + 1; x = 0 stays 0.
    one = torch.ones(1, 1, 1)
    torch.testing.assert_close(snake(torch.full((1, 1, 1), torch.pi / 2), one), torch.full((1, 1, 1), torch.pi / 2 + 1))
    assert snake(torch.zeros(1, 1, 1), one).item() == 0.0


def test_snake1d_is_per_channel_and_starts_at_alpha_one() -> None:
    layer = Snake1d(3)
    assert layer.alpha.shape == (1, 3, 1) and torch.equal(layer.alpha.detach(), torch.ones(1, 3, 1))
    x = torch.randn(2, 3, 10)
    with torch.no_grad():
        layer.alpha.copy_(torch.tensor([0.5, 1.0, 2.0]).reshape(1, 3, 1))
        y = layer(x)
    for c, a in enumerate((0.5, 1.0, 2.0)):
        torch.testing.assert_close(y[:, c], x[:, c] + torch.sin(a * x[:, c]) ** 2 / (a + 1e-9), atol=1e-6, rtol=1e-6)
    assert torch.equal(layer(x, [torch.zeros(1)]), layer(x))  # stateless: the stream is ignored


def test_run_layers_hands_the_stream_only_to_streamable_layers() -> None:
    conv = build(CausalConv1d(2, 2, 3, left_pad=2))
    stream = new_stream(conv, 1)
    x = torch.randn(1, 2, 4)
    with torch.no_grad():
        y = run_layers([nn.Identity(), conv, nn.Tanh()], x, stream)  # Identity/Tanh would refuse a 2nd argument
        ref = torch.tanh(conv(x))
    assert torch.equal(y, ref) and torch.equal(stream[0], x[..., -2:])


# --- residual unit -------------------------------------------------------------------------------


@pytest.mark.parametrize(("dilation", "groups"), [(1, 1), (3, 4), (9, 4)])
def test_residual_unit_is_x_plus_its_block(dilation: int, groups: int) -> None:
    unit = build(ResidualUnit(4, dilation, groups))
    snake1, conv7, snake2, conv1 = unit.block
    assert conv7.context == 6 * dilation and conv7.dilation == dilation and conv7.groups == groups
    assert conv1.pointwise
    x = torch.randn(2, 4, 30)
    with torch.no_grad():
        y = unit(x)
        ref = x + conv1(snake2(conv7(snake1(x))))
    assert y.shape == x.shape and torch.equal(y, ref)


@pytest.mark.parametrize(("dilation", "groups"), [(1, 1), (3, 4), (9, 1)])
def test_residual_unit_streaming_equals_whole_pass(dilation: int, groups: int) -> None:
    unit = build(ResidualUnit(4, dilation, groups))
    x = torch.randn(2, 4, 40)
    with torch.no_grad():
        whole = unit(x)
    out = streamed(unit, x, [0, 1, 3, 10, 11, 40])
    assert out.shape == whole.shape
    torch.testing.assert_close(out, whole, atol=STREAM_ATOL, rtol=0)


def test_residual_unit_is_causal() -> None:
    unit = build(ResidualUnit(4, 3, 4))
    x = torch.randn(1, 4, 30)
    x2 = x.clone()
    x2[..., 17:] = torch.randn(4, 13)
    with torch.no_grad():
        a, b = unit(x), unit(x2)
    assert torch.equal(a[..., :17], b[..., :17]) and not torch.equal(a[..., 17], b[..., 17])


# --- resampling blocks ---------------------------------------------------------------------------


@pytest.mark.parametrize(("stride", "version"), [(2, 1), (3, 1), (3, 2), (8, 2)])
def test_encoder_block_downsamples_by_its_stride_and_doubles_channels(stride: int, version: int) -> None:
    block = build(EncoderBlock(4, stride, groups=4, version=version))
    down = block.block[-1]
    assert down.stride == stride and down.weight_v.shape == (8, 4, 2 * stride)
    assert down.context == (stride if version == 2 or stride % 2 == 0 else stride + 1)
    frames = 4
    x = torch.randn(2, 4, frames * stride)
    with torch.no_grad():
        y = block(x)
    assert y.shape == (2, 8, frames)
    x2 = x.clone()
    x2[..., 2 * stride :] = torch.randn(4, (frames - 2) * stride)
    with torch.no_grad():
        y2 = block(x2)
    assert torch.equal(y[..., :2], y2[..., :2]) and not torch.equal(y[..., 2], y2[..., 2])


@pytest.mark.parametrize("stride", [2, 5, 8])
def test_decoder_block_upsamples_by_its_stride(stride: int) -> None:
    block = build(DecoderBlock(8, 4, stride, groups=4))
    assert block.in_dim == 8 and block.block[1].weight_v.shape == (8, 4, 2 * stride)
    x = torch.randn(2, 8, 5)
    with torch.no_grad():
        y = block(x)
    assert y.shape == (2, 4, 5 * stride)
    x2 = x.clone()
    x2[..., 3:] = torch.randn(8, 2)
    with torch.no_grad():
        y2 = block(x2)
    cut = 3 * stride  # output sample t depends on input frames up to t // stride
    assert torch.equal(y[..., :cut], y2[..., :cut]) and not torch.equal(y[..., cut], y2[..., cut])


@pytest.mark.parametrize("stride", [2, 5])
def test_decoder_block_streaming_equals_whole_pass(stride: int) -> None:
    block = build(DecoderBlock(8, 4, stride, groups=4))
    x = torch.randn(2, 8, 12)
    with torch.no_grad():
        whole = block(x)
    out = streamed(block, x, [0, 1, 2, 5, 12])
    assert out.shape == whole.shape == (2, 4, 12 * stride)
    torch.testing.assert_close(out, whole, atol=STREAM_ATOL, rtol=0)


# --- sample-rate conditioning --------------------------------------------------------------------


def test_sample_rate_condition_is_identity_at_init_and_affine_per_bucket() -> None:
    cond = SampleRateCondition(3, 4)
    x = torch.randn(2, 3, 5)
    with torch.no_grad():
        assert torch.equal(cond(x, torch.tensor([2])), x)
        cond.scale_embed.weight.copy_(torch.arange(12.0).reshape(4, 3))
        cond.bias_embed.weight.copy_(-torch.arange(12.0).reshape(4, 3))
        y = cond(x, torch.tensor([1, 3]))
    scale, bias = torch.tensor([[3.0, 4, 5], [9, 10, 11]]), -torch.tensor([[3.0, 4, 5], [9, 10, 11]])
    torch.testing.assert_close(y, x * scale[..., None] + bias[..., None])
