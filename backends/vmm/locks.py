"""One asyncio lock per domain: a driver's checks and changes on one domain go together."""

from __future__ import annotations

import asyncio


class DomainLocks:
    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}

    def __call__(self, domain: str) -> asyncio.Lock:
        return self._locks.setdefault(domain, asyncio.Lock())
