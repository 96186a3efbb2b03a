"""What the store holds, in bulk, for reconciliation against what the backends report."""

from __future__ import annotations

from ebsemu.model import Attachment, Instance
from ebsemu.store.rows import (
    ATTACHMENT_COLUMNS,
    INSTANCE_COLUMNS,
    attachment_from_row,
    instance_from_row,
)
from ebsemu.store.sql_base import SqlBase


class ReconcileTables(SqlBase):
    async def volume_states(self) -> dict[str, str]:
        """Every volume record's state by id (`deleted` ones included until purged)."""
        rows = await self._rows("SELECT id, state FROM volumes")
        return {r[0]: r[1] for r in rows}

    async def snapshot_states(self) -> dict[str, tuple[str, bool]]:
        """Every snapshot record's (state, marked deleted) by id."""
        rows = await self._rows("SELECT id, state, deleted FROM snapshots")
        return {r[0]: (r[1], bool(r[2])) for r in rows}

    async def manifest_snapshots(self) -> set[str]:
        """Ids of the snapshots that have manifest rows."""
        rows = await self._rows("SELECT DISTINCT snapshot_id FROM snapshot_blocks")
        return {r[0] for r in rows}

    async def completed_digests(self) -> dict[bytes, set[str]]:
        """Each block digest completed snapshots need, with the snapshots that need it."""
        rows = await self._rows(
            "SELECT b.digest, b.snapshot_id FROM snapshot_blocks b "
            "JOIN snapshots s ON s.id = b.snapshot_id "
            "WHERE s.state = 'completed' AND s.deleted = 0"
        )
        needed: dict[bytes, set[str]] = {}
        for digest, snapshot_id in rows:
            needed.setdefault(bytes(digest), set()).add(snapshot_id)
        return needed

    async def all_attachments(self) -> list[Attachment]:
        rows = await self._rows(f"SELECT {ATTACHMENT_COLUMNS} FROM attachments")
        return [attachment_from_row(r) for r in rows]

    async def all_instances(self) -> list[Instance]:
        rows = await self._rows(f"SELECT seq, {INSTANCE_COLUMNS} FROM instances ORDER BY seq")
        return [instance_from_row(r) for r in rows]
