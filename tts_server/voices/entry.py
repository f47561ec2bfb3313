"""What the voice store holds for one name: its state, its latents and metadata, and their voice.json form.

:class:`VoiceEntry` is the immutable record :class:`~tts_server.voices.store.VoiceStore` keeps per
name (moving through :class:`VoiceState`), :class:`ResolvedVoice` what a request takes from it.
:meth:`VoiceEntry.document` and :func:`entry_from_files` map a record to and from the ``voice.json``
document and files of :mod:`tts_server.voices.files`. Separate from the store so the routes and the
speech path can use the records without the store's engine and concurrency machinery, and so the
mapping to the on-disk format sits next to the record it maps.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from tts_server.errors import ApiError
from tts_server.voices import files as vf
from tts_server.voices.inputs import check_latents
from voxcpm_engine.types import Voice

__all__ = ["ResolvedVoice", "VoiceEntry", "VoiceState", "entry_from_files"]


class VoiceState(Enum):
    """Lifecycle of a name: ``LOADING → READY → REMOVING → (gone)``; ``FAILED``: on disk but unusable."""

    LOADING = "loading"
    READY = "ready"
    REMOVING = "removing"
    FAILED = "failed"


@dataclass(frozen=True)
class ResolvedVoice:
    """What a request needs: the latents (``voice``) and the engine's LoRA name (``lora``), if any."""

    voice: Voice
    lora: str | None = None


@dataclass(frozen=True)
class VoiceEntry:
    """One voice as the store holds it (replaced, never mutated)."""

    name: str
    state: VoiceState
    voice: Voice = Voice()
    lora: bool = False
    prompt_seconds: float | None = None
    ref_seconds: float | None = None
    created: str | None = None
    updated: str | None = None
    error: str | None = None

    @property
    def kinds(self) -> list[str]:
        """Which of ``lora``, ``prompt``, ``reference`` the voice has."""
        has = (self.lora, self.voice.prompt_latents is not None, self.voice.ref_latents is not None)
        return [k for k, on in zip(("lora", "prompt", "reference"), has, strict=True) if on]

    def describe(self) -> dict[str, Any]:
        """The public description (``GET /voices``)."""
        out = {"name": self.name, "state": self.state.value, "kinds": self.kinds}
        out.update(prompt_text=self.voice.prompt_text, prompt_seconds=self.prompt_seconds)
        out.update(ref_seconds=self.ref_seconds, created=self.created, updated=self.updated)
        if self.error is not None:
            out["error"] = self.error
        return out

    def document(self, model: dict[str, int]) -> dict[str, Any]:
        """The voice's ``voice.json`` document.

        Args:
            model: The model the latents are for: ``version``, ``patch_size``, ``latent_dim``.
        """
        kinds = {k: k in self.kinds for k in ("lora", "prompt", "reference")}
        return {"format": vf.FORMAT_VERSION, "name": self.name, "kinds": kinds, "prompt_text": self.voice.prompt_text,
                "prompt_seconds": self.prompt_seconds, "ref_seconds": self.ref_seconds,
                "created": self.created, "updated": self.updated, "model": model}  # fmt: skip


def entry_from_files(
    name: str, files: vf.VoiceFiles, *, patch_size: int, latent_dim: int, max_patches: int
) -> VoiceEntry:
    """The ``READY`` entry of a voice read from disk, its latents checked against the model's geometry.

    Args:
        name: The voice's name.
        files: What :func:`tts_server.voices.files.read_voice` read.
        patch_size: The model's patch size ``P``.
        latent_dim: The model's latent dimension ``D``.
        max_patches: The store's limit for new latents (not enforced here: a voice stored under a
            larger limit still loads).

    Raises:
        VoiceFileError: Latents that are not a floating-point tensor ``[T, P, D]`` of finite values.
    """
    doc, latents = files.doc, {}
    dims = {"patch_size": patch_size, "latent_dim": latent_dim, "max_patches": max_patches}
    for field, t in (("prompt_latents", files.prompt_latents), ("ref_latents", files.ref_latents)):
        try:  # the length limit is for new input: a voice stored under a larger one still loads
            latents[field] = check_latents(t, field, **dims, limit=False) if t is not None else None
        except ApiError as exc:
            raise vf.VoiceFileError(exc.message) from exc
    prompt = latents["prompt_latents"]
    voice = Voice(doc["prompt_text"] if prompt is not None else None, prompt, latents["ref_latents"])
    number = {
        k: doc.get(k) if isinstance(doc.get(k), (int, float)) else None for k in ("prompt_seconds", "ref_seconds")
    }
    return VoiceEntry(name, VoiceState.READY, voice, lora=files.lora_dir is not None, **number,
                      created=doc.get("created"), updated=doc.get("updated"))  # fmt: skip
