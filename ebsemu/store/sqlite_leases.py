"""Job claims in SQLite: the database belongs to one server instance (its data directory is
locked), so that instance holds every job; alone, it needs no lock to reconcile either. As on
PostgreSQL, a run of the store never claims a job it recorded (the ids above the highest one
when it opened) or claimed already."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from ebsemu.store.sqlite_base import SqliteBase


class LeaseTables(SqliteBase):
    shared = False

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._jobs_before = 0  # the highest job id when this run opened the store
        self._claimed: set[int] = set()

    async def open(self) -> None:
        await super().open()
        rows = await self._rows("SELECT COALESCE(MAX(id), 0) FROM jobs")
        self._jobs_before = int(rows[0][0])

    async def claim_jobs(self, running: Sequence[int] = ()) -> list[tuple[int, str, str, str]]:
        rows = await self._rows(
            "SELECT id, kind, resource_id, payload FROM jobs WHERE state = 'running' "
            "AND id <= ? ORDER BY id",
            (self._jobs_before,),
        )
        skip = self._claimed | set(running)
        claimed = [(int(r[0]), r[1], r[2], r[3]) for r in rows if int(r[0]) not in skip]
        self._claimed.update(job_id for job_id, _, _, _ in claimed)
        return claimed

    async def renew_job_leases(self, job_ids: Sequence[int]) -> set[int]:
        return set(job_ids)

    @contextlib.asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[None]:
        yield
