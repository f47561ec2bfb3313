"""LoRA parity with the reference (voxcpm 2.0.3) on synthetic checkpoints and adapters, CPU bf16.

The reference enables LoRA in its constructor (``from_local(..., lora_config=...)``: LoRALinear
wrapping before the bf16 cast and the base-weight load), then copies the adapter in with
``load_lora_weights``. Ours loads the plain checkpoint and runs the single-request path under
:func:`voxcpm_engine.lora.layers.apply_single_adapter`. Both generate from the same seed.

Tolerance: 0 for latents and waveforms. Every switch is on (LM, DiT, projections; v2 includes
``fusion_concat_proj``), so every LoRA site of both architectures is exercised.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("voxcpm")
pytest.importorskip("transformers")

from voxcpm.model import VoxCPM2Model as RefV2
from voxcpm.model import VoxCPMModel as RefV1
from voxcpm.model.voxcpm import LoRAConfig as RefLoRAV1
from voxcpm.model.voxcpm2 import LoRAConfig as RefLoRAV2

from voxcpm_engine.io.lora_files import load_adapter
from voxcpm_engine.lora.layers import apply_single_adapter
from voxcpm_engine.single.synthesizer import Synthesizer
from voxcpm_engine.tools.synthetic import write_checkpoint
from voxcpm_engine.tools.synthetic_lora import write_lora
from voxcpm_engine.types import GenerationParams

STEPS = 5
TEXT = "Hello world, LoRA parity test."
PROMPT_TEXT = "This is the prompt."


def _setup(tmp_path_factory, preset, ref_cls, ref_lora_cls, rank):
    root = tmp_path_factory.mktemp("lora-parity")
    ckpt = write_checkpoint(preset, root / preset, seed=3)
    lora_dir = write_lora(ckpt, root / "adapter", rank=rank, seed=5, enable_proj=True)
    fields = json.loads((lora_dir / "lora_config.json").read_text())["lora_config"]
    ref = ref_cls.from_local(str(ckpt), optimize=False, device="cpu", lora_config=ref_lora_cls(**fields))
    loaded, skipped = ref.load_lora_weights(str(lora_dir))
    synth = Synthesizer.from_dir(ckpt, device="cpu")
    adapter = load_adapter(lora_dir, synth.config)
    # Every tensor of the file found a home in the reference, and it has no LoRA layer we lack.
    assert skipped == [] and len(loaded) == 2 * len(adapter.targets)
    ref_layers = {k.rsplit(".", 1)[0] for k in ref.state_dict() if k.endswith(".lora_A")}
    assert ref_layers == set(adapter.targets)
    return synth, ref, adapter


@pytest.fixture(scope="module")
def v1(tmp_path_factory):
    return _setup(tmp_path_factory, "tiny-v1", RefV1, RefLoRAV1, rank=8)


@pytest.fixture(scope="module")
def v2(tmp_path_factory):
    return _setup(tmp_path_factory, "tiny-v2", RefV2, RefLoRAV2, rank=16)


def _ours(synth: Synthesizer, adapter, seed: int, **voice):
    params = GenerationParams(min_steps=STEPS, max_steps=STEPS, seed=seed)
    v = synth.make_voice(**voice)
    with apply_single_adapter(synth.model, adapter):
        prefill, max_steps = synth.prepare(TEXT, v, params)
        patches = torch.stack(list(synth._run(prefill, max_steps, params)))
        wav = synth.generate(TEXT, v, params)
    plain = torch.stack(list(synth._run(prefill, max_steps, params)))
    return patches, wav, plain


def _reference(ref, seed: int, cache=None):
    torch.manual_seed(seed)
    wav, _tokens, feats = ref.generate_with_prompt_cache(
        target_text=TEXT, prompt_cache=cache, min_len=STEPS, max_len=STEPS, inference_timesteps=10, cfg_value=2.0
    )
    return feats, wav.reshape(-1).float().numpy()


def _assert_same(ours, theirs):
    patches, wav, plain = ours
    feats, ref_wav = theirs
    assert patches.shape == feats.shape
    latent_diff = float((patches.float() - feats.float()).abs().max())
    wav_diff = float(np.abs(wav - ref_wav).max()) if wav.shape == ref_wav.shape else float("inf")
    print(f"max |ours - reference|: latents {latent_diff}, waveform {wav_diff}")
    assert latent_diff == 0.0 and wav_diff == 0.0
    # Not vacuous: the adapter moves the latents well away from the base model's.
    assert float((patches.float() - plain.float()).abs().max()) > 0.05


def test_v1_zero_shot(v1):
    synth, ref, adapter = v1
    _assert_same(_ours(synth, adapter, 11), _reference(ref, 11))


def test_v2_zero_shot(v2):
    synth, ref, adapter = v2
    _assert_same(_ours(synth, adapter, 21), _reference(ref, 21))


def test_v2_continuation(v2, tmp_path):
    """A prompt puts many rows through ``enc_to_lm_proj``/``fusion_concat_proj`` LoRA in the prefill."""
    synth, ref, adapter = v2
    t = np.arange(int(16000 * 1.1)) / 16000
    path = tmp_path / "prompt.wav"
    sf.write(path, 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + 0.4 * np.sin(2 * np.pi * 2.5 * t)), 16000, subtype="FLOAT")
    cache = ref.build_prompt_cache(prompt_text=PROMPT_TEXT, prompt_wav_path=str(path))
    ours = _ours(synth, adapter, 22, prompt_text=PROMPT_TEXT, prompt_audio=path)
    _assert_same(ours, _reference(ref, 22, cache))
