"""Block public access for snapshots per account and region, and the SQL that tells whether
a snapshot's public grant is in force (the same statements serve SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Collection

from ebsemu.model import SnapshotBlockPublicAccessState
from ebsemu.store.sql_base import SqlBase, placeholders

PUBLIC = "all"  # the grantee of a public grant
BLOCK_ALL = SnapshotBlockPublicAccessState.BLOCK_ALL_SHARING

# True for the snapshot ``s`` unless its owner blocks all public sharing in its region: only
# then does a public grant let others see and use it. One parameter: BLOCK_ALL's value.
PUBLIC_GRANT_IN_FORCE = (
    "NOT EXISTS (SELECT 1 FROM snapshot_block_public_access b "
    "WHERE b.account_id = s.owner_id AND b.region = s.region AND b.state = ?)"
)


def granted_sql(grantees: Collection[str], params: list[object]) -> str:
    """The snapshots ``s`` that grant create-volume permission to one of ``grantees`` (account
    ids, ``all``); a public grant counts only while it is in force."""
    accounts = sorted(set(grantees) - {PUBLIC})
    terms: list[str] = []
    if accounts:
        terms.append(
            "s.id IN (SELECT p.snapshot_id FROM snapshot_permissions p "
            f"WHERE p.grantee IN ({placeholders(len(accounts))}))"
        )
        params += accounts
    if PUBLIC in grantees:
        terms.append(
            "(s.id IN (SELECT p.snapshot_id FROM snapshot_permissions p WHERE p.grantee = ?) "
            f"AND {PUBLIC_GRANT_IN_FORCE})"
        )
        params += [PUBLIC, BLOCK_ALL.value]
    return "(" + (" OR ".join(terms) or "FALSE") + ")"


class PublicAccessTables(SqlBase):
    async def snapshot_block_public_access(
        self, account_id: str, region: str
    ) -> SnapshotBlockPublicAccessState:
        rows = await self._rows(
            "SELECT state FROM snapshot_block_public_access WHERE account_id = ? AND region = ?",
            (account_id, region),
        )
        if not rows:
            return SnapshotBlockPublicAccessState.UNBLOCKED
        return SnapshotBlockPublicAccessState(rows[0][0])

    async def set_snapshot_block_public_access(
        self, account_id: str, region: str, state: SnapshotBlockPublicAccessState
    ) -> None:
        await self._write(
            "INSERT INTO snapshot_block_public_access (account_id, region, state) "
            "VALUES (?, ?, ?) ON CONFLICT (account_id, region) DO UPDATE SET "
            "state = excluded.state",
            (account_id, region, state.value),
        )

    async def effective_snapshot_grantees(self, snapshot_id: str) -> list[str]:
        rows = await self._rows(
            "SELECT p.grantee FROM snapshot_permissions p JOIN snapshots s ON s.id = p.snapshot_id "
            f"WHERE p.snapshot_id = ? AND (p.grantee != ? OR {PUBLIC_GRANT_IN_FORCE}) "
            "ORDER BY p.grantee",
            (snapshot_id, PUBLIC, BLOCK_ALL.value),
        )
        return [str(row[0]) for row in rows]
