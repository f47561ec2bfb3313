"""The server's start-up as ``/ready`` and ``/status`` report it while the engine loads and warms up.

The server listens from its first moment; until the engine processes have loaded the checkpoint,
captured their CUDA graphs and run their warm-up requests (:mod:`voxcpm_engine.startup`), ``/ready`` is
503 with a reason that says which phase each engine is in, and ``/status`` lists the progress.
A load balancer that routes on ``/ready`` so never sends a user to a replica whose first requests
would wait for kernels to compile.
"""

from __future__ import annotations

import enum
import time

from voxcpm_engine.proc.engine_client import EngineClient
from voxcpm_engine.types import StartupProgress

__all__ = ["StartStep", "StartupState"]


class StartStep(enum.Enum):
    """The server's own steps before it serves (its engines report their phases apart)."""

    ENGINE = "starting the engine"
    TOKENIZER_AND_VOICES = "loading the tokenizer and voices"
    REQUEST_PATH = "warming the request path (codecs, the event loop's task groups)"


class StartupState:
    """Start-up of one server: which step it is in and what its engines report.

    Args:
        engine: The engine client or group being started.
        owned: Whether this server starts the engine (else it was started by the embedding code).

    Attributes:
        step: The server's own step.
        ready_s: Seconds from the server's start to ready (None until then).
    """

    def __init__(self, engine: EngineClient, owned: bool) -> None:
        self.engine = engine
        self.started_at = time.monotonic()
        self.step = StartStep.ENGINE if owned else StartStep.TOKENIZER_AND_VOICES
        self.ready_s: float | None = None

    def finished(self) -> None:
        """The server is about to take work."""
        self.ready_s = time.monotonic() - self.started_at

    def engines(self) -> list[tuple[str, StartupProgress]]:
        """``(device, last report)`` of each engine that has reported."""
        return self.engine.startup_progress()

    def reason(self) -> str:
        """Why the server is not ready yet, e.g. ``warming up: cuda:0: capturing prefill CUDA graphs (12/66)``."""
        elapsed = time.monotonic() - self.started_at
        reports = self.engines()
        if self.ready_s is None and self.step is StartStep.ENGINE and reports:
            detail = "; ".join(f"{device}: {p.describe()}" for device, p in reports)
            return f"the engine is starting ({detail})"
        return f"the server is starting: {self.step.value}, {elapsed:.0f} s in"
