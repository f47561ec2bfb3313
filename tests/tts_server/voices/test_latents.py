"""The latents wire codec: round trip, and every malformed input refused with the field named."""

import base64

import numpy as np
import pytest
import torch

from tts_server.errors import ApiError
from tts_server.voices.inputs import check_latents
from tts_server.voices.latents import MAX_LATENT_ABS, latents_from_json, latents_to_json

DIMS = {"patch_size": 4, "latent_dim": 64, "max_patches": 10}


def _decode(obj, field="prompt_latents", **overrides):
    return latents_from_json(obj, field, **{**DIMS, **overrides})


def _wire(shape=(3, 4, 64), fill=None):
    t = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) if fill is None else torch.full(shape, fill)
    return latents_to_json(t)


def _error(obj, **overrides) -> ApiError:
    with pytest.raises(ApiError) as err:
        _decode(obj, **overrides)
    return err.value


def test_round_trip_is_exact_and_little_endian():
    t = torch.randn(5, 4, 64, generator=torch.Generator().manual_seed(1))
    wire = latents_to_json(t)
    assert wire["dtype"] == "float32" and wire["shape"] == [5, 4, 64]
    raw = base64.b64decode(wire["data"])
    np.testing.assert_array_equal(np.frombuffer(raw, "<f4").reshape(5, 4, 64), t.numpy())
    back = _decode(wire)
    assert back.dtype == torch.float32 and back.is_contiguous() and torch.equal(back, t)
    back += 1  # owns writable memory (not a view of the request's bytes)
    # bf16 / non-contiguous inputs are sent as float32
    assert torch.equal(_decode(latents_to_json(t.transpose(0, 0).to(torch.bfloat16))), t.to(torch.bfloat16).float())


@pytest.mark.parametrize(
    "mutate, field, words",
    [
        (lambda w: [1, 2], "prompt_latents", "must be an object"),
        (lambda w: {**w, "extra": 1}, "prompt_latents.extra", "unknown key"),
        (lambda w: {k: v for k, v in w.items() if k != "data"}, "prompt_latents.data", "required"),
        (lambda w: {**w, "dtype": "float16"}, "prompt_latents.dtype", "float32"),
        (lambda w: {**w, "shape": [3, 4]}, "prompt_latents.shape", "3 integers"),
        (lambda w: {**w, "shape": [3, 4, 64.0]}, "prompt_latents.shape", "3 integers"),
        (lambda w: {**w, "shape": [3, True, 64]}, "prompt_latents.shape", "3 integers"),
        (lambda w: {**w, "shape": "3,4,64"}, "prompt_latents.shape", "3 integers"),
        (lambda w: {**w, "shape": [3, 2, 64]}, "prompt_latents.shape", "[T, 4, 64]"),
        (lambda w: {**w, "shape": [3, 4, 32]}, "prompt_latents.shape", "[T, 4, 64]"),
        (lambda w: {**w, "shape": [0, 4, 64], "data": ""}, "prompt_latents.shape", "T >= 1"),
        (lambda w: {**w, "data": 5}, "prompt_latents.data", "base64 string"),
        (lambda w: {**w, "shape": [2, 4, 64]}, "prompt_latents.data", "needs 2048 bytes"),
        (lambda w: {**w, "data": "!" * len(w["data"])}, "prompt_latents.data", "not valid base64"),
    ],
)
def test_malformed_latents_name_the_field(mutate, field, words):
    err = _error(mutate(_wire()))
    assert (err.status, err.field) == (400, field) and words in err.message and err.message.startswith(field)


def test_non_finite_values_and_the_size_limit():
    err = _error(_wire(fill=float("nan")))
    assert (err.status, err.field) == (400, "prompt_latents.data") and "NaN" in err.message
    assert _error(_wire(fill=float("inf"))).field == "prompt_latents.data"
    err = _error(_wire(shape=(11, 4, 64)))
    assert (err.status, err.field, err.type) == (413, "prompt_latents.shape", "too_large")
    assert _decode(_wire(shape=(10, 4, 64))).shape == (10, 4, 64)  # the limit itself is allowed


@pytest.mark.parametrize("peak", [3e38, -3e38, 1e6, MAX_LATENT_ABS * 1.01])
def test_finite_but_huge_values_are_refused(peak):
    # 3e38 is finite float32, yet the model turns it into silence: a 400, not a 200 with no audio.
    t = torch.randn(3, 4, 64, generator=torch.Generator().manual_seed(2))
    t[1, 2, 3] = peak
    err = _error(latents_to_json(t))
    assert (err.status, err.field) == (400, "prompt_latents.data")
    assert "magnitude" in err.message and f"{MAX_LATENT_ABS:g}" in err.message
    with pytest.raises(ApiError) as stored:  # the voice store's check (uploaded, on disk, encoded) agrees
        check_latents(t, "ref_latents", **DIMS)
    assert (stored.value.status, stored.value.field) == (400, "ref_latents") and "magnitude" in stored.value.message


def test_latents_of_real_scale_pass_up_to_the_bound():
    # Encoder output is of order one (tens at most); the bound itself is allowed.
    t = 30 * torch.randn(3, 4, 64, generator=torch.Generator().manual_seed(3)).clamp(-1, 1)
    t[0, 0, 0] = -MAX_LATENT_ABS
    assert torch.equal(_decode(latents_to_json(t)), t)
    assert torch.equal(check_latents(t, "prompt_latents", **DIMS), t)


def test_the_field_name_is_the_callers():
    assert _error({"dtype": "float32"}, field="ref_latents").field == "ref_latents.shape"
