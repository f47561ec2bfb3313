"""The objects one running app shares between its routes, bundled and typed.

``create_app`` builds them in its lifespan and stores the bundle at ``app.state.services``
(each part also under its own ``app.state`` name for the voice routes). Routes reach it with
:func:`services`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from tts_server.config import ServerConfig
from tts_server.errors import ApiError
from tts_server.http.admission import Admission
from tts_server.jobs.queue import InferenceQueue
from tts_server.jobs.registry import InflightRegistry
from tts_server.lifecycle import Lifecycle, ServerState
from tts_server.metrics import ServerMetrics
from tts_server.voices.store import VoiceStore
from voxcpm_engine.io.tokenizer import TextTokenizer
from voxcpm_engine.proc.client import AsyncEngine
from voxcpm_engine.proc.engine_client import EngineClient
from voxcpm_engine.types import EngineLoad, ModelInfo

__all__ = ["Services", "services"]

log = logging.getLogger(__name__)


@dataclass
class Services:
    """Everything a route may need.

    Attributes:
        config: The settings.
        lifecycle: Server state (ready, draining, engine dead).
        admission: The connection cap's state.
        metrics: Prometheus metrics.
        engine: The engine client (one device) or group (several).
        queue: The inference queue.
        registry: In-flight requests by id.
        voices: Named voices.
        tokenizer: The checkpoint's tokenizer (counts tokens to split long input).
        model: What the engine serves (its READY message).
        engine_load: The engine's load as of the app's last poll (twice a second).
    """

    config: ServerConfig
    lifecycle: Lifecycle
    admission: Admission
    metrics: ServerMetrics
    engine: EngineClient
    queue: InferenceQueue
    registry: InflightRegistry
    voices: VoiceStore
    tokenizer: TextTokenizer
    model: ModelInfo
    engine_load: EngineLoad = field(default_factory=EngineLoad)

    def __post_init__(self) -> None:
        # The limits live in the queue and the admission, which the metrics are built before.
        self.metrics.bind_capacity(lambda: self.queue.slots, lambda: self.admission.cap)

    @property
    def sample_rate(self) -> int:
        """Rate of the engine's audio."""
        return self.model.sample_rate

    @property
    def model_version(self) -> int:
        """1 (VoxCPM1.x) or 2 (VoxCPM2)."""
        return self.model.version

    @property
    def model_info(self) -> dict[str, Any]:
        """The model's description for clients (``/info``): no server paths, every device."""
        return self.model.public([e.device for e in self.engines])

    @property
    def engines(self) -> Sequence[AsyncEngine]:
        """Every engine process (one per device)."""
        return self.engine.engines

    @property
    def engines_alive(self) -> bool:
        """Whether every engine serves (the server gives up when any dies)."""
        return all(e.is_alive for e in self.engines)

    def engine_lost(self, message: str) -> None:
        """An engine process is gone: refuse new work, fail the queue, ask the process to exit (once).

        Called by the engine monitor and by any job that sees the death first, before that job
        releases its slot, so a queued request is never handed to what is left of the engines.
        """
        if self.lifecycle.state is ServerState.ENGINE_DEAD:
            return
        log.error("%s: failing queued requests, refusing new ones, exiting for the supervisor to restart", message)
        self.lifecycle.engine_died(message)
        self.queue.close(message)


def services(request: Request) -> Services:
    """The app's services, or a 503 while the app is still starting.

    Raises:
        ApiError: 503 before the lifespan has finished starting the engine.
    """
    found = getattr(request.app.state, "services", None)
    if found is None:
        raise ApiError(503, "the server is starting", type="overloaded", headers={"Retry-After": "1"})
    return found
