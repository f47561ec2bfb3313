"""``EngineClientBase``: the lifecycle the server's two engine clients share.

:class:`~voxcpm_engine.proc.client.AsyncEngine` (one engine process) and
:class:`~voxcpm_engine.proc.group.AsyncEngineGroup`
(one per device) are used interchangeably by the server and the tests: both start and stop, and both
are async context managers that start on entry and stop on exit. That boilerplate is written once
here rather than in each client.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TypeVar

__all__ = ["EngineClientBase"]

_Client = TypeVar("_Client", bound="EngineClientBase")  # typing.Self needs Python 3.11; we support 3.10


class EngineClientBase(ABC):
    """Start/stop, and ``async with client:`` for start on entry and stop on exit."""

    @abstractmethod
    async def start(self) -> None:
        """Start serving (the engine process or processes are ready when this returns)."""

    @abstractmethod
    async def stop(self, timeout_s: float = 10.0) -> None:
        """Shut down; open requests end as cancelled. Safe to call when not started."""

    async def __aenter__(self: _Client) -> _Client:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
