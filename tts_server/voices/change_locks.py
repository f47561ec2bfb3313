"""Per-name serialisation of changes that run to completion even when their caller is cancelled.

:class:`~tts_server.voices.store.VoiceStore` changes one name at a time (a per-name lock, while other
names proceed) and never abandons a change half-way: a client that hangs up mid-upload must not
leave the engine and the disk disagreeing. Both are generic asyncio machinery with no knowledge of
voices, so they live here, apart from the store's voice logic.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

__all__ = ["ChangeLocks"]

T = TypeVar("T")


class ChangeLocks:
    """Per-name locks for changes, and a way to run a change to its end whatever happens to its caller.

    Args:
        on_orphan_done: Called with the task of a change whose caller was cancelled, once the change
            ends (nobody awaits it any more: this is where its outcome can be reported).
    """

    def __init__(self, on_orphan_done: Callable[[asyncio.Task[Any]], None] | None = None) -> None:
        self._on_orphan_done = on_orphan_done
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._background: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        """Names whose lock is held or awaited (a name's lock is dropped when its last user leaves)."""
        return len(self._locks)

    @asynccontextmanager
    async def locked(self, name: str) -> AsyncIterator[None]:
        """Hold ``name``'s lock for the block; changes to other names proceed meanwhile."""
        lock, users = self._locks.get(name, (None, 0))
        lock = lock or asyncio.Lock()
        self._locks[name] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[name]
            if users == 1:
                del self._locks[name]  # no waiters left: keep the table as small as the live names
            else:
                self._locks[name] = (lock, users - 1)

    async def complete(self, work: Awaitable[T]) -> T:
        """Run a change to its end even if the caller is cancelled (a client hung up mid-upload).

        A change abandoned between the engine and the disk would leave them disagreeing.

        Returns:
            What ``work`` returns.

        Raises:
            asyncio.CancelledError: The caller was cancelled (the change goes on; its end goes to
                ``on_orphan_done``).
        """
        task = asyncio.ensure_future(work)
        self._background.add(task)  # a strong reference until it ends
        task.add_done_callback(self._background.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if self._on_orphan_done is not None:
                task.add_done_callback(self._on_orphan_done)  # nobody awaits it any more
            raise
