"""When a streamed response writes: each chunk at once, or fewer, larger writes once it is well ahead.

Every write of a streamed response costs the server's one event loop the same whatever it carries:
a task switch, the encoder call, the ASGI send chain, HTTP framing and a socket ``send``. Under load
that is most of the loop's time (one write per stream per engine step). A listener who has already
been sent more audio than has played gains nothing from getting each step's chunk the moment it is
made; the loop gains a lot from sending it a few at a time.

:class:`WritePacer` keeps the count for one response. The first write goes at once (time to first
audio is never traded). After that a write is due when ``write_seconds`` of audio are waiting, or as
soon as the audio already sent would play out within ``lead_seconds``. Playback is counted from the
first write (the earliest a client can start), and a write made after the audio before it has
played out (the listener ran dry, or a session had nothing to say) plays from its own arrival. A
response that keeps only a small lead, because the engine makes audio near real time, so writes
every chunk as before; one well ahead writes in blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MERGE_SECONDS", "PacingConfig", "WritePacer"]

MERGE_SECONDS = 0.5
"""Most audio one write carries when the response has fallen behind (or twice the paced block, if more)."""


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


class WritePacer:
    """The write schedule of one streamed response (see the module docstring).

    Args:
        config: The server's pacing settings.
        sample_rate: Samples per second of the audio counted.
        most_samples: A bound the waiting audio never reaches (the stream's buffer limit): a write is
            due at that bound however the setting reads.
    """

    __slots__ = ("_lead", "_played_out", "_rate", "_write", "merge_limit")

    def __init__(self, config: PacingConfig, sample_rate: int, most_samples: int) -> None:
        self._rate = float(sample_rate)
        self._write = min(round(config.write_seconds * sample_rate), max(1, most_samples))
        self._lead = config.lead_seconds
        self._played_out: float | None = None  # when the audio written so far ends playing; None: nothing written
        self.merge_limit = round(max(MERGE_SECONDS, 2 * config.write_seconds) * sample_rate)
        """Most samples one write should carry (chunks waiting are merged up to it)."""

    def due(self, waiting: int, now: float) -> bool:
        """Whether ``waiting`` samples, made and not yet written, should be written at ``now``."""
        if waiting <= 0:
            return False
        if self._played_out is None or waiting >= self._write:
            return True
        return now >= self.deadline()

    def deadline(self) -> float:
        """When the lead falls to ``lead_seconds`` (monotonic time): by then waiting audio must go.

        Only meaningful after the first write.
        """
        assert self._played_out is not None
        return self._played_out - self._lead

    def wrote(self, samples: int, now: float) -> None:
        """Count a write of ``samples`` at ``now``: it plays after what was written before, or from
        ``now`` if that has played out."""
        start = now if self._played_out is None else max(self._played_out, now)
        self._played_out = start + samples / self._rate

    def restart(self) -> None:
        """The listener dropped what it had (a session's ``clear``): the next write goes at once."""
        self._played_out = None
