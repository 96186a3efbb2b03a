"""Volume modifications in SQLite: the latest modification of each volume, as EC2 keeps it.

A new modification replaces the volume's previous (finished) one in the same transaction that
checks it is finished, so two ModifyVolume calls can never both start one.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from ebsemu.model import VolumeType
from ebsemu.modification import (
    ACTIVE_STATES,
    ModificationState,
    VolumeModification,
    VolumeSettings,
)
from ebsemu.store.base import ListQuery, Page
from ebsemu.store.sql_base import Rollback, SqlBase, placeholders, prefixed
from ebsemu.store.sql_filters import filter_sql
from ebsemu.timefmt import from_wire, to_wire

MODIFICATION_COLUMNS = (
    "volume_id, owner_id, region, state, status_message, progress, start_time, end_time, "
    "original_size, original_volume_type, original_iops, original_throughput, "
    "original_multi_attach, target_size, target_volume_type, target_iops, target_throughput, "
    "target_multi_attach"
)


def _text(column: str) -> str:
    return f"COALESCE(CAST({column} AS TEXT), '')"


def _bool(column: str) -> str:
    return f"(CASE WHEN {column} <> 0 THEN 'true' ELSE 'false' END)"


MODIFICATION_FILTERS: Mapping[str, str] = {
    "volume-id": "m.volume_id",
    "modification-state": "m.state",
    "start-time": "m.start_time",
    "original-size": _text("m.original_size"),
    "original-iops": _text("m.original_iops"),
    "original-throughput": _text("m.original_throughput"),
    "original-volume-type": "m.original_volume_type",
    "original-multi-attach-enabled": _bool("m.original_multi_attach"),
    "originalMultiAttachEnabled": _bool("m.original_multi_attach"),  # as the API docs spell it
    "target-size": _text("m.target_size"),
    "target-iops": _text("m.target_iops"),
    "target-throughput": _text("m.target_throughput"),
    "target-volume-type": "m.target_volume_type",
    "target-multi-attach-enabled": _bool("m.target_multi_attach"),
    "targetMultiAttachEnabled": _bool("m.target_multi_attach"),
}


def _settings_values(settings: VolumeSettings) -> tuple[Any, ...]:
    return (
        settings.size_gib,
        settings.volume_type.value,
        settings.iops,
        settings.throughput,
        int(settings.multi_attach),
    )


def _settings(row: Sequence[Any]) -> VolumeSettings:
    size, vtype, iops, throughput, multi = row
    return VolumeSettings(size, VolumeType(vtype), iops, throughput, bool(multi))


def modification_from_row(row: Sequence[Any]) -> VolumeModification:
    seq, volume_id, owner, region, state, message, progress, start, end = row[:9]
    return VolumeModification(
        volume_id=volume_id,
        owner_id=owner,
        region=region,
        state=ModificationState(state),
        original=_settings(row[9:14]),
        target=_settings(row[14:19]),
        start_time=from_wire(start),
        progress=progress,
        end_time=from_wire(end) if end else None,
        status_message=message,
        seq=seq,
    )


class ModificationTables(SqlBase):
    async def begin_modification(self, modification: VolumeModification) -> bool:
        """Record a new modification of the volume, replacing its previous one, unless that
        one is still active (modifying or optimizing): then nothing changes and False."""
        values = (
            modification.volume_id,
            modification.owner_id,
            modification.region,
            modification.state.value,
            modification.status_message,
            modification.progress,
            to_wire(modification.start_time),
            None,
            *_settings_values(modification.original),
            *_settings_values(modification.target),
        )
        active = [s.value for s in ACTIVE_STATES]
        try:
            async with self._transaction() as db:
                async with db.execute(
                    "SELECT 1 FROM volume_modifications WHERE volume_id = ? "
                    f"AND state IN ({placeholders(len(active))})",
                    (modification.volume_id, *active),
                ) as cur:
                    if await cur.fetchone() is not None:
                        raise Rollback
                # Only a finished one: on PostgreSQL one begun since the SELECT may be active,
                # and then the INSERT below finds it.
                await db.execute(
                    "DELETE FROM volume_modifications WHERE volume_id = ? "
                    f"AND state NOT IN ({placeholders(len(active))})",
                    (modification.volume_id, *active),
                )
                await db.execute(
                    f"INSERT INTO volume_modifications ({MODIFICATION_COLUMNS}) "
                    f"VALUES ({placeholders(len(values))})",
                    values,
                )
                return True
        except sqlite3.IntegrityError:  # one begun at the same time by another server
            return False
        return False

    async def get_modification(self, volume_id: str) -> VolumeModification | None:
        rows = await self._rows(
            f"SELECT seq, {MODIFICATION_COLUMNS} FROM volume_modifications WHERE volume_id = ?",
            (volume_id,),
        )
        return modification_from_row(rows[0]) if rows else None

    async def list_modifications(self, query: ListQuery) -> Page[VolumeModification]:
        params: list[object] = []
        where = [
            f"m.owner_id IN ({placeholders(len(query.owner_ids))})",
            "m.region = ?",
            "m.volume_id IN (SELECT id FROM volumes WHERE state NOT IN ('deleting', 'deleted'))",
        ]
        params += [*query.owner_ids, query.region]
        if query.ids:
            where.append(f"m.volume_id IN ({placeholders(len(query.ids))})")
            params += query.ids
        where += filter_sql(query.filters, MODIFICATION_FILTERS, "m.volume_id", params, tags=False)
        rows = await self._page_rows(
            f"SELECT m.seq, {prefixed('m', MODIFICATION_COLUMNS)} FROM volume_modifications m",
            where,
            params,
            query,
            "m.seq",
        )
        return self._paginate(rows, query, modification_from_row)

    async def set_modification_progress(self, volume_id: str, progress: int) -> None:
        active = [s.value for s in ACTIVE_STATES]
        await self._write(
            "UPDATE volume_modifications SET progress = ? WHERE volume_id = ? "
            f"AND state IN ({placeholders(len(active))})",
            (progress, volume_id, *active),
        )

    async def apply_modification(
        self, volume_id: str, target: VolumeSettings, progress: int
    ) -> bool:
        """modifying -> optimizing, and the volume takes the target settings, in one
        transaction. False (nothing changed) unless the modification was modifying."""
        async with self._transaction() as db:
            cur = await db.execute(
                "UPDATE volume_modifications SET state = 'optimizing', progress = ? "
                "WHERE volume_id = ? AND state = 'modifying'",
                (progress, volume_id),
            )
            if cur.rowcount != 1:
                raise Rollback
            await db.execute(
                "UPDATE volumes SET size_gib = ?, volume_type = ?, iops = ?, throughput = ?, "
                "multi_attach = ?, updated_at = ? WHERE id = ?",
                (*_settings_values(target), time.time(), volume_id),
            )
            return True
        return False

    async def finish_modification(
        self, volume_id: str, state: ModificationState, end_time: datetime, message: str | None
    ) -> bool:
        """An active modification -> completed (progress 100) or failed, with its end time."""
        active = [s.value for s in ACTIVE_STATES]
        changed = await self._write(
            "UPDATE volume_modifications SET state = ?, status_message = ?, end_time = ?, "
            "progress = CASE WHEN ? = 'completed' THEN 100 ELSE progress END "
            f"WHERE volume_id = ? AND state IN ({placeholders(len(active))})",
            (state.value, message, to_wire(end_time), state.value, volume_id, *active),
        )
        return changed == 1
