"""Text + voice → waveform for one request: the glue between tokenizer, AudioVAE and the AR loop.

Modes (spec §6.2): zero-shot; continuation of a prompt (audio + its transcript, or precomputed
prompt latents); VoxCPM2 reference voice, alone or with a prompt. The whole-utterance output
decodes ``[context patches + new patches]`` and crops the context's samples, like the reference's
VoxCPM2 paths and the VoxCPM1.5 prompt-cache path. Streaming runs the causal VAE decoder
statefully, warmed up on the same context patches, so its concatenated chunks equal the
whole-utterance output (the reference's streaming differs from its own non-streaming output over
the first ~0.8 s of a continuation; ours does not).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from voxcpm_engine.frontend import Prefill, build_prefill, default_max_steps, request_tokens
from voxcpm_engine.io.checkpoint import LoadedCheckpoint, load_checkpoint
from voxcpm_engine.io.prompt_audio import check_samples, load_audio, pad_to_multiple
from voxcpm_engine.single.generate import generate_patches
from voxcpm_engine.types import GenerationParams, RequestField, RequestRejected, Voice

AudioSource = str | os.PathLike | bytes


class Synthesizer:
    """A loaded checkpoint that turns text into speech, one request at a time.

    Args:
        checkpoint: From :func:`voxcpm_engine.io.checkpoint.load_checkpoint`.
    """

    def __init__(self, checkpoint: LoadedCheckpoint) -> None:
        self.checkpoint = checkpoint
        self.config = checkpoint.config
        self.model = checkpoint.model
        self.vae = checkpoint.vae
        self.tokenizer = checkpoint.tokenizer
        self.device = checkpoint.device

    @classmethod
    def from_dir(cls, path: str | Path, device: str | torch.device | None = None) -> Synthesizer:
        """Load a checkpoint directory (default device: CUDA if available, else CPU)."""
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return cls(load_checkpoint(path, device=device))

    @property
    def sample_rate(self) -> int:
        """Rate of the output waveform."""
        return self.config.sample_rate

    @torch.inference_mode()
    def encode_prompt(self, audio: AudioSource | np.ndarray, *, reference: bool = False) -> Tensor:
        """Encode prompt or reference audio into latent patches ``[T, P, 64]`` (fp32, CPU).

        A file (path or bytes) is decoded, downmixed and resampled to the VAE's rate here
        (:func:`voxcpm_engine.io.prompt_audio.load_audio`, no limits: for trusted, in-process callers). An array is
        taken as already decoded: mono float32 at ``config.encode_sample_rate`` (what ``load_audio``
        returns), which is how the engine process gets it, so that it never decodes files between
        steps. Either way the samples are zero-padded to whole patches: on the left for a
        continuation prompt, on the right for a VoxCPM2 reference (spec §6.1); the padding is part of
        what gets encoded, as in the reference.

        Raises:
            ValueError: The audio is undecodable or empty, the array is not 1-D finite float32, or
                ``reference`` on a VoxCPM1 model.
        """
        if reference and self.config.version != 2:
            raise ValueError("ref_audio: reference voices need a VoxCPM2 model")
        if isinstance(audio, np.ndarray):
            wav = check_samples(audio)
        else:
            wav = load_audio(audio, self.config.encode_sample_rate)
        wav = pad_to_multiple(wav, self.config.prompt_pad_multiple, "right" if reference else "left")
        latents = self.vae.encode(torch.from_numpy(wav).to(self.device)[None, None])  # [1, D, frames]
        p = self.config.patch_size
        return latents[0].reshape(latents.shape[1], -1, p).permute(1, 2, 0).float().cpu().contiguous()

    def make_voice(
        self,
        prompt_text: str | None = None,
        prompt_audio: AudioSource | None = None,
        ref_audio: AudioSource | None = None,
        prompt_latents: Tensor | None = None,
    ) -> Voice:
        """Build a :class:`Voice` from audio files/bytes or precomputed latents.

        Raises:
            ValueError: Inconsistent fields (prompt audio without text or the reverse, both prompt
                audio and latents), undecodable audio, or a reference on a VoxCPM1 model.
        """
        if prompt_audio is not None and prompt_latents is not None:
            raise ValueError("prompt_audio and prompt_latents are alternatives: give one")
        if prompt_audio is not None:
            prompt_latents = self.encode_prompt(prompt_audio)
        if (prompt_latents is None) != (prompt_text is None):
            raise ValueError("prompt_text and prompt audio/latents go together: give both or neither")
        ref_latents = self.encode_prompt(ref_audio, reference=True) if ref_audio is not None else None
        return Voice(prompt_text=prompt_text, prompt_latents=prompt_latents, ref_latents=ref_latents)

    def prepare(self, text: str, voice: Voice, params: GenerationParams) -> tuple[Prefill, int]:
        """Tokenize and lay out a request; returns the prefill and the step limit."""
        if not text.strip():  # the same as after prepare_text, which only rewrites whitespace
            raise RequestRejected(RequestField.TEXT, "text must not be empty")
        target_ids, ids = request_tokens(self.tokenizer, text, voice.prompt_text)
        prefill = build_prefill(self.config, ids, voice.prompt_latents, voice.ref_latents)
        if len(prefill) >= self.config.max_length:
            raise RequestRejected(
                RequestField.TEXT, f"prompt of {len(prefill)} positions exceeds the model's {self.config.max_length}"
            )
        room = self.config.max_length - len(prefill)
        max_steps = params.max_steps if params.max_steps is not None else default_max_steps(len(target_ids))
        return prefill, min(max_steps, room)

    def _generator(self, seed: int | None) -> torch.Generator:
        gen = torch.Generator(device=self.device)
        gen.manual_seed(secrets.randbits(63) if seed is None else seed)
        return gen

    def patches(
        self, text: str, voice: Voice | None = None, params: GenerationParams | None = None
    ) -> Iterator[Tensor]:
        """Yield the generated latent patches ``[P, 64]`` (model dtype) of one request."""
        params = params or GenerationParams()
        prefill, max_steps = self.prepare(text, voice or Voice(), params)
        return self._run(prefill, max_steps, params)

    def _run(self, prefill: Prefill, max_steps: int, params: GenerationParams) -> Iterator[Tensor]:
        return generate_patches(
            self.model,
            prefill,
            cfg_value=params.cfg_value,
            inference_timesteps=params.inference_timesteps,
            min_steps=params.min_steps,
            max_steps=max_steps,
            temperature=params.temperature,
            generator=self._generator(params.seed),
        )

    def _latent_frames(self, patches: Tensor) -> Tensor:
        """``[N, P, D]`` patches → ``[1, D, N*P]`` frames (patch-major), fp32 for the VAE."""
        return patches.float().reshape(-1, self.config.feat_dim).T[None].to(self.device)

    @torch.inference_mode()
    def generate(self, text: str, voice: Voice | None = None, params: GenerationParams | None = None) -> np.ndarray:
        """Synthesize a whole utterance; returns a float32 waveform at :attr:`sample_rate`."""
        voice = voice or Voice()
        params = params or GenerationParams()
        prefill, max_steps = self.prepare(text, voice, params)
        new = list(self._run(prefill, max_steps, params))
        context = prefill.context_patches
        latents = torch.cat([context.to(self.device), torch.stack(new)]) if new else context
        wav = self.vae.decode(self._latent_frames(latents))[0, 0]
        crop = context.shape[0] * self.config.samples_per_patch
        return wav[crop:].float().cpu().numpy()

    @torch.inference_mode()
    def stream(
        self, text: str, voice: Voice | None = None, params: GenerationParams | None = None
    ) -> Iterator[np.ndarray]:
        """Synthesize chunk by chunk: one float32 chunk of ``samples_per_patch`` samples per step."""
        voice = voice or Voice()
        params = params or GenerationParams()
        prefill, max_steps = self.prepare(text, voice, params)
        state = self.vae.new_stream_state(1)
        if prefill.context_patches.shape[0]:
            self.vae.decode_stream(self._latent_frames(prefill.context_patches), state)  # warm up, discard
        for patch in self._run(prefill, max_steps, params):
            yield self.vae.decode_stream(self._latent_frames(patch[None]), state)[0, 0].float().cpu().numpy()
