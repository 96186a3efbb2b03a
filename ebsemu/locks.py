"""asyncio locks by key: one per resource id, dropped when nobody holds or waits for it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class ResourceLocks:
    """One asyncio lock per resource id, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, resource_id: str) -> AsyncIterator[None]:
        """Hold the resource's lock, waiting for it."""
        lock = self._acquire_ref(resource_id)
        try:
            async with lock:
                yield
        finally:
            self._release_ref(resource_id)

    @contextlib.asynccontextmanager
    async def try_hold(self, resource_id: str) -> AsyncIterator[bool]:
        """Hold the resource's lock if nobody holds or waits for it (True), without waiting;
        else hold nothing (False)."""
        if resource_id in self._locks:
            yield False
            return
        async with self.hold(resource_id):  # free: acquired at once, no other task runs first
            yield True

    def _acquire_ref(self, resource_id: str) -> asyncio.Lock:
        lock, users = self._locks.get(resource_id, (asyncio.Lock(), 0))
        self._locks[resource_id] = (lock, users + 1)
        return lock

    def _release_ref(self, resource_id: str) -> None:
        lock, users = self._locks[resource_id]
        if users <= 1:
            del self._locks[resource_id]
        else:
            self._locks[resource_id] = (lock, users - 1)
