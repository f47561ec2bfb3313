"""Tests of tts_server.voices.inputs: a new voice's parts validated, every 4xx naming its field."""

import io
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import save as save_safetensors

from tests.tts_server.serving import sine_wav
from tts_server.errors import ApiError
from tts_server.voices import files as vf
from tts_server.voices.inputs import (
    MAX_PROMPT_TEXT_CHARS,
    audio_seconds,
    bad,
    check_inputs,
    check_latents,
    check_safetensors,
    decode_audio,
    lora_document,
)
from voxcpm_engine.io.prompt_audio import AudioLimits

DIMS = {"patch_size": 4, "latent_dim": 64, "max_patches": 10}
GEOMETRY = {"model_version": 2, **DIMS}
WAV = sine_wav(0.5)
WEIGHTS = save_safetensors({"lora_A": torch.zeros(4, 8)})
CONFIG = {"r": 4, "alpha": 8}
GOOD = torch.zeros(2, 4, 64)


def _inputs(**parts):
    names = ("prompt_audio", "prompt_text", "prompt_latents", "ref_audio", "ref_latents", "weights", "config")
    return check_inputs(*(parts.get(n) for n in names), **{**GEOMETRY, **parts.get("geometry", {})})


def _error(fn, *args, **kwargs) -> ApiError:
    with pytest.raises(ApiError) as err:
        fn(*args, **kwargs)
    return err.value


def test_bad_names_the_field_and_types_413_as_too_large():
    err = bad("ref_audio", "is odd")
    assert (err.status, err.field, err.type, err.message) == (400, "ref_audio", "invalid_request", "ref_audio: is odd")
    err = bad("ref_latents", "too long", 413)
    assert (err.status, err.type) == (413, "too_large")


def test_every_kind_of_voice_and_their_combination_passes():
    prompt = _inputs(prompt_audio=WAV, prompt_text="A prompt.")
    assert (prompt.prompt_audio, prompt.prompt_text, prompt.prompt_latents, prompt.lora) == (
        WAV,
        "A prompt.",
        None,
        None,
    )
    ref = _inputs(ref_latents=torch.ones(3, 4, 64, dtype=torch.bfloat16))
    assert ref.ref_latents.dtype == torch.float32 and torch.equal(ref.ref_latents, torch.ones(3, 4, 64))
    combo = _inputs(prompt_latents=GOOD, prompt_text="Hi.", ref_audio=WAV, weights=WEIGHTS, config=CONFIG)
    assert torch.equal(combo.prompt_latents, GOOD) and combo.ref_audio == WAV
    weights, document = combo.lora
    assert weights == WEIGHTS and json.loads(document) == {"base_model": None, "lora_config": CONFIG}


@pytest.mark.parametrize(
    "parts, status, field, words",
    [
        ({}, 400, None, "a voice needs"),
        ({"prompt_text": "x"}, 400, "prompt_text", "without prompt_audio"),
        ({"prompt_audio": WAV}, 400, "prompt_text", "required"),
        ({"prompt_latents": GOOD}, 400, "prompt_text", "required"),
        ({"prompt_audio": WAV, "prompt_text": " \n"}, 400, "prompt_text", "non-empty string"),
        (
            {"prompt_audio": WAV, "prompt_text": "x" * (MAX_PROMPT_TEXT_CHARS + 1)},
            400,
            "prompt_text",
            "longer than 2000",
        ),
        ({"prompt_audio": WAV, "prompt_latents": GOOD, "prompt_text": "x"}, 400, "prompt_latents", "alternatives"),
        ({"ref_audio": WAV, "ref_latents": GOOD}, 400, "ref_latents", "alternatives"),
        ({"ref_audio": WAV, "geometry": {"model_version": 1}}, 400, "ref_audio", "need a VoxCPM2 model"),
        ({"ref_latents": GOOD, "geometry": {"model_version": 1}}, 400, "ref_latents", "VoxCPM1"),
        ({"weights": WEIGHTS}, 400, "lora_config", "give both"),
        ({"config": CONFIG}, 400, "lora_weights", "give both"),
        ({"prompt_audio": b"", "prompt_text": "x"}, 400, "prompt_audio", "non-empty bytes"),
        ({"ref_audio": "text, not bytes"}, 400, "ref_audio", "non-empty bytes"),
        ({"weights": b"", "config": CONFIG}, 400, "lora_weights", "non-empty bytes"),
        ({"weights": b"0" * 64, "config": CONFIG}, 400, "lora_weights", "not a safetensors file"),
        ({"weights": WEIGHTS, "config": [1]}, 400, "lora_config", "must be an object, got list"),
        ({"prompt_latents": torch.zeros(2, 2, 64), "prompt_text": "x"}, 400, "prompt_latents", "[T, 4, 64]"),
        ({"ref_latents": torch.zeros(11, 4, 64)}, 413, "ref_latents", "11 patches exceed the limit of 10"),
        ({"ref_latents": torch.full((2, 4, 64), float("inf"))}, 400, "ref_latents", "NaN or infinite"),
    ],
)
def test_invalid_parts_name_the_field(parts, status, field, words):
    err = _error(_inputs, **parts)
    assert (err.status, err.field) == (status, field) and words in err.message, err.message
    if field is not None:
        assert err.message.startswith(f"{field}: ")


@pytest.mark.parametrize(
    "value, words",
    [
        (np.zeros((2, 4, 64), dtype=np.float32), "must be a tensor, got ndarray"),
        (torch.zeros(4, 64), "must have shape [T, 4, 64], got [4, 64]"),
        (torch.zeros(0, 4, 64), "must have shape [T, 4, 64], got [0, 4, 64]"),
        (torch.zeros(2, 4, 32), "got [2, 4, 32]"),
        (torch.zeros(2, 4, 64, dtype=torch.int32), "must be floating point, got torch.int32"),
        (torch.full((2, 4, 64), float("nan")), "contains NaN or infinite values"),
        (torch.full((2, 4, 64), 2000.0), "has values up to 2e+03 in magnitude"),
    ],
)
def test_check_latents_refusals(value, words):
    err = _error(check_latents, value, "prompt_latents", **DIMS)
    assert (err.status, err.field) == (400, "prompt_latents") and words in err.message, err.message


def test_check_latents_returns_contiguous_fp32_and_limits_only_new_input():
    t = torch.arange(2 * 64 * 4, dtype=torch.float64).reshape(2, 64, 4).transpose(1, 2) / 1000
    out = check_latents(t, "ref_latents", **DIMS)
    assert out.dtype == torch.float32 and out.is_contiguous() and torch.equal(out, t.float())
    long = torch.zeros(11, 4, 64)
    assert _error(check_latents, long, "ref_latents", **DIMS).status == 413
    assert check_latents(long, "ref_latents", **DIMS, limit=False).shape == (11, 4, 64)  # stored voices still load


def test_lora_document_accepts_the_whole_document_or_its_inner_object():
    whole = {"base_model": "VoxCPM2", "lora_config": CONFIG}
    assert json.loads(lora_document(whole)) == whole
    assert json.loads(lora_document(CONFIG)) == {"base_model": None, "lora_config": CONFIG}
    assert json.loads(lora_document({"note": "é"}).decode())["lora_config"] == {"note": "é"}  # UTF-8, not escaped
    err = _error(lora_document, {"r": "x" * vf.MAX_JSON_BYTES})
    assert (err.status, err.field) == (400, "lora_config") and "larger than 1048576 bytes" in err.message
    assert _error(lora_document, "r=4").message == "lora_config: must be an object, got str"


@pytest.mark.parametrize(
    "data",
    [b"", b"1234567", (5).to_bytes(8, "little") + b"[1,2]", (100).to_bytes(8, "little") + b"{}", WEIGHTS[:-200][:20]],
)
def test_check_safetensors_refuses_what_is_not_one(data):
    assert _error(check_safetensors, data).field == "lora_weights"


def test_check_safetensors_accepts_a_real_file():
    check_safetensors(WEIGHTS)
    check_safetensors(save_safetensors({}))  # framing only: an empty file is the engine's to judge


def test_audio_seconds_reads_the_header():
    assert audio_seconds(sine_wav(1.25), "prompt_audio") == 1.25
    limits = AudioLimits(max_seconds=1.0)
    err = _error(audio_seconds, sine_wav(1.25), "ref_audio", limits)
    assert (err.status, err.field, err.type) == (413, "ref_audio", "too_large")
    assert err.message == "ref_audio: 1.25 s of audio exceeds the limit of 1 s"  # no "<bytes>:" prefix
    err = _error(audio_seconds, b"not audio at all", "prompt_audio")
    assert (err.status, err.field) == (400, "prompt_audio") and "cannot decode" in err.message
    err = _error(audio_seconds, sine_wav(0.5, sample_rate=4000), "prompt_audio", limits)
    assert (err.status, err.field) == (400, "prompt_audio") and "below the minimum of 8000 Hz" in err.message


def test_decode_audio_gives_mono_float32_at_the_target_rate():
    buf = io.BytesIO()
    t = np.arange(22050) / 22050
    stereo = np.stack([0.3 * np.sin(2 * np.pi * 220 * t), np.zeros_like(t)], axis=1).astype(np.float32)
    sf.write(buf, stereo, 22050, format="FLAC")
    samples, seconds = decode_audio(buf.getvalue(), "prompt_audio", target_sr=16000, limits=AudioLimits(5.0))
    assert seconds == 1.0 and samples.dtype == np.float32 and samples.shape == (16000,)
    assert 0.1 < np.abs(samples).max() < 0.2  # the two channels averaged
    err = _error(decode_audio, sine_wav(2.0), "ref_audio", target_sr=16000, limits=AudioLimits(1.5))
    assert (err.status, err.field) == (413, "ref_audio")
