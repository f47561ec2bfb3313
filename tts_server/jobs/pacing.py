"""When a streamed response writes: each chunk at once, or fewer, larger writes once it is well ahead.

Every write of a streamed response costs the server's one event loop the same whatever it carries:
a task switch, the encoder call, the ASGI send chain, HTTP framing and a socket ``send``. Under load
that is most of the loop's time (one write per stream per engine step). A listener who has already
been sent more audio than has played gains nothing from getting each step's chunk the moment it is
made; the loop gains a lot from sending it a few at a time.

:class:`WritePacer` keeps the count for one response. The first write goes at once (time to first
audio is never traded). After that a write is due when ``write_seconds`` of audio are waiting, or as
soon as the audio already sent would play out within ``lead_seconds`` (counting playback from the
first write, the earliest a client can start). A response that keeps only a small lead, because the
engine makes audio near real time, so writes every chunk as before; one well ahead writes in blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PacingConfig", "WritePacer"]


@dataclass(frozen=True)
class PacingConfig:
    """How streamed responses batch their writes.

    Attributes:
        write_seconds: Audio a write waits for once the stream is ahead (0: every chunk at once).
        lead_seconds: Below this much sent but unplayed audio, every chunk goes at once.
    """

    write_seconds: float = 0.5
    lead_seconds: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.write_seconds < float("inf"):
            raise ValueError(f"write_seconds must be >= 0 and finite, got {self.write_seconds!r}")
        if not 0 <= self.lead_seconds < float("inf"):
            raise ValueError(f"lead_seconds must be >= 0 and finite, got {self.lead_seconds!r}")

    @property
    def enabled(self) -> bool:
        """Whether writes are ever held back."""
        return self.write_seconds > 0


class WritePacer:
    """The write schedule of one streamed response (see the module docstring).

    Args:
        config: The server's pacing settings.
        sample_rate: Samples per second of the audio counted.
        most_samples: A bound the waiting audio never reaches (the stream's buffer limit): a write is
            due at that bound however the setting reads.
    """

    __slots__ = ("_lead", "_rate", "_sent", "_started", "_write")

    def __init__(self, config: PacingConfig, sample_rate: int, most_samples: int) -> None:
        self._rate = float(sample_rate)
        self._write = min(round(config.write_seconds * sample_rate), max(1, most_samples))
        self._lead = config.lead_seconds
        self._sent = 0  # samples written so far
        self._started: float | None = None  # when the first write went

    def due(self, waiting: int, now: float) -> bool:
        """Whether ``waiting`` samples, made and not yet written, should be written at ``now``."""
        if waiting <= 0:
            return False
        if self._started is None or waiting >= self._write:
            return True
        return now >= self.deadline()

    def deadline(self) -> float:
        """When the lead falls to ``lead_seconds`` (monotonic time): by then waiting audio must go.

        Only meaningful after the first write.
        """
        assert self._started is not None
        return self._started + self._sent / self._rate - self._lead

    def wrote(self, samples: int, now: float) -> None:
        """Count a write of ``samples`` at ``now``."""
        if self._started is None:
            self._started = now
        self._sent += samples

    @property
    def holds(self) -> bool:
        """Whether a write may ever be held back (after the first)."""
        return self._write > 1
