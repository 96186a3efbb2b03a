"""The SQLite connection every store table shares: one connection, one lock, migrations.

All requests share one connection, and a transaction on a connection takes in every statement
run on it until COMMIT. So each use of the connection (one statement, or one whole transaction)
holds ``_lock``: no statement of another request slips into a transaction, and no request
begins a transaction while another one is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from ebsemu.model import Instance, Snapshot, Volume
from ebsemu.store.base import ListQuery, Page
from ebsemu.store.schema import MIGRATIONS

log = logging.getLogger(__name__)

R = TypeVar("R", Volume, Snapshot, Instance)


class Rollback(Exception):
    """Raised inside ``_transaction`` to undo it without an error reaching the caller."""


def placeholders(count: int) -> str:
    return ",".join("?" * count)


def prefixed(alias: str, columns: str) -> str:
    return ", ".join(f"{alias}.{column.strip()}" for column in columns.split(","))


class SqliteBase:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    async def open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self._path, isolation_level=None)
        await self.db.execute("PRAGMA journal_mode=WAL")
        await self.db.execute("PRAGMA synchronous=FULL")
        await self.db.execute("PRAGMA foreign_keys=ON")
        await self._migrate()
        await self.refresh_statistics()

    async def refresh_statistics(self) -> None:
        """Give the query planner table statistics (bounded work), so listing pages walk the
        seq order and tag filters use their index instead of scanning and sorting."""
        async with self._lock:
            await self.db.execute("PRAGMA analysis_limit=1000")
            await self.db.execute("ANALYZE")

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def _migrate(self) -> None:
        async with self.db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        version = int(row[0]) if row else 0
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            log.info("applying schema migration %d", number)
            await self.db.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")

    async def _write(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement in its own transaction; return the number of rows changed."""
        async with self._lock:
            cur = await self.db.execute(sql, params)
            count = cur.rowcount
            await cur.close()
            return count

    async def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        async with self._lock, self.db.execute(sql, params) as cur:
            return list(await cur.fetchall())

    async def _many(self, statements: Iterable[tuple[str, Sequence[Any]]]) -> None:
        """Run several statements in one transaction."""
        async with self._transaction() as db:
            for sql, params in statements:
                await db.execute(sql, params)

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One transaction, committed when the block ends and rolled back if it raises
        (raise ``Rollback`` to undo it quietly). A cancelled caller still rolls back: aiosqlite
        runs statements in order on its thread, so a BEGIN already queued is always undone."""
        async with self._lock:
            try:
                await self.db.execute("BEGIN IMMEDIATE")
                yield self.db
            except Rollback:
                await self._rollback()
                return
            except BaseException:
                await self._rollback()
                raise
            await self.db.execute("COMMIT")

    async def _rollback(self) -> None:
        # OperationalError: the BEGIN never ran, so there is nothing to undo.
        with contextlib.suppress(sqlite3.OperationalError):
            await asyncio.shield(self.db.execute("ROLLBACK"))

    # ---- shared query helpers ------------------------------------------------------------

    @staticmethod
    def _scope(alias: str, query: ListQuery, params: list[object]) -> list[str]:
        where = [
            f"{alias}.owner_id IN ({placeholders(len(query.owner_ids))})",
            f"{alias}.region = ?",
        ]
        params += [*query.owner_ids, query.region]
        if query.ids:
            where.append(f"{alias}.id IN ({placeholders(len(query.ids))})")
            params += query.ids
        return where

    async def _page_rows(
        self,
        select: str,
        where: list[str],
        params: list[object],
        query: ListQuery,
        seq: str,
    ) -> list[sqlite3.Row]:
        if query.after_seq:
            where.append(f"{seq} > ?")
            params.append(query.after_seq)
        sql = f"{select} WHERE {' AND '.join(where)} ORDER BY {seq}"
        if query.limit is not None:
            sql += " LIMIT ?"
            params.append(query.limit + 1)
        return await self._rows(sql, params)

    @staticmethod
    def _paginate(rows: list[sqlite3.Row], query: ListQuery, convert: Any) -> Page[Any]:
        more = query.limit is not None and len(rows) > query.limit
        if more:
            rows = rows[: query.limit]
        return Page(
            items=[convert(row) for row in rows], last_seq=int(rows[-1][0]) if more else None
        )

    async def _with_tags(self, items: list[R]) -> list[R]:
        if not items:
            return items
        by_id = {item.id: item for item in items}
        ids = list(by_id)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = await self._rows(
                f"SELECT resource_id, key, value FROM tags "
                f"WHERE resource_id IN ({placeholders(len(chunk))}) ORDER BY rowid",
                chunk,
            )
            for resource_id, key, value in rows:
                by_id[resource_id].tags[key] = value
        return items
