"""voxcpm_engine.model.vae_convs: causal weight-normed convs, streaming == whole pass, weight-norm folding, shapes.

Streamed chunks are compared with a whole pass within fp32 rounding (``STREAM_ATOL``); on this
box (one torch thread, CPU) they measure bit-identical, but the conv's blocking may depend on the
input length elsewhere. Causality and folding are compared exactly (same op on the same inputs).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.voxcpm_engine.tiny_configs import randomize
from voxcpm_engine.model.vae_convs import CausalConv1d, CausalConvTranspose1d

STREAM_ATOL = 1e-6
CHUNKS = [(0, 1), (1, 4), (4, 5), (5, 13), (13, 20)]  # chunks shorter and longer than every context


def conv(in_ch: int = 4, out_ch: int = 6, kernel: int = 7, seed: int = 0, **kwargs) -> CausalConv1d:
    torch.manual_seed(seed)
    return randomize(CausalConv1d(in_ch, out_ch, kernel, **kwargs), seed).eval()


def tconv(in_ch: int = 4, out_ch: int = 3, stride: int = 5, seed: int = 0) -> CausalConvTranspose1d:
    torch.manual_seed(seed)
    return randomize(CausalConvTranspose1d(in_ch, out_ch, stride), seed).eval()


def explicit_weight(module) -> torch.Tensor:
    """``g * v / ||v||`` with the norm over every dim but 0, written out."""
    v, g = module.weight_v.detach(), module.weight_g.detach()
    return g * v / v.pow(2).sum(dim=(1, 2), keepdim=True).sqrt()


def stream_through(module, x: torch.Tensor, chunks=CHUNKS) -> tuple[torch.Tensor, list[torch.Tensor]]:
    module.stream_slot = 0
    stream = [torch.zeros(x.shape[0], module.in_channels, module.context)]
    with torch.no_grad():
        out = torch.cat([module(x[..., a:b], stream) for a, b in chunks], dim=-1)
    return out, stream


# --- CausalConv1d --------------------------------------------------------------------------------


@pytest.mark.parametrize(("groups", "dilation"), [(1, 1), (4, 3), (2, 9)])
def test_conv_is_zero_left_padded_conv_with_the_weight_norm_weight(groups: int, dilation: int) -> None:
    c = conv(4, 4, 7, dilation=dilation, groups=groups, left_pad=6 * dilation)
    assert c.weight_v.shape == (4, 4 // groups, 7) and c.weight_g.shape == (4, 1, 1) and c.in_channels == 4
    x = torch.randn(2, 4, 20)
    with torch.no_grad():
        y = c(x)
        ref = F.conv1d(F.pad(x, (6 * dilation, 0)), explicit_weight(c), c.bias, 1, 0, dilation, groups)
        torch.testing.assert_close(c.weight(), explicit_weight(c), atol=1e-6, rtol=1e-6)
    assert y.shape == (2, 4, 20)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(explicit_weight(c), c.weight_v)  # randomize made g differ from ||v||


@pytest.mark.parametrize(("groups", "dilation"), [(1, 1), (4, 3), (1, 9)])
def test_conv_output_does_not_depend_on_later_input(groups: int, dilation: int) -> None:
    c = conv(4, 4, 7, dilation=dilation, groups=groups, left_pad=6 * dilation)
    x = torch.randn(1, 4, 30)
    for t in (0, 7, 29):
        x2 = x.clone()
        x2[..., t:] = torch.randn(4, 30 - t)
        with torch.no_grad():
            a, b = c(x), c(x2)
        assert torch.equal(a[..., :t], b[..., :t])
        assert not torch.equal(a[..., t], b[..., t])


@pytest.mark.parametrize(("groups", "dilation"), [(1, 1), (4, 3), (1, 9), (4, 1)])
def test_conv_streaming_in_chunks_equals_whole_pass(groups: int, dilation: int) -> None:
    c = conv(4, 4, 7, dilation=dilation, groups=groups, left_pad=6 * dilation)
    x = torch.randn(2, 4, 20)
    with torch.no_grad():
        whole = c(x)
    streamed, stream = stream_through(c, x)
    assert streamed.shape == whole.shape
    torch.testing.assert_close(streamed, whole, atol=STREAM_ATOL, rtol=0)
    # The state left behind is the zero-padded input's tail (dilation 9: longer than the input).
    assert torch.equal(stream[0], F.pad(x, (c.context, 0))[..., -c.context :])


def test_conv_streaming_continues_a_longer_signal() -> None:
    c = conv(4, 6, 3, dilation=2, left_pad=4)
    x = torch.randn(3, 4, 12)
    streamed, _ = stream_through(c, x, [(0, 2), (2, 3), (3, 12)])
    with torch.no_grad():
        whole = c(x)
        # Without the carried context each chunk restarts from silence: different output.
        restarted = torch.cat([c(x[..., :2]), c(x[..., 2:3]), c(x[..., 3:])], dim=-1)
    torch.testing.assert_close(streamed, whole, atol=STREAM_ATOL, rtol=0)
    assert not torch.allclose(restarted, whole, atol=1e-3)


def test_conv_without_slot_or_context_ignores_the_stream() -> None:
    c = conv(4, 6, 3, left_pad=2)
    x = torch.randn(1, 4, 5)
    stream = [torch.randn(1, 4, 2)]
    before = stream[0].clone()
    with torch.no_grad():
        assert c.stream_slot is None and torch.equal(c(x, stream), c(x))  # no slot: zero padding
    assert torch.equal(stream[0], before)
    pointwise = conv(4, 6, 1)
    assert pointwise.context == 0 and pointwise.pointwise
    pointwise.stream_slot = 0
    with torch.no_grad():
        assert torch.equal(pointwise(x, stream), pointwise(x))
    assert torch.equal(stream[0], before)


@pytest.mark.parametrize(("stride", "left_pad"), [(2, 2), (3, 4), (3, 3), (8, 8)])
def test_strided_conv_downsamples_causally(stride: int, left_pad: int) -> None:
    """Encoder-style: kernel ``2s``, left pad ``2 * ceil(s / 2)`` (v1) or ``s`` (v2): T -> T / s."""
    c = conv(4, 8, 2 * stride, stride=stride, left_pad=left_pad)
    frames = 5
    x = torch.randn(2, 4, frames * stride)
    with torch.no_grad():
        y = c(x)
    assert y.shape == (2, 8, frames)
    for k in (1, 3):  # output frame j sees input only before (j + 1) * s
        x2 = x.clone()
        x2[..., k * stride :] = torch.randn(4, (frames - k) * stride)
        with torch.no_grad():
            y2 = c(x2)
        assert torch.equal(y[..., :k], y2[..., :k]) and not torch.equal(y[..., k], y2[..., k])


# --- CausalConvTranspose1d -----------------------------------------------------------------------


@pytest.mark.parametrize("stride", [1, 2, 5, 8])
def test_transposed_conv_shapes_and_reference(stride: int) -> None:
    t = tconv(4, 3, stride)
    assert t.weight_v.shape == (4, 3, 2 * stride) and t.weight_g.shape == (4, 1, 1) and t.bias.shape == (3,)
    assert t.in_channels == 4 and t.context == 1
    x = torch.randn(2, 4, 7)
    with torch.no_grad():
        y = t(x)
        ref = F.conv_transpose1d(x, explicit_weight(t), t.bias, stride)
    assert y.shape == (2, 3, 7 * stride)
    assert ref.shape[-1] == 8 * stride  # the plain transposed conv has one extra frame: dropped
    torch.testing.assert_close(y, ref[..., : 7 * stride], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("stride", [2, 5])
def test_transposed_conv_sample_depends_on_its_frame_and_the_one_before(stride: int) -> None:
    t = tconv(4, 3, stride)
    frames = 6
    x = torch.randn(1, 4, frames)
    for k in (0, 2, frames - 1):
        x2 = x.clone()
        x2[..., k] = torch.randn(4)
        with torch.no_grad():
            changed = (t(x) != t(x2)).any(dim=1)[0]
        hit = changed.nonzero().flatten().tolist()
        assert hit == list(range(k * stride, min(k + 2, frames) * stride))


@pytest.mark.parametrize("stride", [1, 3, 8])
def test_transposed_conv_streaming_in_chunks_equals_whole_pass(stride: int) -> None:
    t = tconv(4, 3, stride)
    x = torch.randn(2, 4, 20)
    with torch.no_grad():
        whole = t(x)
    streamed, stream = stream_through(t, x)
    assert streamed.shape == whole.shape == (2, 3, 20 * stride)
    torch.testing.assert_close(streamed, whole, atol=STREAM_ATOL, rtol=0)
    assert torch.equal(stream[0], x[..., -1:])
    with torch.no_grad():  # an empty chunk emits nothing and keeps the context
        assert t(x[..., :0], stream).shape == (2, 3, 0)
    assert torch.equal(stream[0], x[..., -1:])


# --- weight-norm folding -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["conv", "depthwise", "transposed"])
def test_fold_is_exact_and_load_refreshes_it(kind: str) -> None:
    make = {
        "conv": lambda seed: conv(4, 6, 3, dilation=3, left_pad=6, seed=seed),
        "depthwise": lambda seed: conv(4, 4, 7, groups=4, left_pad=6, seed=seed),
        "transposed": lambda seed: tconv(4, 3, 4, seed=seed),
    }[kind]
    m, other = make(0), make(1)
    x = torch.randn(2, 4, 9)
    keys = list(m.state_dict())
    with torch.no_grad():
        ref = m(x)
        m.fold()
        assert m.folded_weight is not None and list(m.state_dict()) == keys  # the cache is not saved
        assert torch.equal(m.weight(), torch._weight_norm(m.weight_v, m.weight_g, 0))
        assert torch.equal(m(x), ref)  # tolerance 0: the cache holds the very same kernel's output
        m.load_state_dict(other.state_dict())  # must not keep serving the old weight
        assert torch.equal(m(x), other(x)) and not torch.equal(m(x), ref)
        m.weight_g.mul_(2)  # while folded, the cached weight is used as is
        assert torch.equal(m(x), other(x))
        m.unfold()
        assert m.folded_weight is None
        assert not torch.equal(m(x), other(x))
        other.weight_g.mul_(2)
        assert torch.equal(m(x), other(x))


def test_folded_weight_takes_no_gradient() -> None:
    c = conv(4, 6, 3, left_pad=2)
    x = torch.randn(1, 4, 5)
    c(x).sum().backward()
    assert c.weight_g.grad is not None and c.weight_v.grad is not None
    c.zero_grad(set_to_none=True)
    c.fold()
    out = c(x)
    out.sum().backward()
    assert c.weight_g.grad is None and c.weight_v.grad is None and c.bias.grad is not None


def test_meta_device_build_has_shapes_only() -> None:
    with torch.device("meta"):
        c = CausalConv1d(8, 16, 7, groups=2, left_pad=6)
        t = CausalConvTranspose1d(16, 8, 4)
    assert c.weight_v.is_meta and c.weight_v.shape == (16, 4, 7) and c.in_channels == 8
    assert t.weight_v.is_meta and t.weight_v.shape == (16, 8, 8)


def test_fresh_init_is_a_unit_weight_norm() -> None:
    """Fresh layers start as weight_norm(nn.Conv1d) does: g = ||v||, so the weight equals v."""
    torch.manual_seed(0)
    for m in (CausalConv1d(4, 6, 7, left_pad=6), CausalConvTranspose1d(4, 3, 2)):
        torch.testing.assert_close(m.weight(), m.weight_v.detach(), atol=1e-6, rtol=1e-6)
        assert m.bias.abs().max() <= 1 / (m.weight_v[0].numel() ** 0.5)
