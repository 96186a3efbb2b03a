"""What every SQL store shares, whichever database runs it.

The queries of the store are written once, as SQLite SQL, in the table modules
(``sqlite.py`` and ``sqlite_*.py``): each is a mixin of ``SqlBase``. An engine base class
gives them a database: ``SqliteBase`` (one file, one writer with group commit, one reader) or
``PostgresBase`` (a connection pool; ``pg_dialect`` rewrites the few SQLite forms). A store is
one engine and the tables: ``SqliteStore``, ``PostgresStore``.

The engine's part is declared here: how a read, a write, a unit of work (a synchronous function
of a ``sqlite3.Connection``, see ``Work``) and an async transaction run, and the lock one
server instance at a time holds (``exclusive``).
"""

from __future__ import annotations

import abc
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from functools import cache, partial
from typing import Any, TypeVar

from ebsemu.model import Instance, Snapshot, Volume
from ebsemu.store.base import ListQuery, Page, QuotaReached

R = TypeVar("R", Volume, Snapshot, Instance)
T = TypeVar("T")
# A unit of work: runs on a connection's thread with the plain sqlite3 connection.
Work = Callable[[sqlite3.Connection], T]


class Rollback(Exception):
    """Raised inside ``_transaction`` to undo it without an error reaching the caller."""


def placeholders(count: int) -> str:
    return ",".join("?" * count)


@cache  # a handful of (alias, column list) pairs, asked on every query
def prefixed(alias: str, columns: str) -> str:
    return ", ".join(f"{alias}.{column.strip()}" for column in columns.split(","))


def fetch(conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> list[Any]:
    return conn.execute(sql, params).fetchall()


def tags_into(conn: sqlite3.Connection, items: Sequence[R]) -> None:
    """Load the tags of ``items`` into them."""
    by_id = {item.id: item for item in items}
    ids = list(by_id)
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        rows = fetch(
            conn,
            f"SELECT resource_id, key, value FROM tags "
            f"WHERE resource_id IN ({placeholders(len(chunk))}) ORDER BY rowid",
            chunk,
        )
        for resource_id, key, value in rows:
            by_id[resource_id].tags[key] = value


# The quotas' counts, per owner and region: each is answered from an index alone,
# volumes_owner_state (owner_id, region, state) and snapshots_owner_deleted (migration 15).
COUNT_VOLUMES_SQL = (
    "SELECT COUNT(*) FROM volumes WHERE owner_id = ? AND region = ? AND state != 'deleted'"
)
COUNT_SNAPSHOTS_SQL = (
    "SELECT COUNT(*) FROM snapshots WHERE owner_id = ? AND region = ? AND deleted = 0"
)
_COUNTS = {"volumes": COUNT_VOLUMES_SQL, "snapshots": COUNT_SNAPSHOTS_SQL}


def _check_within(kind: str, counted: Sequence[Any] | None, adding: int, limit: int) -> None:
    have = int(counted[0]) if counted else 0
    if have + adding > limit:
        raise QuotaReached(f"{have} {kind} of {limit}: {adding} more refused")


class SqlBase(abc.ABC):
    """The database operations the table mixins use, and the query helpers they share."""

    # True where several server instances share the database (jobs are leased, counts asked).
    shared: bool

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect, creating and migrating the schema as needed."""

    @abc.abstractmethod
    async def open_read_only(self) -> None:
        """Connect for reading only: no migration, nothing written (a dry-run report)."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def refresh_statistics(self) -> None:
        """Give the query planner fresh table statistics."""

    @abc.abstractmethod
    async def _read(self, work: Work[T]) -> T:
        """Run ``work`` against committed data."""

    @abc.abstractmethod
    async def _commit(self, work: Work[T]) -> T:
        """Run ``work`` in a write transaction; its result once durably committed. If ``work``
        raises, its statements are undone and the exception reaches the caller."""

    @abc.abstractmethod
    async def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]: ...

    @abc.abstractmethod
    async def _write(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement durably; return the number of rows changed."""

    @abc.abstractmethod
    async def _many(self, statements: Iterable[tuple[str, Sequence[Any]]]) -> None:
        """Run several statements in one transaction."""

    @abc.abstractmethod
    def _transaction(self) -> AbstractAsyncContextManager[Any]:
        """One transaction, committed when the block ends and rolled back if it raises
        (``Rollback`` undoes it quietly). The block gets an object whose ``execute`` and
        ``executemany`` are awaited, as on aiosqlite's connection."""

    @abc.abstractmethod
    async def _serialize(self, db: Any, name: str) -> None:
        """Inside ``_transaction`` (``db`` its object): make every other transaction that
        serializes on ``name`` wait until this one ends, on every server instance."""

    @abc.abstractmethod
    def _serialize_work(self, conn: Any, name: str) -> None:
        """Inside a unit of work (``_commit``; ``conn`` its connection): as ``_serialize``."""

    async def _keep_within(
        self, db: Any, kind: str, owner_id: str, region: str, limit: int, adding: int = 1
    ) -> None:
        """Inside ``_transaction``, before its insert: QuotaReached if ``adding`` more
        ``kind`` ("volumes" or "snapshots") would take the owner's in the region past
        ``limit``, counted once every other insert keeping within it has ended."""
        await self._serialize(db, f"quota:{kind}:{owner_id}:{region}")
        async with db.execute(_COUNTS[kind], (owner_id, region)) as cur:
            _check_within(kind, await cur.fetchone(), adding, limit)

    def _keep_within_work(
        self, conn: Any, kind: str, owner_id: str, region: str, limit: int, adding: int = 1
    ) -> None:
        """``_keep_within`` inside a unit of work (``_commit``)."""
        self._serialize_work(conn, f"quota:{kind}:{owner_id}:{region}")
        _check_within(
            kind, conn.execute(_COUNTS[kind], (owner_id, region)).fetchone(), adding, limit
        )

    @abc.abstractmethod
    def exclusive(self, name: str) -> AbstractAsyncContextManager[None]:
        """Held for the block by one server instance at a time (reconciliation)."""

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

    @staticmethod
    def _page_sql(
        select: str, where: list[str], params: list[object], query: ListQuery, seq: str
    ) -> str:
        if query.after_seq:
            where.append(f"{seq} > ?")
            params.append(query.after_seq)
        sql = f"{select} WHERE {' AND '.join(where)} ORDER BY {seq}"
        if query.limit is not None:
            sql += " LIMIT ?"
            params.append(query.limit + 1)
        return sql

    async def _page_rows(
        self,
        select: str,
        where: list[str],
        params: list[object],
        query: ListQuery,
        seq: str,
    ) -> list[Any]:
        return await self._rows(self._page_sql(select, where, params, query, seq), params)

    @staticmethod
    def _paginate(rows: list[Any], query: ListQuery, convert: Any) -> Page[Any]:
        more = query.limit is not None and len(rows) > query.limit
        if more:
            rows = rows[: query.limit]
        return Page(
            items=[convert(row) for row in rows], last_seq=int(rows[-1][0]) if more else None
        )

    async def _with_tags(self, items: list[R]) -> list[R]:
        if items:
            await self._read(partial(tags_into, items=items))
        return items
