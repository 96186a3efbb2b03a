"""Job step progress in SQLite: an append-only log per job."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

from ebsemu.store.sql_base import SqlBase

_INSERT_STEP = (
    "INSERT INTO job_steps (job_id, seq, step, outcome, at) VALUES (?, "
    "(SELECT COALESCE(MAX(seq), 0) + 1 FROM job_steps WHERE job_id = ?), ?, ?, ?)"
)


def log_steps(conn: sqlite3.Connection, job_id: int, steps: Sequence[str], outcome: str) -> None:
    """Append ``steps`` to the job's log with ``outcome``, in order."""
    now = time.time()
    for step in steps:
        conn.execute(_INSERT_STEP, (job_id, job_id, step, outcome, now))


class JobNotHeld(Exception):
    """A job's end was to be written by an instance that no longer holds the job (its lease
    ran out and another instance took it over): nothing of that write is kept."""


def close_job(
    conn: sqlite3.Connection, job_id: int, error: str | None = None, holder: str | None = None
) -> None:
    """Mark the job done (or failed with ``error``); a job already closed stays as it was
    closed. With ``holder`` (on a store shared by several instances), only while that
    instance holds the job: JobNotHeld otherwise."""
    outcome = ("failed" if error else "done", error, time.time(), job_id)
    if holder is None:
        conn.execute(
            "UPDATE jobs SET state = ?, error = ?, updated_at = ? "
            "WHERE id = ? AND state = 'running'",
            outcome,
        )
        return
    closed = conn.execute(
        "UPDATE jobs SET state = ?, error = ?, updated_at = ?, lease_until = NULL "
        "WHERE id = ? AND state = 'running' AND owner = ?",
        (*outcome, holder),
    ).rowcount
    if not closed:
        raise JobNotHeld(f"job {job_id} is no longer held by {holder}")


def end_job(
    conn: sqlite3.Connection, job_id: int, steps_done: Sequence[str], holder: str | None
) -> None:
    """A job's last write closes it: log ``steps_done`` done and mark the job done. Where
    another instance took the job over, JobNotHeld undoes the whole of that write."""
    log_steps(conn, job_id, steps_done, "done")
    close_job(conn, job_id, holder=holder)


class StepTables(SqlBase):
    async def record_step(self, job_id: int, step: str, outcome: str) -> None:
        await self._commit(lambda conn: log_steps(conn, job_id, [step], outcome))

    async def job_steps(self, job_id: int) -> list[tuple[str, str]]:
        """(step, outcome) of the job in the order they were recorded."""
        rows = await self._rows(
            "SELECT step, outcome FROM job_steps WHERE job_id = ? ORDER BY seq", (job_id,)
        )
        return [(r[0], r[1]) for r in rows]
