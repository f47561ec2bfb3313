"""End-to-end parity on synthetic checkpoints: the reference loads the same directory we do.

Both sides start from the files (config, weights, tokenizer, prompt audio on disk), so this covers
the loader, tokenizer, audio front end, prefill layouts, AR loop and VAE decode/crop together.
The reference draws its noise from the global CPU generator (``torch.manual_seed`` right before
the call); ours from a per-request ``torch.Generator`` with the same seed: the same stream.

Tolerance: 0 for latents and waveforms. Same ops in the same order on the same CPU give the same
bits; any non-zero difference is a behavioural divergence, not rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("voxcpm")
pytest.importorskip("transformers")

from voxcpm.model import VoxCPM2Model as RefV2
from voxcpm.model import VoxCPMModel as RefV1

from voxcpm_engine.single.synthesizer import Synthesizer
from voxcpm_engine.tools.synthetic import write_checkpoint
from voxcpm_engine.types import GenerationParams

STEPS = 5
TEXT = "Hello world, parity test."
PROMPT_TEXT = "This is the prompt."


def _tone(sr: int, seconds: float, channels: int = 1) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    wav = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + 0.4 * np.sin(2 * np.pi * 2.5 * t))
    return np.stack([wav] * channels, axis=1) if channels > 1 else wav


def _pair(path, ref_cls):
    ref = ref_cls.from_local(str(path), optimize=False, device="cpu")
    return Synthesizer.from_dir(path, device="cpu"), ref


@pytest.fixture(scope="module")
def v1(tmp_path_factory):
    return _pair(write_checkpoint("tiny-v1", tmp_path_factory.mktemp("p") / "tiny-v1", seed=3), RefV1)


@pytest.fixture(scope="module")
def v2(tmp_path_factory):
    return _pair(write_checkpoint("tiny-v2", tmp_path_factory.mktemp("p") / "tiny-v2", seed=3), RefV2)


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    """Prompt files at each VAE's rate (the reference's resamplers are stubbed out)."""
    root = tmp_path_factory.mktemp("audio")
    paths = {}
    for name, sr, seconds, channels in [("p44", 44100, 0.9, 2), ("p16", 16000, 1.1, 1), ("r16", 16000, 0.7, 1)]:
        paths[name] = root / f"{name}.wav"
        sf.write(paths[name], _tone(sr, seconds, channels), sr, subtype="FLOAT")
    return paths


def _ours(synth: Synthesizer, seed: int, steps: int = STEPS, **voice):
    params = GenerationParams(min_steps=steps, max_steps=steps, seed=seed)
    v = synth.make_voice(**voice)
    prefill, max_steps = synth.prepare(TEXT, v, params)
    patches = torch.stack(list(synth._run(prefill, max_steps, params)))
    return patches, synth.generate(TEXT, v, params)


def _reference(ref, seed: int, cache, steps: int = STEPS):
    torch.manual_seed(seed)
    wav, _tokens, feats = ref.generate_with_prompt_cache(
        target_text=TEXT, prompt_cache=cache, min_len=steps, max_len=steps, inference_timesteps=10, cfg_value=2.0
    )
    return feats, wav.reshape(-1).float().numpy()


def _assert_same(ours, theirs):
    patches, wav = ours
    feats, ref_wav = theirs
    assert patches.shape == feats.shape
    assert float((patches.float() - feats.float()).abs().max()) == 0.0
    assert wav.shape == ref_wav.shape
    assert float(np.abs(wav - ref_wav).max()) == 0.0


def test_v1_zero_shot(v1):
    synth, ref = v1
    _assert_same(_ours(synth, 11), _reference(ref, 11, None))


def test_v1_continuation(v1, audio):
    synth, ref = v1
    cache = ref.build_prompt_cache(prompt_text=PROMPT_TEXT, prompt_wav_path=str(audio["p44"]))
    ours = _ours(synth, 12, prompt_text=PROMPT_TEXT, prompt_audio=audio["p44"])
    feats, ref_wav = _reference(ref, 12, cache)
    # The v1 prompt-cache path returns its 2 context patches in front of the new ones (spec §6.5).
    assert torch.equal(feats[:2].float(), cache["audio_feat"][-2:].to(torch.bfloat16).float())
    _assert_same(ours, (feats[2:], ref_wav))


@pytest.mark.parametrize("mode", ["zero_shot", "continuation", "reference", "ref_continuation"])
def test_v2_modes(v2, audio, mode):
    synth, ref = v2
    voice, cache_args = {}, {}
    if mode in ("continuation", "ref_continuation"):
        voice.update(prompt_text=PROMPT_TEXT, prompt_audio=audio["p16"])
        cache_args.update(prompt_text=PROMPT_TEXT, prompt_wav_path=str(audio["p16"]))
    if mode in ("reference", "ref_continuation"):
        voice.update(ref_audio=audio["r16"])
        cache_args.update(reference_wav_path=str(audio["r16"]))
    cache = ref.build_prompt_cache(**cache_args) if cache_args else None
    _assert_same(_ours(synth, 21, **voice), _reference(ref, 21, cache))


def test_prompt_latents_equal_reference_encoding(v1, v2, audio):
    for (synth, ref), name, kwargs in [
        (v1, "p44", {}),
        (v2, "p16", {}),
        (v2, "r16", {"reference": True}),
    ]:
        if kwargs:
            cache = ref.build_prompt_cache(reference_wav_path=str(audio[name]))
            theirs = cache["ref_audio_feat"]
        else:
            theirs = ref.build_prompt_cache(prompt_text="x", prompt_wav_path=str(audio[name]))["audio_feat"]
        ours = synth.encode_prompt(audio[name], **kwargs)
        assert ours.shape == theirs.shape and torch.equal(ours, theirs.float())


@pytest.mark.slow
def test_full_size_voxcpm15_few_steps(tmp_path_factory, audio):
    """The released VoxCPM1.5 shapes (801.7 M + 86.5 M parameters), zero-shot and continuation."""
    path = write_checkpoint("voxcpm1.5", tmp_path_factory.mktemp("full") / "voxcpm1.5", seed=0)
    synth, ref = _pair(path, RefV1)
    _assert_same(_ours(synth, 5, steps=3), _reference(ref, 5, None, steps=3))
    cache = ref.build_prompt_cache(prompt_text=PROMPT_TEXT, prompt_wav_path=str(audio["p44"]))
    feats, ref_wav = _reference(ref, 6, cache, steps=3)
    ours = _ours(synth, 6, steps=3, prompt_text=PROMPT_TEXT, prompt_audio=audio["p44"])
    _assert_same(ours, (feats[2:], ref_wav))
