"""Named voices: a LoRA adapter, a stored prompt (latents + transcript), a VoxCPM2 reference, or a mix.

:class:`VoiceStore` keeps every voice in three places: on disk (``voices_dir``, the format and its
crash safety: :mod:`tts_server.voices.files`), in memory (the latents requests use; the records:
:mod:`tts_server.voices.entry`) and in the engine (the LoRA adapter). Each name moves through
:class:`~tts_server.voices.entry.VoiceState`; changes to one name are serialised by a per-name lock
while other names proceed, and run to completion even if the request that started them is
cancelled (:mod:`tts_server.voices.change_locks`).

A replace keeps the old voice serving until the new one is encoded, registered and committed; the
engine's adapter registry switches versions atomically and lets running requests finish with the
old weights. For a voice that combines a LoRA with latents, a request resolved in the moment
between the engine's switch and the store's (one event-loop turn) may pair the new adapter with
the old latents.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from tts_server.errors import ApiError
from tts_server.voices import files as vf
from tts_server.voices.adapters import EngineAdapters
from tts_server.voices.change_locks import ChangeLocks
from tts_server.voices.entry import ResolvedVoice, VoiceEntry, VoiceState, entry_from_files
from tts_server.voices.inputs import VoiceSpec, bad, check_inputs, check_latents, decode_audio
from voxcpm_engine.io.prompt_audio import AudioLimits
from voxcpm_engine.proc.engine_client import EngineClient
from voxcpm_engine.proc.errors import EngineError
from voxcpm_engine.types import Voice

__all__ = ["VoiceStore"]

log = logging.getLogger(__name__)

# Prompt audio decoded at once (worker threads): the largest accepted prompt is ~11.5 M samples,
# 78 MB at its peak while decoded and resampled (scripts/prompt_decode_cost.py); more uploads than this wait their turn.
_CONCURRENT_DECODES = 4


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _report_orphan(task: asyncio.Task[Any]) -> None:
    exc = None if task.cancelled() else task.exception()
    if isinstance(exc, ApiError):
        log.info("voices: a change whose request was cancelled was refused: %s", exc.message)
    elif exc is not None:
        log.error("voices: a change whose request was cancelled failed", exc_info=exc)


# ------------------------------------------------------------------------------------------ store


class VoiceStore:
    """The voice registry: voices on disk, their latents in memory, their adapters in the engine.

    Args:
        voices_dir: Directory of the voices (created if missing). ``None``: in-memory only; changes
            are kept in a private temporary directory that :meth:`close` deletes, so nothing
            survives a restart and :meth:`load_all` loads nothing.
        engine: The engine client (its prompt encoding and LoRA voice registration).
        model_version: 1 (VoxCPM1.x) or 2 (VoxCPM2: references allowed).
        patch_size: The model's patch size ``P``.
        latent_dim: The model's latent dimension ``D``.
        max_prompt_seconds: Longest prompt or reference audio accepted (also bounds latents).
        sample_rate: Rate of the model's output audio.
        samples_per_patch: Output samples per patch (default: asked from the started engine).
    """

    def __init__(
        self,
        voices_dir: Path | None,
        engine: EngineClient,
        *,
        model_version: int,
        patch_size: int,
        latent_dim: int,
        max_prompt_seconds: float,
        sample_rate: int,
        samples_per_patch: int | None = None,
    ) -> None:
        self.engine = engine
        self.model_version = model_version
        self.patch_size = patch_size
        self.latent_dim = latent_dim
        self.max_prompt_seconds = max_prompt_seconds
        self.sample_rate = sample_rate
        self._samples_per_patch = samples_per_patch
        self.persistent = voices_dir is not None
        root = Path(voices_dir) if voices_dir is not None else Path(tempfile.mkdtemp(prefix="voxcpm-voices-"))
        root.mkdir(parents=True, exist_ok=True)
        self.root = root.resolve()
        self._entries: dict[str, VoiceEntry] = {}
        self._changes = ChangeLocks(_report_orphan)
        self._loaded = False
        self._decoding = asyncio.Semaphore(_CONCURRENT_DECODES)
        self._adapters = EngineAdapters(engine)

    # --- geometry --------------------------------------------------------------------------------

    @property
    def seconds_per_patch(self) -> float:
        """Audio seconds one latent patch stands for."""
        if self._samples_per_patch is None:
            self._samples_per_patch = self.engine.samples_per_patch
        return self._samples_per_patch / self.sample_rate

    @property
    def max_patches(self) -> int:
        """Most latent patches accepted: the audio limit plus the one patch of padding encoding adds."""
        return math.ceil(self.max_prompt_seconds / self.seconds_per_patch) + 1

    # --- reading ---------------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Names of the voices that can be used now, sorted."""
        return sorted(n for n, e in self._entries.items() if e.state is VoiceState.READY)

    def describe(self, *, include_failed: bool = False) -> list[dict[str, Any]]:
        """Descriptions of the usable voices (and of the unusable ones on disk with ``include_failed``)."""
        shown = (VoiceState.READY, VoiceState.FAILED) if include_failed else (VoiceState.READY,)
        return [e.describe() for n, e in sorted(self._entries.items()) if e.state in shown]

    def get(self, name: str) -> VoiceEntry | None:
        """The entry of ``name`` in whatever state, or None."""
        return self._entries.get(name)

    def resolve(self, name: str | None) -> ResolvedVoice:
        """What a request for voice ``name`` runs with (None: the zero-shot default voice).

        Pass both fields to ``engine.generate(..., voice=r.voice, lora=r.lora)``; the engine's
        adapter name is the voice's name.

        Raises:
            ApiError: 404 when no usable voice has that name.
        """
        if name is None:
            return ResolvedVoice(Voice())
        entry = self._entries.get(name)
        if entry is None or entry.state is not VoiceState.READY:
            raise ApiError(404, f"voice {name!r} not found", field="voice", type="not_found")
        return ResolvedVoice(entry.voice, name if entry.lora else None)

    def check_name(self, name: Any, field: str = "name") -> Path:
        """The directory of a valid voice name.

        Raises:
            ApiError: 400 naming ``field`` for a name outside ``NAME_PATTERN`` or containing ``..``.
        """
        if not isinstance(name, str) or not vf.NAME_PATTERN.fullmatch(name) or ".." in name:
            shown = repr(name[:80]) if isinstance(name, str) else type(name).__name__
            rule = "1-64 characters of A-Z a-z 0-9 _ . -, starting with a letter or digit, without '..'"
            raise bad(field, f"invalid voice name {shown}: {rule}")
        path = self.root / name
        if path.parent != self.root:  # the pattern already excludes separators; never trust one check
            raise bad(field, f"invalid voice name {name!r}")
        return path

    # --- changes ---------------------------------------------------------------------------------

    async def encode(self, audio: bytes, *, reference: bool = False, field: str = "audio") -> tuple[Tensor, float]:
        """Check and decode the audio here, encode it in the engine; returns latents ``[T, P, D]`` and seconds.

        The header is checked against ``AudioLimits(max_prompt_seconds)`` before anything is decoded
        (at most 8 channels, 8-192 kHz, ``max_prompt_seconds``, 2 x 192 kHz decoded samples per
        second, 1024 samples per byte: see :class:`voxcpm_engine.io.prompt_audio.AudioLimits`). Decoding,
        downmixing and resampling run in a worker thread of this process, so neither the event loop
        nor the engine's step loop waits for them; the engine gets mono float32 samples at the
        encoder's rate and only runs the VAE encoder.

        Raises:
            ApiError: 400 naming ``field`` (empty, undecodable, a rate below 8 kHz, a header that
                states no length, a reference on VoxCPM1); 413 when over a limit.
        """
        if reference and self.model_version != 2:
            raise bad(field, f"reference voices need a VoxCPM2 model; this server runs VoxCPM{self.model_version}")
        if not isinstance(audio, bytes) or not audio:
            raise bad(field, "is empty")
        async with self._decoding:  # a few at a time: each may hold ~80 MB while it decodes
            samples, seconds = await asyncio.to_thread(self._decode, audio, field)
        try:
            latents = await self.engine.encode_prompt(samples, reference=reference)
        except ValueError as exc:
            raise bad(field, str(exc)) from exc
        return check_latents(latents, field, **self._dims()), round(seconds, 3)

    def _decode(self, audio: bytes, field: str) -> tuple[np.ndarray, float]:
        """Blocking part of :meth:`encode` (worker thread): decoded samples at the encoder's rate, and seconds."""
        limits = AudioLimits(max_seconds=self.max_prompt_seconds)
        return decode_audio(audio, field, target_sr=self.engine.encode_sample_rate, limits=limits)

    async def add(
        self,
        name: str,
        *,
        prompt_audio: bytes | None = None,
        prompt_text: str | None = None,
        prompt_latents: Tensor | None = None,
        ref_audio: bytes | None = None,
        ref_latents: Tensor | None = None,
        lora_weights: bytes | None = None,
        lora_config: dict[str, Any] | None = None,
        replace: bool = False,
    ) -> dict[str, Any]:
        """Add (or with ``replace``, replace) a voice; audio is encoded by the engine, a LoRA registered.

        A continuation prompt is ``prompt_audio`` or ``prompt_latents`` plus ``prompt_text``; a
        reference is ``ref_audio`` or ``ref_latents`` (VoxCPM2); a LoRA is ``lora_weights`` (the
        safetensors file) plus ``lora_config`` (the ``lora_config.json`` document or its inner
        ``lora_config`` object). Any combination; at least one.

        Returns:
            The voice's description plus ``replaced`` (whether a usable voice of that name existed).

        Raises:
            ApiError: 400 naming the field for invalid input (the engine's message for an invalid
                adapter); 409 when the name exists and ``replace`` is false; 413 for audio or
                latents over the length limit.
            EngineError: The engine is not running.
        """
        path = self.check_name(name)
        spec = check_inputs(
            prompt_audio,
            prompt_text,
            prompt_latents,
            ref_audio,
            ref_latents,
            lora_weights,
            lora_config,
            model_version=self.model_version,
            **self._dims(),
        )
        return await self._changes.complete(self._add(name, path, spec, replace))

    async def remove(self, name: str) -> None:
        """Remove a voice: unusable at once, its directory deleted, its adapter unregistered.

        Requests the engine already admitted finish with the adapter (it drains); ones still
        waiting inside the engine fail, as the engine's ``unregister_voice`` does.

        Raises:
            ApiError: 400 for an invalid name; 404 when there is no such voice.
        """
        path = self.check_name(name)
        await self._changes.complete(self._remove(name, path))

    async def load_all(self) -> list[str]:
        """Load every voice on disk (at start, after the engine started); returns the names loaded.

        Interrupted changes are finished or rolled back first. A voice that cannot be loaded is
        logged with its name and why, kept as ``FAILED`` (see ``describe(include_failed=True)``),
        and skipped.

        Raises:
            EngineError: The engine is not running.
            RuntimeError: Called a second time (the recovery would delete changes in progress).
        """
        if self._loaded:
            raise RuntimeError("VoiceStore.load_all() called twice")
        self._loaded = True
        if not self.persistent:
            return []
        loaded = []
        for name in await asyncio.to_thread(vf.recover, self.root):
            async with self._changes.locked(name):
                if name in self._entries:
                    continue
                try:
                    files = await asyncio.to_thread(vf.read_voice, self.root / name, self._model())
                    entry = entry_from_files(name, files, **self._dims())
                    if files.lora_dir is not None:
                        await self.engine.register_voice(name, files.lora_dir)
                except EngineError:
                    raise
                except Exception as exc:  # any defect of one voice's files: that voice is skipped
                    log.error("voices: %r in %s cannot be loaded and is skipped: %s", name, self.root, exc)
                    self._entries[name] = VoiceEntry(name, VoiceState.FAILED, error=str(exc))
                    if len(self.engine.engines) > 1:  # a group may have registered it on some engines
                        await self._adapters.unregister(name, quiet=True)
                    continue
                self._entries[name] = entry
                loaded.append(name)
        log.info("voices: loaded %d from %s", len(loaded), self.root)
        return loaded

    def close(self) -> None:
        """Delete the private directory of an in-memory store (a persistent one is left as it is)."""
        if not self.persistent:
            vf.remove_tree(self.root)

    # --- internals -------------------------------------------------------------------------------

    def _dims(self) -> dict[str, int]:
        return {"patch_size": self.patch_size, "latent_dim": self.latent_dim, "max_patches": self.max_patches}

    async def _add(self, name: str, path: Path, spec: VoiceSpec, replace: bool) -> dict[str, Any]:
        async with self._changes.locked(name):
            old = self._entries.get(name)
            if old is not None and not replace:
                why = f" but cannot be loaded ({old.error})" if old.state is VoiceState.FAILED else ""
                hint = f"; replace it with PUT /voices/{name} or replace=true"
                raise ApiError(409, f"voice {name!r} already exists{why}{hint}", field="name", type="conflict")
            if old is None:
                self._entries[name] = VoiceEntry(name, VoiceState.LOADING)
            try:
                entry = await self._build(name, path, spec, old)
            except BaseException:
                if old is None:
                    self._entries.pop(name, None)
                raise
            self._entries[name] = entry
            if old is not None and old.lora and not entry.lora:
                await self._adapters.unregister(name)  # the new voice has no adapter; running requests drain the old
            return {**entry.describe(), "replaced": old is not None and old.state is VoiceState.READY}

    async def _build(self, name: str, path: Path, spec: VoiceSpec, old: VoiceEntry | None) -> VoiceEntry:
        per_patch = self.seconds_per_patch
        prompt, ref = spec.prompt_latents, spec.ref_latents
        prompt_s = round(prompt.shape[0] * per_patch, 3) if prompt is not None else None
        ref_s = round(ref.shape[0] * per_patch, 3) if ref is not None else None
        if spec.prompt_audio is not None:
            prompt, prompt_s = await self.encode(spec.prompt_audio, field="prompt_audio")
        if spec.ref_audio is not None:
            ref, ref_s = await self.encode(spec.ref_audio, reference=True, field="ref_audio")
        now = _now()
        entry = VoiceEntry(
            name, VoiceState.READY, Voice(spec.prompt_text if prompt is not None else None, prompt, ref),
            lora=spec.lora is not None, prompt_seconds=prompt_s, ref_seconds=ref_s,
            created=old.created if old is not None and old.created else now, updated=now,
        )  # fmt: skip
        latents = {k: t for k, t in (("prompt", prompt), ("reference", ref)) if t is not None}
        staging = await asyncio.to_thread(vf.stage, self.root, name, entry.document(self._model()), latents, spec.lora)
        try:
            if spec.lora is not None:
                await self._adapters.register(name, staging / vf.LORA_DIR, old, path)
            try:
                await asyncio.to_thread(vf.commit, self.root, staging, path)
            except BaseException:
                if spec.lora is not None:
                    await self._adapters.restore(name, old, path)  # the disk keeps the old voice: so must the engine
                raise
        finally:
            await asyncio.to_thread(vf.remove_tree, staging)  # after an exchange it holds the old voice
        return entry

    def _model(self) -> dict[str, int]:
        return {"version": self.model_version, "patch_size": self.patch_size, "latent_dim": self.latent_dim}

    async def _remove(self, name: str, path: Path) -> None:
        async with self._changes.locked(name):
            entry = self._entries.get(name)
            if entry is None or entry.state is VoiceState.LOADING:
                raise ApiError(404, f"voice {name!r} not found", field="name", type="not_found")
            self._entries[name] = dataclasses.replace(entry, state=VoiceState.REMOVING)
            try:
                if os.path.lexists(path):
                    await asyncio.to_thread(vf.discard, self.root, path)
            except BaseException:
                self._entries[name] = entry
                raise
            del self._entries[name]
            if entry.lora:
                await self._adapters.unregister(name)
