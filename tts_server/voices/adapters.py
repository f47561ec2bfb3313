"""Keeping the engine's LoRA adapters in step with the voices the store commits.

A voice's adapter lives in every engine (one per device). A change registers the new adapter before
the store commits the files; when the commit fails, or some engines of a group took the adapter and
others refused it, :meth:`EngineAdapters.restore` puts the engines back to what the disk holds.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from tts_server.voices import files as vf
from tts_server.voices.entry import VoiceEntry
from tts_server.voices.inputs import bad
from voxcpm_engine.proc.engine_client import EngineClient

__all__ = ["EngineAdapters"]

log = logging.getLogger(__name__)

_LORA_CONFIG_FILE = "lora_config.json"


class EngineAdapters:
    """Register, restore and unregister one voice's adapter in the engine (or every engine of a group)."""

    def __init__(self, engine: EngineClient) -> None:
        self.engine = engine

    async def register(self, name: str, lora_dir: Path, old: VoiceEntry | None, path: Path) -> None:
        """Register the adapter in ``lora_dir`` under ``name``; on refusal, restore ``old``'s.

        Raises:
            ApiError: 400 naming ``lora_config`` or ``lora_weights`` with the engine's message (no paths).
        """
        # The registry reads and validates the files during this call, so the staging directory
        # need not outlive it; an existing name switches versions atomically in the engine.
        try:
            await self.engine.register_voice(name, lora_dir)
        except ValueError as exc:
            if len(self.engine.engines) > 1:  # a group: engines where it succeeded hold the new adapter
                await self.restore(name, old, path)
            message = str(exc).replace(f"{lora_dir}{os.sep}", "").replace(str(lora_dir), vf.LORA_DIR)  # no paths
            field = "lora_config" if message.startswith(_LORA_CONFIG_FILE) else "lora_weights"
            raise bad(field, message) from exc

    async def restore(self, name: str, old: VoiceEntry | None, path: Path) -> None:
        """Put the engine back to the old voice's adapter (or none) after a change that did not complete."""
        try:
            if old is not None and old.lora:
                await self.engine.register_voice(name, path / vf.LORA_DIR)
            else:
                await self.unregister(name, quiet=True)
        except Exception:  # secondary to the error being raised; record it and let that one through
            log.exception("voices: could not restore the adapter of %r after a failed change", name)

    async def unregister(self, name: str, *, quiet: bool = False) -> None:
        """Remove the adapter (``quiet``: say nothing when the engine had none)."""
        try:
            await self.engine.unregister_voice(name)
        except KeyError:
            if not quiet:
                log.warning("voices: the engine had no adapter %r to unregister", name)
