"""PostgreSQL store through asyncpg, for one or several server instances on one database.

It runs the SQLite store's queries (see ``postgres_base``) and differs where a shared
database must:

- jobs are leased: a job belongs to the instance run that recorded or claimed it (``owner``)
  until its lease (``lease_seconds``, on the database's clock) runs out; the instance renews
  the leases of the jobs it runs and claims — `FOR UPDATE SKIP LOCKED`, so two instances never
  take the same row — the unfinished jobs whose lease ran out (their instance died), that no
  one holds, or that an earlier run of this same instance held. An instance finishes a job
  only while it holds it;
- a run that closes the store releases the leases of the jobs it leaves unfinished;
- the count of an owner's volumes is asked of the database each time (other instances create
  and delete volumes too), not kept in the process;
- ``exclusive`` (start-up reconciliation) is a PostgreSQL advisory lock.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence
from functools import partial

from ebsemu.store.postgres_base import PostgresBase
from ebsemu.store.sql_base import COUNT_VOLUMES_SQL
from ebsemu.store.sqlite import SqlStore
from ebsemu.store.sqlite_steps import JobNotHeld, close_job

_NOW = "extract(epoch FROM clock_timestamp())"


class PostgresStore(PostgresBase, SqlStore):
    shared = True

    def __init__(self, dsn: str, instance_id: str, lease_seconds: float = 30.0) -> None:
        super().__init__(dsn, instance_id, lease_seconds)
        self.owner = f"{instance_id}#{uuid.uuid4().hex[:12]}"

    async def close(self) -> None:
        """Release the leases of the jobs this run leaves unfinished (a shutdown interrupted
        them): another instance takes them over at once instead of after the lease."""
        if self._pool is not None and not self._read_only:
            await self.pool.execute(
                "UPDATE jobs SET lease_until = NULL WHERE owner = $1 AND state = 'running'",
                self.owner,
            )
        await super().close()

    async def count_volumes(self, owner_id: str, region: str) -> int:
        """Counted on each call: other instances sharing the database make volumes too."""
        rows = await self._rows(COUNT_VOLUMES_SQL, (owner_id, region))
        return int(rows[0][0])

    def _job_holder(self) -> str:
        return self.owner

    async def finish_job(self, job_id: int, error: str | None = None) -> None:
        """Close the job while this run holds it; a job another instance took over is left
        to that instance."""
        with contextlib.suppress(JobNotHeld):
            await self._commit(partial(close_job, job_id=job_id, error=error, holder=self.owner))

    async def claim_jobs(self, running: Sequence[int] = ()) -> list[tuple[int, str, str, str]]:
        rows = await self.pool.fetch(
            f"UPDATE jobs SET owner = $1, lease_until = {_NOW} + $2, runs = runs + 1 "
            "WHERE id IN (SELECT id FROM jobs WHERE state = 'running' "
            f"AND (owner IS NULL OR lease_until IS NULL OR lease_until < {_NOW} "
            "OR (left(owner, length($4)) = $4 AND owner <> $1)) "
            "AND NOT (id = ANY($3::bigint[])) ORDER BY id FOR UPDATE SKIP LOCKED) "
            "RETURNING id, kind, resource_id, payload",
            self.owner,
            float(self.lease_seconds),
            list(running),
            f"{self.instance_id}#",
        )
        return sorted((int(r[0]), r[1], r[2], r[3]) for r in rows)

    async def renew_job_leases(self, job_ids: Sequence[int]) -> set[int]:
        if not job_ids:
            return set()
        rows = await self.pool.fetch(
            f"UPDATE jobs SET lease_until = {_NOW} + $2 "
            "WHERE owner = $1 AND state = 'running' AND id = ANY($3::bigint[]) RETURNING id",
            self.owner,
            float(self.lease_seconds),
            list(job_ids),
        )
        return {int(row[0]) for row in rows}

    async def overdue_direct_snapshots(self, now: float, minute_seconds: float) -> list[str]:
        # The SQLite query's `timeout_minutes * ?` would type its parameter as an integer here.
        rows = await self.pool.fetch(
            "SELECT d.snapshot_id FROM direct_snapshots d JOIN snapshots s ON s.id = d.snapshot_id "
            "WHERE s.state = 'pending' AND s.deleted = 0 "
            "AND d.last_activity + d.timeout_minutes * $1::float8 <= $2::float8",
            float(minute_seconds),
            float(now),
        )
        return [str(row[0]) for row in rows]
