"""Fast snapshot restores in SQLite: one row per account, snapshot and zone."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

from ebsemu.fast_restore import ACTIVE_STATES, FastRestore, FastRestoreState
from ebsemu.store.base import ListQuery, Page
from ebsemu.store.sql_base import Rollback, SqlBase, placeholders, prefixed
from ebsemu.store.sql_filters import filter_sql
from ebsemu.timefmt import from_wire, to_wire

FAST_RESTORE_COLUMNS = (
    "account_id, snapshot_id, zone, zone_id, region, state, reason, snapshot_owner_id, "
    "enabling_time, optimizing_time, enabled_time, disabling_time, disabled_time"
)
FAST_RESTORE_FILTERS: Mapping[str, str] = {
    "snapshot-id": "f.snapshot_id",
    "availability-zone": "f.zone",
    "availability-zone-id": "f.zone_id",
    "owner-id": "f.account_id",  # the account that enabled fast snapshot restores
    "state": "f.state",
}
TIME_COLUMN = {
    FastRestoreState.ENABLING: "enabling_time",
    FastRestoreState.OPTIMIZING: "optimizing_time",
    FastRestoreState.ENABLED: "enabled_time",
    FastRestoreState.DISABLING: "disabling_time",
    FastRestoreState.DISABLED: "disabled_time",
}


def _time(text: str | None) -> datetime | None:
    return from_wire(text) if text else None


def fast_restore_from_row(row: Sequence[Any]) -> FastRestore:
    seq, account, snapshot, zone, zone_id, region, state, reason, owner = row[:9]
    return FastRestore(
        account_id=account,
        snapshot_id=snapshot,
        zone=zone,
        zone_id=zone_id,
        region=region,
        state=FastRestoreState(state),
        reason=reason,
        snapshot_owner_id=owner,
        enabling_time=_time(row[9]),
        optimizing_time=_time(row[10]),
        enabled_time=_time(row[11]),
        disabling_time=_time(row[12]),
        disabled_time=_time(row[13]),
        seq=seq,
    )


class FastRestoreTables(SqlBase):
    async def begin_fast_restore(
        self, record: FastRestore, limit: int
    ) -> tuple[FastRestore, bool] | None:
        """Record ``record`` (enabling) and return it with True, unless the account's fast
        restore of that snapshot in that zone is active already: then that one, unchanged,
        with False. None, with nothing changed, when it would make more than ``limit``
        snapshots of the account and region have fast snapshot restores in any state but
        disabled."""
        active = [s.value for s in ACTIVE_STATES] + [FastRestoreState.DISABLING.value]
        key = (record.account_id, record.snapshot_id, record.zone)
        found: FastRestore | None = None
        async with self._transaction() as db:
            # The limit is counted and kept by one enabling transaction of the account and
            # region at a time (server instances sharing a database included).
            await self._serialize(db, f"fast-restores:{record.account_id}:{record.region}")
            async with db.execute(
                f"SELECT seq, {FAST_RESTORE_COLUMNS} FROM fast_snapshot_restores "
                "WHERE account_id = ? AND snapshot_id = ? AND zone = ?",
                key,
            ) as cur:
                row = await cur.fetchone()
            if row is not None and FastRestoreState(row[6]) in ACTIVE_STATES:
                found = fast_restore_from_row(row)
                raise Rollback
            async with db.execute(
                "SELECT COUNT(DISTINCT snapshot_id) FROM fast_snapshot_restores "
                "WHERE account_id = ? AND region = ? AND snapshot_id != ? "
                f"AND state IN ({placeholders(len(active))})",
                (record.account_id, record.region, record.snapshot_id, *active),
            ) as cur:
                counted = await cur.fetchone()
            if counted is not None and int(counted[0]) >= limit:
                raise Rollback
            await db.execute(
                "DELETE FROM fast_snapshot_restores "
                "WHERE account_id = ? AND snapshot_id = ? AND zone = ?",
                key,
            )
            values = (
                record.account_id,
                record.snapshot_id,
                record.zone,
                record.zone_id,
                record.region,
                record.state.value,
                record.reason,
                record.snapshot_owner_id,
                *(
                    None if t is None else to_wire(t)
                    for t in (
                        record.enabling_time,
                        record.optimizing_time,
                        record.enabled_time,
                        record.disabling_time,
                        record.disabled_time,
                    )
                ),
            )
            await db.execute(
                f"INSERT INTO fast_snapshot_restores ({FAST_RESTORE_COLUMNS}) "
                f"VALUES ({placeholders(len(values))})",
                values,
            )
            return record, True
        return None if found is None else (found, False)

    async def fast_restores_of(
        self, snapshot_id: str, account_id: str | None = None
    ) -> list[FastRestore]:
        """The snapshot's fast restores (of one account, or of every account), zone order."""
        sql = (
            f"SELECT seq, {FAST_RESTORE_COLUMNS} FROM fast_snapshot_restores WHERE snapshot_id = ?"
        )
        params: list[object] = [snapshot_id]
        if account_id is not None:
            sql += " AND account_id = ?"
            params.append(account_id)
        rows = await self._rows(sql + " ORDER BY zone, seq", params)
        return [fast_restore_from_row(row) for row in rows]

    async def transition_fast_restore(
        self,
        record: FastRestore,
        expected: Collection[FastRestoreState],
        new: FastRestoreState,
        reason: str,
        at: datetime,
    ) -> bool:
        """One fast restore -> ``new`` (its time column set to ``at``) if it is in one of
        ``expected``; False (nothing changed) otherwise."""
        states = [s.value for s in expected]
        changed = await self._write(
            f"UPDATE fast_snapshot_restores SET state = ?, reason = ?, {TIME_COLUMN[new]} = ? "
            "WHERE account_id = ? AND snapshot_id = ? AND zone = ? "
            f"AND state IN ({placeholders(len(states))})",
            (
                new.value,
                reason,
                to_wire(at),
                record.account_id,
                record.snapshot_id,
                record.zone,
                *states,
            ),
        )
        return changed == 1

    async def list_fast_restores(self, query: ListQuery) -> Page[FastRestore]:
        params: list[object] = []
        where = [
            f"f.account_id IN ({placeholders(len(query.owner_ids))})",
            "f.region = ?",
        ]
        params += [*query.owner_ids, query.region]
        where += filter_sql(
            query.filters, FAST_RESTORE_FILTERS, "f.snapshot_id", params, tags=False
        )
        rows = await self._page_rows(
            f"SELECT f.seq, {prefixed('f', FAST_RESTORE_COLUMNS)} FROM fast_snapshot_restores f",
            where,
            params,
            query,
            "f.seq",
        )
        return self._paginate(rows, query, fast_restore_from_row)
