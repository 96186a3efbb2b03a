"""Job step progress in SQLite: an append-only log per job."""

from __future__ import annotations

import time

from ebsemu.store.sqlite_base import SqliteBase


class StepTables(SqliteBase):
    async def record_step(self, job_id: int, step: str, outcome: str) -> None:
        await self._write(
            "INSERT INTO job_steps (job_id, seq, step, outcome, at) VALUES (?, "
            "(SELECT COALESCE(MAX(seq), 0) + 1 FROM job_steps WHERE job_id = ?), ?, ?, ?)",
            (job_id, job_id, step, outcome, time.time()),
        )

    async def job_steps(self, job_id: int) -> list[tuple[str, str]]:
        """(step, outcome) of the job in the order they were recorded."""
        rows = await self._rows(
            "SELECT step, outcome FROM job_steps WHERE job_id = ? ORDER BY seq", (job_id,)
        )
        return [(r[0], r[1]) for r in rows]
