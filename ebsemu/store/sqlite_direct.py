"""The EBS direct API's tables in SQLite, and its manifest queries (compared by digest in SQL)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

from ebsemu.model import ZERO_DIGEST, Snapshot, utcnow
from ebsemu.store.direct import ChangedRow, DirectMeta
from ebsemu.store.rows import SNAPSHOT_COLUMNS, snapshot_values
from ebsemu.store.sql_base import SqlBase, placeholders
from ebsemu.timefmt import to_wire

_META_COLUMNS = (
    "snapshot_id, owner_id, parent_snapshot_id, client_token, request_digest, "
    "timeout_minutes, last_activity"
)


class DirectTables(SqlBase):
    async def direct_key(self, name: str, fresh: bytes) -> bytes:
        async with self._transaction() as db:
            await db.execute(
                "INSERT INTO direct_keys (name, secret) VALUES (?, ?) ON CONFLICT DO NOTHING",
                (name, fresh),
            )
            async with db.execute("SELECT secret FROM direct_keys WHERE name = ?", (name,)) as cur:
                row = await cur.fetchone()
        assert row is not None
        return bytes(row[0])

    async def start_direct_snapshot(
        self, snapshot: Snapshot, meta: DirectMeta, *, limit: int | None = None
    ) -> str:
        values = snapshot_values(snapshot)
        try:
            async with self._transaction() as db:
                if limit is not None:
                    owner, region = snapshot.owner_id, snapshot.region
                    await self._keep_within(db, "snapshots", owner, region, limit)
                await db.execute(
                    f"INSERT INTO snapshots ({SNAPSHOT_COLUMNS}) "
                    f"VALUES ({placeholders(len(values))})",
                    values,
                )
                await db.executemany(
                    "INSERT INTO tags (resource_id, resource_type, owner_id, key, value) "
                    "VALUES (?, 'snapshot', ?, ?, ?)",
                    [(snapshot.id, snapshot.owner_id, k, v) for k, v in snapshot.tags.items()],
                )
                await db.execute(
                    f"INSERT INTO direct_snapshots ({_META_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        meta.snapshot_id,
                        meta.owner_id,
                        meta.parent_snapshot_id,
                        meta.client_token,
                        meta.request_digest,
                        meta.timeout_minutes,
                        meta.last_activity,
                    ),
                )
                if meta.parent_snapshot_id is not None:
                    await db.execute(
                        "INSERT INTO snapshot_blocks (snapshot_id, block_index, digest) "
                        "SELECT ?, block_index, digest FROM snapshot_blocks WHERE snapshot_id = ?",
                        (snapshot.id, meta.parent_snapshot_id),
                    )
        except sqlite3.IntegrityError:
            if meta.client_token is None:
                raise
            existing = await self.direct_snapshot_by_token(meta.owner_id, meta.client_token)
            if existing is None:
                raise
            return existing
        return snapshot.id

    async def direct_meta(self, snapshot_id: str) -> DirectMeta | None:
        rows = await self._rows(
            f"SELECT {_META_COLUMNS} FROM direct_snapshots WHERE snapshot_id = ?", (snapshot_id,)
        )
        if not rows:
            return None
        sid, owner, parent, token, digest, timeout, activity = rows[0]
        return DirectMeta(sid, owner, parent, token, digest, int(timeout), float(activity))

    async def direct_snapshot_by_token(self, owner_id: str, token: str) -> str | None:
        rows = await self._rows(
            "SELECT snapshot_id FROM direct_snapshots WHERE owner_id = ? AND client_token = ?",
            (owner_id, token),
        )
        return str(rows[0][0]) if rows else None

    async def put_direct_block(
        self, snapshot_id: str, index: int, digest: bytes
    ) -> list[bytes] | None:
        async with self._transaction() as db:
            cur = await db.execute(
                "UPDATE direct_snapshots SET last_activity = ? WHERE snapshot_id = ? AND "
                "snapshot_id IN (SELECT id FROM snapshots WHERE state = 'pending' "
                "AND deleted = 0)",
                (time.time(), snapshot_id),
            )
            pending = cur.rowcount == 1
            await cur.close()
            if not pending:
                return None
            async with db.execute(
                "SELECT digest FROM snapshot_blocks WHERE snapshot_id = ? AND block_index = ?",
                (snapshot_id, index),
            ) as cur:
                held = await cur.fetchone()
            await db.execute(
                "INSERT OR REPLACE INTO direct_written_blocks (snapshot_id, block_index, digest) "
                "VALUES (?, ?, ?)",
                (snapshot_id, index, digest),
            )
            if digest == ZERO_DIGEST:
                await db.execute(
                    "DELETE FROM snapshot_blocks WHERE snapshot_id = ? AND block_index = ?",
                    (snapshot_id, index),
                )
            else:
                await db.execute(
                    "INSERT OR REPLACE INTO snapshot_blocks (snapshot_id, block_index, digest) "
                    "VALUES (?, ?, ?)",
                    (snapshot_id, index, digest),
                )
            if held is None or bytes(held[0]) == digest:
                return []
            replaced = bytes(held[0])
            async with db.execute(
                "SELECT 1 FROM snapshot_blocks WHERE digest = ? LIMIT 1", (replaced,)
            ) as cur:
                return [] if await cur.fetchone() else [replaced]

    async def direct_written(self, snapshot_id: str) -> list[tuple[int, bytes]]:
        rows = await self._rows(
            "SELECT block_index, digest FROM direct_written_blocks WHERE snapshot_id = ? "
            "ORDER BY block_index",
            (snapshot_id,),
        )
        return [(int(row[0]), bytes(row[1])) for row in rows]

    async def finish_direct_snapshot(self, snapshot_id: str, full_size_bytes: int) -> bool:
        async with self._transaction() as db:
            cur = await db.execute(
                "UPDATE snapshots SET state = 'completed', progress = 100, completion_time = ?, "
                "full_size_bytes = ? WHERE id = ? AND state = 'pending' AND deleted = 0",
                (to_wire(utcnow()), full_size_bytes, snapshot_id),
            )
            done = bool(cur.rowcount == 1)
            await cur.close()
            if done:
                await db.execute(
                    "DELETE FROM direct_written_blocks WHERE snapshot_id = ?", (snapshot_id,)
                )
        return done

    async def overdue_direct_snapshots(self, now: float, minute_seconds: float) -> list[str]:
        rows = await self._rows(
            "SELECT d.snapshot_id FROM direct_snapshots d JOIN snapshots s ON s.id = d.snapshot_id "
            "WHERE s.state = 'pending' AND s.deleted = 0 "
            "AND d.last_activity + d.timeout_minutes * ? <= ?",
            (minute_seconds, now),
        )
        return [str(row[0]) for row in rows]

    async def manifest_page(
        self, snapshot_id: str, start: int, limit: int
    ) -> list[tuple[int, bytes]]:
        rows = await self._rows(
            "SELECT block_index, digest FROM snapshot_blocks WHERE snapshot_id = ? "
            "AND block_index >= ? ORDER BY block_index LIMIT ?",
            (snapshot_id, start, limit),
        )
        return [(int(row[0]), bytes(row[1])) for row in rows]

    async def changed_page(
        self, first_id: str | None, second_id: str, start: int, limit: int
    ) -> list[ChangedRow]:
        if first_id is None:
            return [
                ChangedRow(index, None, digest)
                for index, digest in await self.manifest_page(second_id, start, limit)
            ]
        rows = await self._rows(
            "SELECT s.block_index, f.digest, s.digest FROM snapshot_blocks s "
            "LEFT JOIN snapshot_blocks f ON f.snapshot_id = ? AND f.block_index = s.block_index "
            "WHERE s.snapshot_id = ? AND s.block_index >= ? "
            "AND (f.digest IS NULL OR f.digest != s.digest) "
            "UNION ALL "
            "SELECT f.block_index, f.digest, NULL FROM snapshot_blocks f "
            "WHERE f.snapshot_id = ? AND f.block_index >= ? AND NOT EXISTS "
            "(SELECT 1 FROM snapshot_blocks s WHERE s.snapshot_id = ? "
            "AND s.block_index = f.block_index) "
            "ORDER BY 1 LIMIT ?",
            (first_id, second_id, start, first_id, start, second_id, limit),
        )
        return [
            ChangedRow(
                int(row[0]),
                bytes(row[1]) if row[1] is not None else None,
                bytes(row[2]) if row[2] is not None else None,
            )
            for row in rows
        ]

    async def manifest_rows(self, snapshot_id: str, indexes: Sequence[int]) -> dict[int, bytes]:
        if not indexes:
            return {}
        rows = await self._rows(
            "SELECT block_index, digest FROM snapshot_blocks WHERE snapshot_id = ? "
            f"AND block_index IN ({placeholders(len(indexes))})",
            (snapshot_id, *indexes),
        )
        return {int(row[0]): bytes(row[1]) for row in rows}
