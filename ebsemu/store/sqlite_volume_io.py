"""Volumes' autoEnableIO attribute and I/O incidents in SQLite (table ``volume_io``; a trigger
drops a volume's row when the volume is purged)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from ebsemu.store.base import VolumeIo
from ebsemu.store.sql_base import SqlBase, placeholders
from ebsemu.timefmt import from_wire, to_wire


class VolumeIoTables(SqlBase):
    async def volume_io(self, volume_ids: Sequence[str]) -> dict[str, VolumeIo]:
        found = {volume_id: VolumeIo() for volume_id in volume_ids}
        ids = list(found)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = await self._rows(
                "SELECT volume_id, auto_enable_io, io_disabled, event_id, event_description, "
                f"event_since FROM volume_io WHERE volume_id IN ({placeholders(len(chunk))})",
                chunk,
            )
            for volume_id, auto, disabled, event_id, description, since in rows:
                found[volume_id] = VolumeIo(
                    bool(auto),
                    bool(disabled),
                    event_id,
                    description,
                    from_wire(since) if since else None,
                )
        return found

    async def set_auto_enable_io(self, volume_id: str, value: bool) -> None:
        await self._write(
            "INSERT INTO volume_io (volume_id, auto_enable_io) VALUES (?, ?) "
            "ON CONFLICT (volume_id) DO UPDATE SET auto_enable_io = excluded.auto_enable_io",
            (volume_id, int(value)),
        )

    async def open_io_incident(
        self, volume_id: str, event_id: str, description: str, since: datetime
    ) -> VolumeIo:
        await self._write(
            "INSERT INTO volume_io (volume_id, io_disabled, event_id, event_description, "
            "event_since) VALUES (?, 1, ?, ?, ?) "
            "ON CONFLICT (volume_id) DO UPDATE SET event_id = excluded.event_id, "
            "event_description = excluded.event_description, "
            "event_since = excluded.event_since, "
            "io_disabled = CASE WHEN volume_io.auto_enable_io = 0 THEN 1 "
            "ELSE volume_io.io_disabled END "
            "WHERE volume_io.event_id IS NULL",
            (volume_id, event_id, description, to_wire(since)),
        )
        return (await self.volume_io([volume_id]))[volume_id]

    async def close_io_incident(self, volume_id: str) -> None:
        await self._write(
            "UPDATE volume_io SET event_id = NULL, event_description = NULL, event_since = NULL "
            "WHERE volume_id = ? AND io_disabled = 0",
            (volume_id,),
        )

    async def enable_volume_io(self, volume_id: str) -> None:
        await self._write("UPDATE volume_io SET io_disabled = 0 WHERE volume_id = ?", (volume_id,))
