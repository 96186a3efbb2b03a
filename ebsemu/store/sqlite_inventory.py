"""Counts of what the SQLite store holds, for /metrics: a few grouped COUNTs, no row scans
beyond what the state indexes cover."""

from __future__ import annotations

from ebsemu.store.base import Inventory
from ebsemu.store.sql_base import SqlBase


class InventoryTables(SqlBase):
    async def inventory(self) -> Inventory:
        volumes = await self._rows("SELECT state, COUNT(*) FROM volumes GROUP BY state")
        snapshots = await self._rows(
            "SELECT state, COUNT(*) FROM snapshots WHERE deleted = 0 GROUP BY state"
        )
        jobs = await self._rows("SELECT kind, state, COUNT(*) FROM jobs GROUP BY kind, state")
        return Inventory(
            volumes={str(state): int(count) for state, count in volumes},
            snapshots={str(state): int(count) for state, count in snapshots},
            jobs={(str(kind), str(state)): int(count) for kind, state, count in jobs},
        )
