import numpy as np
import pytest
import soundfile as sf
import torch

from voxcpm_engine.io.prompt_audio import load_audio
from voxcpm_engine.single.synthesizer import Synthesizer
from voxcpm_engine.types import GenerationParams, Voice


@pytest.fixture(scope="module")
def synth_v1(tiny_v1):
    return Synthesizer.from_dir(tiny_v1, device="cpu")


@pytest.fixture(scope="module")
def synth_v2(tiny_v2):
    return Synthesizer.from_dir(tiny_v2, device="cpu")


@pytest.fixture(scope="module")
def prompt_wav(tmp_path_factory):
    """1.3 s of stereo noise-modulated tone at 22.05 kHz (so it is downmixed and resampled)."""
    sr = 22050
    t = np.arange(int(1.3 * sr)) / sr
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    path = tmp_path_factory.mktemp("audio") / "prompt.flac"
    sf.write(path, np.stack([tone, 0.5 * tone], axis=1), sr)
    return path


def _params(n, seed=7, **kw):
    return GenerationParams(min_steps=n, max_steps=n, seed=seed, **kw)


@pytest.mark.parametrize("name", ["synth_v1", "synth_v2"])
def test_zero_shot_length_rate_and_seed(request, name):
    synth = request.getfixturevalue(name)
    a = synth.generate("Hello world.", params=_params(5))
    assert a.dtype == np.float32 and a.shape == (5 * synth.config.samples_per_patch,)
    assert np.isfinite(a).all() and np.abs(a).max() > 0
    assert np.array_equal(a, synth.generate("Hello world.", params=_params(5)))
    assert not np.array_equal(a, synth.generate("Hello world.", params=_params(5, seed=8)))


def test_temperature_scales_the_noise(synth_v1):
    # With no noise at all the result cannot depend on the seed.
    a = synth_v1.generate("Hi.", params=_params(3, seed=1, temperature=0.0))
    b = synth_v1.generate("Hi.", params=_params(3, seed=2, temperature=0.0))
    assert np.array_equal(a, b)


def test_default_length_follows_the_reference_rule(synth_v1):
    n_tokens = len(synth_v1.tokenizer.encode("Hi."))
    wav = synth_v1.generate("Hi.", params=GenerationParams(seed=0))
    assert wav.shape[0] == (6 * n_tokens + 10) * synth_v1.config.samples_per_patch  # synthetic: never stops


@pytest.mark.parametrize("name", ["synth_v1", "synth_v2"])
def test_continuation_from_audio_equals_from_latents(request, name, prompt_wav):
    synth = request.getfixturevalue(name)
    voice = synth.make_voice(prompt_text="A prompt.", prompt_audio=prompt_wav)
    latents = voice.prompt_latents
    assert latents.dtype == torch.float32 and latents.shape[1:] == (synth.config.patch_size, 64)
    frames = synth.config.encode_sample_rate * 1.3 / synth.vae.encode_hop
    assert latents.shape[0] == -(-int(np.ceil(frames)) // synth.config.patch_size)
    a = synth.generate("Then this.", voice, _params(4))
    b = synth.generate("Then this.", Voice(prompt_text="A prompt.", prompt_latents=latents), _params(4))
    assert np.array_equal(a, b) and a.shape == (4 * synth.config.samples_per_patch,)


def test_streaming_equals_whole_utterance(synth_v2, prompt_wav):
    for voice in (Voice(), synth_v2.make_voice(prompt_text="A prompt.", prompt_audio=prompt_wav, ref_audio=prompt_wav)):
        whole = synth_v2.generate("Streaming test.", voice, _params(6))
        chunks = list(synth_v2.stream("Streaming test.", voice, _params(6)))
        assert [len(c) for c in chunks] == [synth_v2.config.samples_per_patch] * 6
        # fp32 VAE, different conv lengths: rounding only (measured up to 2.1e-5 on an AMD EPYC host)
        np.testing.assert_allclose(np.concatenate(chunks), whole, atol=1e-4, rtol=0)


def test_v1_streaming_equals_whole_utterance(synth_v1, prompt_wav):
    voice = synth_v1.make_voice(prompt_text="A prompt.", prompt_audio=prompt_wav)
    whole = synth_v1.generate("Streaming test.", voice, _params(5))
    np.testing.assert_allclose(
        np.concatenate(list(synth_v1.stream("Streaming test.", voice, _params(5)))), whole, atol=1e-5
    )


def test_reference_voice_changes_the_output(synth_v2, prompt_wav):
    plain = synth_v2.generate("Voice.", params=_params(4))
    ref = synth_v2.generate("Voice.", synth_v2.make_voice(ref_audio=prompt_wav), _params(4))
    assert plain.shape == ref.shape and not np.array_equal(plain, ref)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"prompt_text": "only text"}, "prompt_text and prompt audio"),
        ({"ref_audio": b"not audio at all"}, "reference voices need a VoxCPM2"),
    ],
)
def test_bad_voices_v1(synth_v1, kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        synth_v1.make_voice(**kwargs)


def test_undecodable_prompt_audio(synth_v2):
    with pytest.raises(ValueError):
        synth_v2.make_voice(prompt_text="x", prompt_audio=b"RIFF....garbage")


@pytest.mark.parametrize("name", ["synth_v1", "synth_v2"])
def test_encode_prompt_of_decoded_samples_equals_of_the_file(request, name, prompt_wav):
    """What the engine process gets (samples the server decoded) encodes exactly as the file does."""
    synth = request.getfixturevalue(name)
    samples = load_audio(prompt_wav, synth.config.encode_sample_rate)
    assert torch.equal(synth.encode_prompt(samples), synth.encode_prompt(prompt_wav))
    if synth.config.version == 2:
        assert torch.equal(
            synth.encode_prompt(samples, reference=True), synth.encode_prompt(prompt_wav, reference=True)
        )
    for bad, match in [
        (samples.astype(np.float64), "1-D float32"),
        (np.stack([samples, samples]), "1-D float32"),
        (samples[:0], "empty"),
        (np.full(8, np.inf, np.float32), "NaN or infinite"),
    ]:
        with pytest.raises(ValueError, match=match):
            synth.encode_prompt(bad)


def test_empty_text(synth_v1):
    with pytest.raises(ValueError, match="text must not be empty"):
        synth_v1.generate("  \n ", params=_params(2))


@pytest.mark.parametrize(
    ("field", "value"),
    [("cfg_value", -1.0), ("inference_timesteps", 0), ("min_steps", -1), ("max_steps", 0), ("temperature", -0.5)],
)
def test_invalid_params_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        GenerationParams(**{field: value})
