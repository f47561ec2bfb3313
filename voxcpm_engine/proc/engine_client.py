"""``EngineClient``: the one interface the server holds an engine by, whether one process or one per device.

:class:`~voxcpm_engine.proc.client.AsyncEngine` (one engine process) and
:class:`~voxcpm_engine.proc.group.AsyncEngineGroup` (one per device, least-loaded routing) both
implement it, so the server and the tests use either without asking which. What differs between
them (a group registers a voice on every device, and a failure can leave it on some) is visible
through :attr:`EngineClient.engines`, never through ``isinstance``. The start/stop lifecycle and
``async with`` are written once here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    import numpy as np

    from voxcpm_engine.io.prompt_audio import AudioLimits
    from voxcpm_engine.proc.client import AsyncEngine
    from voxcpm_engine.proc.stream import RequestStream
    from voxcpm_engine.types import GenerationParams, ModelInfo, StartupProgress, Voice

__all__ = ["EngineClient"]


class EngineClient(ABC):
    """An engine as the server sees it: requests, voices, prompt encoding, stats, and a lifecycle."""

    # --- lifecycle ----------------------------------------------------------------------------

    @abstractmethod
    async def start(self) -> None:
        """Start serving (the engine process or processes are ready when this returns)."""

    @abstractmethod
    async def stop(self, timeout_s: float = 10.0) -> None:
        """Shut down; open requests end as cancelled. Safe to call when not started."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @abstractmethod
    def startup_progress(self) -> list[tuple[str, StartupProgress]]:
        """``(device, progress)`` of each engine process while it starts."""

    # --- what is behind it --------------------------------------------------------------------

    @property
    @abstractmethod
    def engines(self) -> Sequence[AsyncEngine]:
        """The engine processes' clients, one per device (a single engine: itself)."""

    @property
    @abstractmethod
    def is_alive(self) -> bool:
        """Whether it serves (a group: any of its engines)."""

    @property
    @abstractmethod
    def model_info(self) -> ModelInfo:
        """What it serves, as the (first) engine's READY message reported it (known after :meth:`start`)."""

    @property
    @abstractmethod
    def sample_rate(self) -> int:
        """Rate of the audio chunks (known after :meth:`start`)."""

    @property
    @abstractmethod
    def samples_per_patch(self) -> int:
        """Samples in each chunk (known after :meth:`start`)."""

    @property
    @abstractmethod
    def encode_sample_rate(self) -> int:
        """Rate of the decoded samples :meth:`encode_prompt` takes."""

    @property
    @abstractmethod
    def num_unfinished(self) -> int:
        """Requests submitted whose final output has not arrived."""

    @abstractmethod
    def has_request(self, request_id: str) -> bool:
        """Whether a stream of this id is open."""

    # --- work ---------------------------------------------------------------------------------

    @abstractmethod
    def generate(
        self,
        request_id: str,
        text: str,
        *,
        voice: Voice | None = None,
        params: GenerationParams | None = None,
        lora: str | None = None,
        deadline_s: float | None = None,
    ) -> RequestStream:
        """Submit a request; iterate the stream for its float32 chunks (see :meth:`AsyncEngine.generate`)."""

    @abstractmethod
    async def abort(self, request_id: str) -> bool:
        """Cancel a request; False if no stream of this id is open."""

    @abstractmethod
    async def register_voice(self, name: str, path: str | Path) -> int:
        """Register (or replace) a LoRA voice from its directory; returns its version."""

    @abstractmethod
    async def unregister_voice(self, name: str) -> None:
        """Remove a LoRA voice (``KeyError`` if there is none)."""

    @abstractmethod
    async def encode_prompt(
        self, audio: np.ndarray | bytes, *, reference: bool = False, limits: AudioLimits | None = None
    ) -> Any:
        """Prompt (or VoxCPM2 reference) audio -> latent patches ``[T, P, 64]`` (fp32, CPU)."""

    @abstractmethod
    async def stats(self) -> dict[str, Any]:
        """Counts and timings for ``/status`` and ``/metrics`` (a group: sums plus ``engines``)."""
