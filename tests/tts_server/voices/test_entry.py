"""Tests of tts_server.voices.entry: the voice record, its states, its description and its voice.json round trip."""

import dataclasses

import pytest
import torch

from tts_server.voices import files as vf
from tts_server.voices.entry import ResolvedVoice, VoiceEntry, VoiceState, entry_from_files
from voxcpm_engine.single.synthesizer import Voice

MODEL = {"version": 2, "patch_size": 4, "latent_dim": 64}
DIMS = {"patch_size": 4, "latent_dim": 64, "max_patches": 10}
PROMPT = torch.randn(3, 4, 64, generator=torch.Generator().manual_seed(0))
REF = torch.randn(2, 4, 64, generator=torch.Generator().manual_seed(1))


def _entry(**fields) -> VoiceEntry:
    base = dict(name="v", state=VoiceState.READY, voice=Voice("Hello.", PROMPT, REF), lora=True, prompt_seconds=1.5,
                ref_seconds=2.0, created="2024-01-01T00:00:00Z", updated="2024-01-02T00:00:00Z")  # fmt: skip
    return VoiceEntry(**{**base, **fields})


def test_states_and_their_wire_values():
    assert [s.value for s in VoiceState] == ["loading", "ready", "removing", "failed"]
    assert VoiceState("failed") is VoiceState.FAILED


def test_kinds_follow_what_the_voice_holds():
    assert _entry().kinds == ["lora", "prompt", "reference"]
    assert _entry(lora=False, voice=Voice("Hi.", PROMPT)).kinds == ["prompt"]
    assert _entry(lora=False, voice=Voice(ref_latents=REF)).kinds == ["reference"]
    assert _entry(voice=Voice()).kinds == ["lora"]
    assert VoiceEntry("x", VoiceState.LOADING).kinds == []


def test_describe_is_the_public_shape():
    assert _entry().describe() == {
        "name": "v", "state": "ready", "kinds": ["lora", "prompt", "reference"], "prompt_text": "Hello.",
        "prompt_seconds": 1.5, "ref_seconds": 2.0, "created": "2024-01-01T00:00:00Z",
        "updated": "2024-01-02T00:00:00Z",
    }  # fmt: skip
    failed = VoiceEntry("bad", VoiceState.FAILED, error="sha256 mismatch").describe()
    assert failed["state"] == "failed" and failed["error"] == "sha256 mismatch" and failed["kinds"] == []
    assert "error" not in _entry().describe()


def test_entries_are_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        _entry().state = VoiceState.REMOVING  # type: ignore[misc]
    assert ResolvedVoice(Voice()).lora is None


def test_document_then_files_round_trip(tmp_path):
    entry = _entry()
    doc = entry.document(MODEL)
    assert doc == {
        "format": vf.FORMAT_VERSION, "name": "v", "kinds": {"lora": True, "prompt": True, "reference": True},
        "prompt_text": "Hello.", "prompt_seconds": 1.5, "ref_seconds": 2.0, "created": "2024-01-01T00:00:00Z",
        "updated": "2024-01-02T00:00:00Z", "model": MODEL,
    }  # fmt: skip
    lora = (b"weights", b"{}")  # read_voice checks only the files' presence and hashes
    staging = vf.stage(tmp_path, "v", doc, {"prompt": PROMPT, "reference": REF}, lora)
    vf.commit(tmp_path, staging, tmp_path / "v")
    back = entry_from_files("v", vf.read_voice(tmp_path / "v", MODEL), **DIMS)
    assert back.describe() == entry.describe() and back.lora and back.state is VoiceState.READY
    assert torch.equal(back.voice.prompt_latents, PROMPT) and torch.equal(back.voice.ref_latents, REF)


def test_a_reference_only_voice_has_no_prompt_text():
    files = vf.VoiceFiles({"prompt_text": "ignored", "ref_seconds": "2"}, None, REF, None)
    entry = entry_from_files("r", files, **DIMS)
    assert entry.kinds == ["reference"] and entry.voice.prompt_text is None
    assert entry.ref_seconds is None and entry.created is None  # a non-number is dropped, not trusted


def test_stored_latents_over_the_new_input_limit_still_load():
    long = torch.zeros(20, 4, 64)
    entry = entry_from_files("l", vf.VoiceFiles({}, None, long, None), **DIMS)
    assert entry.voice.ref_latents.shape == (20, 4, 64)


@pytest.mark.parametrize(
    "latents, words",
    [
        (torch.zeros(2, 4, 32), "ref_latents: must have shape [T, 4, 64]"),
        (torch.full((2, 4, 64), float("nan")), "ref_latents: contains NaN"),
        (torch.zeros(2, 4, 64, dtype=torch.int64), "ref_latents: must be floating point"),
    ],
)
def test_bad_stored_latents_are_a_voice_file_error(latents, words):
    with pytest.raises(vf.VoiceFileError, match=words.replace("[", r"\[")):
        entry_from_files("x", vf.VoiceFiles({}, None, latents, None), **DIMS)
