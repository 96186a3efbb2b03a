"""A lock of the service that, on a store several server instances share, is held across them:
the in-process lock first, then the store's lock of the same name (``Store.exclusive``: a
PostgreSQL advisory lock). On SQLite, one server owns the database, and the in-process lock
is all there is."""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from types import TracebackType

from ebsemu.store.base import Store


class StoreLock:
    def __init__(self, store: Store, name: str) -> None:
        self._store = store
        self._name = name
        self._local = asyncio.Lock()
        self._shared: AbstractAsyncContextManager[None] | None = None

    async def __aenter__(self) -> None:
        await self._local.acquire()
        if not self._store.shared:
            return
        shared = self._store.exclusive(self._name)
        try:
            await shared.__aenter__()
        except BaseException:
            self._local.release()
            raise
        self._shared = shared

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        shared, self._shared = self._shared, None
        try:
            if shared is not None:
                await shared.__aexit__(kind, exc, traceback)
        finally:
            self._local.release()
