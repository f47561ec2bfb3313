"""``AsyncEngineGroup``: one engine process per device behind the ``AsyncEngine`` interface.

New requests go to the live engine with the fewest unfinished requests (ties: the lowest index),
counted on this side so a burst of arrivals spreads out before any engine has stepped. Aborts go
to the engine holding the request; voice changes go to every engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from voxcpm_engine.config.engine_config import EngineConfig
from voxcpm_engine.io.prompt_audio import AudioLimits, load_audio
from voxcpm_engine.proc.client import AsyncEngine
from voxcpm_engine.proc.engine_client import EngineClient
from voxcpm_engine.proc.errors import EngineDeadError
from voxcpm_engine.proc.stream import RequestStream
from voxcpm_engine.types import GenerationParams, ModelInfo, StartupProgress, Voice

_SUMMED = ("running", "waiting", "unfinished", "kv_blocks_total", "kv_blocks_free", "steps")


class AsyncEngineGroup(EngineClient):
    """Several engine processes serving the same model, one per device.

    Args:
        checkpoint_dir: Checkpoint directory in the official layout.
        engine_config: Engine limits of every engine.
        devices: One engine per entry (a device may repeat, e.g. ``["cpu", "cpu"]`` in tests).
        dtype: Override of the checkpoint's model dtype.
        num_threads: ``torch.set_num_threads`` in each engine process.
        start_timeout_s: Longest wait for each engine's READY.
    """

    def __init__(
        self,
        checkpoint_dir: str | Path,
        engine_config: EngineConfig | None = None,
        devices: Sequence[str] = ("cpu",),
        *,
        dtype: str | None = None,
        num_threads: int | None = None,
        start_timeout_s: float = 600.0,
    ) -> None:
        if not devices:
            raise ValueError("devices must name at least one device")
        self._engines = [
            AsyncEngine(
                checkpoint_dir, engine_config, d, dtype=dtype, num_threads=num_threads, start_timeout_s=start_timeout_s
            )
            for d in devices
        ]

    async def start(self) -> None:
        """Start every engine concurrently; if one fails, stop the others and raise its error."""
        results = await asyncio.gather(*(e.start() for e in self.engines), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.stop()
            raise errors[0]

    def startup_progress(self) -> list[tuple[str, StartupProgress]]:
        """``(device, last start-up report)`` of each engine that has sent one, in device order."""
        return [report for e in self.engines for report in e.startup_progress()]

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Stop every engine (concurrently)."""
        await asyncio.gather(*(e.stop(timeout_s) for e in self.engines))

    @property
    def engines(self) -> list[AsyncEngine]:
        """The engines, in device order."""
        return self._engines

    @property
    def is_alive(self) -> bool:
        """Whether at least one engine is serving."""
        return any(e.is_alive for e in self.engines)

    @property
    def sample_rate(self) -> int:
        """Rate of the audio chunks (every engine runs the same model)."""
        return self.engines[0].sample_rate

    @property
    def num_unfinished(self) -> int:
        """Unfinished requests over all engines."""
        return sum(e.num_unfinished for e in self.engines)

    @property
    def model_info(self) -> ModelInfo:
        """What the first engine serves (every engine runs the same model; devices differ)."""
        return self.engines[0].model_info

    @property
    def samples_per_patch(self) -> int:
        """Samples in each chunk (every engine runs the same model)."""
        return self.engines[0].samples_per_patch

    def has_request(self, request_id: str) -> bool:
        """Whether any engine has a stream of this id open."""
        return any(e.has_request(request_id) for e in self.engines)

    def pick(self) -> AsyncEngine:
        """The live engine a new request goes to (fewest unfinished requests).

        Raises:
            EngineDeadError: No engine is alive.
        """
        alive = [e for e in self.engines if e.is_alive]
        if not alive:
            raise EngineDeadError("no engine of the group is alive")
        return min(alive, key=lambda e: e.num_unfinished)  # min keeps the first of equals

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
        """Submit to the least-loaded engine; see :meth:`AsyncEngine.generate`."""
        if self.has_request(request_id):
            raise ValueError(f"request_id {request_id!r} is already in flight")
        return self.pick().generate(request_id, text, voice=voice, params=params, lora=lora, deadline_s=deadline_s)

    async def abort(self, request_id: str) -> bool:
        """Cancel a request on whichever engine holds it; False if none does."""
        for engine in self.engines:
            if engine.has_request(request_id):
                return await engine.abort(request_id)
        return False

    async def register_voice(self, name: str, path: str | Path) -> int:
        """Register a LoRA voice on every live engine; returns the first engine's version.

        A failure on one engine raises its error; engines where it succeeded keep the voice (the
        caller retries or unregisters).
        """
        versions = await asyncio.gather(*(e.register_voice(name, path) for e in self.engines if e.is_alive))
        return versions[0]

    async def unregister_voice(self, name: str) -> None:
        """Remove a LoRA voice from every live engine."""
        await asyncio.gather(*(e.unregister_voice(name) for e in self.engines if e.is_alive))

    @property
    def encode_sample_rate(self) -> int:
        """Rate of decoded prompt samples (every engine runs the same model)."""
        return self.engines[0].encode_sample_rate

    async def encode_prompt(
        self, audio: np.ndarray | bytes, *, reference: bool = False, limits: AudioLimits | None = None
    ) -> Any:
        """Encode prompt audio on the least-loaded live engine (see :meth:`AsyncEngine.encode_prompt`).

        A file is decoded here first (in a worker thread, under ``limits``), so the engine is picked
        when its samples are ready to send, by the load of that moment.
        """
        if not isinstance(audio, np.ndarray):
            audio = await asyncio.to_thread(load_audio, audio, self.encode_sample_rate, limits=limits)
        return await self.pick().encode_prompt(audio, reference=reference)

    async def stats(self) -> dict[str, Any]:
        """Per-engine stats under ``engines`` plus the sums of the counters and ``alive`` (any engine)."""
        per_engine = await asyncio.gather(*(e.stats() for e in self.engines))
        total: dict[str, Any] = {k: sum(s.get(k, 0) for s in per_engine) for k in _SUMMED}
        return {"alive": any(s["alive"] for s in per_engine), **total, "engines": per_engine}
