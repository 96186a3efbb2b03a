"""Snapshot locks in SQLite: one row per locked snapshot, kept until it is unlocked or the
snapshot is removed (an expired lock stays listed as `expired`).

A lock put on a pending snapshot has no duration start in its row: the snapshot's completion
time is its start, read through the join, and written into the row when locks are listed (the
lock-state filter compares the stored expiry).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ebsemu.snapshot_lock import LockMode, SnapshotLock
from ebsemu.store.base import ListQuery, LockChange, Page
from ebsemu.store.sql_base import SqlBase, placeholders
from ebsemu.store.sql_filters import filter_sql
from ebsemu.timefmt import from_wire, to_wire

LOCK_COLUMNS = (
    "snapshot_id, owner_id, region, lock_mode, created_on, duration_days, duration_start, "
    "expires_on, cool_off_hours, cool_off_expires_on"
)
_COLUMNS = (
    "SELECT l.seq, l.snapshot_id, l.owner_id, l.region, l.lock_mode, l.created_on, "
    "l.duration_days, l.duration_start, l.expires_on, l.cool_off_hours, "
    "l.cool_off_expires_on, s.completion_time"
)
_SELECT = f"{_COLUMNS} FROM snapshot_locks l JOIN snapshots s ON s.id = l.snapshot_id"
# Each lock with its state at a time bound twice (see SnapshotLock.state), for the filter.
_LIST_SELECT = (
    f"{_COLUMNS} FROM (SELECT *, "
    "CASE WHEN expires_on IS NOT NULL AND expires_on <= ? THEN 'expired' "
    "WHEN lock_mode = 'governance' THEN 'governance' "
    "WHEN cool_off_expires_on IS NOT NULL AND cool_off_expires_on > ? "
    "THEN 'compliance-cooloff' ELSE 'compliance' END AS lock_state "
    "FROM snapshot_locks) l JOIN snapshots s ON s.id = l.snapshot_id"
)
LOCK_FILTERS = {"lock-state": "l.lock_state"}
HOLD_SNAPSHOT_SQL = "UPDATE snapshots SET deleted = deleted WHERE id = ? AND deleted = 0"


def _time(text: str | None) -> datetime | None:
    return from_wire(text) if text else None


def lock_from_row(row: Sequence[Any]) -> SnapshotLock:
    seq, snapshot_id, owner_id, region, mode, created_on, days = row[:7]
    lock = SnapshotLock(
        snapshot_id=snapshot_id,
        owner_id=owner_id,
        region=region,
        mode=LockMode(mode),
        created_on=from_wire(created_on),
        duration_days=days,
        duration_start=_time(row[7]),
        expires_on=_time(row[8]),
        cool_off_hours=row[9],
        cool_off_expires_on=_time(row[10]),
        seq=seq,
    )
    return lock.started(_time(row[11]))


def _values(lock: SnapshotLock) -> tuple[object, ...]:
    def wire(moment: datetime | None) -> str | None:
        return None if moment is None else to_wire(moment)

    return (
        lock.snapshot_id,
        lock.owner_id,
        lock.region,
        lock.mode.value,
        to_wire(lock.created_on),
        lock.duration_days,
        wire(lock.duration_start),
        wire(lock.expires_on),
        lock.cool_off_hours,
        wire(lock.cool_off_expires_on),
    )


class SnapshotLockTables(SqlBase):
    """Every change of a snapshot's lock, and the marking of the snapshot deleted (SqlStore),
    happens in a transaction serialized on the snapshot (``hold_snapshot``, on every server
    instance sharing the database) that reads the lock afresh: a DeleteSnapshot never passes a
    lock put meanwhile, and no lock is put on a snapshot being deleted."""

    async def change_snapshot_lock(self, snapshot_id: str, change: LockChange) -> bool:
        async with self._transaction() as db:
            present, current = await self._lock_of(db, snapshot_id)
            if not present:
                return False
            new = change(current)
            if new is None:
                await db.execute("DELETE FROM snapshot_locks WHERE snapshot_id = ?", (snapshot_id,))
            elif new != current:
                updates = ", ".join(f"{c} = excluded.{c}" for c in LOCK_COLUMNS.split(", ")[1:])
                await db.execute(
                    f"INSERT INTO snapshot_locks ({LOCK_COLUMNS}) VALUES ({placeholders(10)}) "
                    f"ON CONFLICT (snapshot_id) DO UPDATE SET {updates}",
                    _values(new),
                )
        return True

    async def _lock_of(self, db: Any, snapshot_id: str) -> tuple[bool, SnapshotLock | None]:
        """Inside a transaction: whether the snapshot is there and not deleted, and its lock.
        The snapshot's row is written first (unchanged), so that every other transaction doing
        the same waits for this one to end (``hold_snapshot``)."""
        present = await hold_snapshot(db, snapshot_id)
        async with db.execute(f"{_SELECT} WHERE l.snapshot_id = ?", (snapshot_id,)) as cur:
            row = await cur.fetchone()
        return present, lock_from_row(row) if row else None

    async def get_snapshot_lock(self, snapshot_id: str) -> SnapshotLock | None:
        rows = await self._rows(f"{_SELECT} WHERE l.snapshot_id = ?", (snapshot_id,))
        return lock_from_row(rows[0]) if rows else None

    async def list_snapshot_locks(self, query: ListQuery, now: datetime) -> Page[SnapshotLock]:
        """The locks of the query's owners' snapshots (not those being deleted), with their
        state at ``now`` for the lock-state filter."""
        await self._start_lock_durations(query)
        params: list[object] = [to_wire(now), to_wire(now), *query.owner_ids, query.region]
        where = [
            f"l.owner_id IN ({placeholders(len(query.owner_ids))})",
            "l.region = ?",
            "s.deleted = 0",
        ]
        if query.ids:
            where.append(f"l.snapshot_id IN ({placeholders(len(query.ids))})")
            params += query.ids
        where += filter_sql(query.filters, LOCK_FILTERS, "l.snapshot_id", params, tags=False)
        rows = await self._page_rows(_LIST_SELECT, where, params, query, "l.seq")
        return self._paginate(rows, query, lock_from_row)

    async def _start_lock_durations(self, query: ListQuery) -> None:
        """Write the start (and expiry) of the durations whose snapshots have completed."""
        rows = await self._rows(
            f"{_SELECT} WHERE l.owner_id IN ({placeholders(len(query.owner_ids))}) "
            "AND l.region = ? AND l.duration_start IS NULL AND s.completion_time IS NOT NULL",
            (*query.owner_ids, query.region),
        )
        for row in rows:
            lock = lock_from_row(row)
            await self._write(
                "UPDATE snapshot_locks SET duration_start = ?, expires_on = ? "
                "WHERE snapshot_id = ? AND duration_start IS NULL",
                (
                    to_wire(lock.duration_start) if lock.duration_start else None,
                    to_wire(lock.expires_on) if lock.expires_on else None,
                    lock.snapshot_id,
                ),
            )


async def hold_snapshot(db: Any, snapshot_id: str, *, completed: bool = False) -> bool:
    """Inside a transaction: write the snapshot's row unchanged if it is not deleted (and, if
    asked, completed), and say whether it was. Its row lock (PostgreSQL) is then held until
    the transaction ends, so transactions that begin so on one snapshot run one after the
    other, on every server instance; on SQLite every write transaction does."""
    sql = HOLD_SNAPSHOT_SQL + (" AND state = 'completed'" if completed else "")
    async with db.execute(sql, (snapshot_id,)) as cur:
        return bool(cur.rowcount == 1)
