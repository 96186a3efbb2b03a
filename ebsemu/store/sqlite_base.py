"""The SQLite connections every store table shares: one writer, one reader, migrations.

Writes go through one connection. A transaction on a connection takes in every statement run
on it until COMMIT, so each use of the writer (an async ``_transaction``, or a batch of queued
writes) holds ``_lock``: no statement of another request slips into a transaction.

Group commit: a write (``_commit``) is a function of the plain ``sqlite3`` connection queued
with the others that arrive while a commit is in flight; one task runs the whole queue in one
transaction, each function inside its own SAVEPOINT (an error undoes that function's statements
only), commits once (one fsync for the batch) and only then answers each caller. A write's
caller therefore never hears of success before its statements are durable.

Reads go to a second connection: in WAL mode it sees every committed transaction, never an
open one, and it does not wait for the writer's fsync. Reads queued together run together.

Each unit of work is one hop to the connection's thread, not one per statement.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from ebsemu.model import Instance, Snapshot, Volume
from ebsemu.store.base import ListQuery, Page
from ebsemu.store.schema import MIGRATIONS

log = logging.getLogger(__name__)

R = TypeVar("R", Volume, Snapshot, Instance)
T = TypeVar("T")
# A unit of work: runs on a connection's thread with the plain sqlite3 connection.
Work = Callable[[sqlite3.Connection], T]
_Outcome = tuple[bool, Any]  # (succeeded, result or exception)


class Rollback(Exception):
    """Raised inside ``_transaction`` to undo it without an error reaching the caller."""


def placeholders(count: int) -> str:
    return ",".join("?" * count)


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


def run_batch(conn: sqlite3.Connection, works: Sequence[Work[Any]]) -> list[_Outcome]:
    """Run ``works`` in one transaction, each in a savepoint, and commit once."""
    outcomes: list[_Outcome] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for work in works:
            conn.execute("SAVEPOINT work")
            try:
                outcomes.append((True, work(conn)))
            except Exception as exc:
                conn.execute("ROLLBACK TO work")
                outcomes.append((False, exc))
            conn.execute("RELEASE work")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return outcomes


def run_reads(conn: sqlite3.Connection, works: Sequence[Work[Any]]) -> list[_Outcome]:
    outcomes: list[_Outcome] = []
    for work in works:
        try:
            outcomes.append((True, work(conn)))
        except Exception as exc:
            outcomes.append((False, exc))
    return outcomes


def _settle(
    batch: Sequence[tuple[Work[Any], asyncio.Future[Any]]], outcomes: Sequence[_Outcome]
) -> None:
    """Answer each caller of a batch, in the batch's order."""
    for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


async def on_thread(connection: aiosqlite.Connection, work: Work[T]) -> T:
    """Run ``work`` on the connection's own thread: one hop where aiosqlite's ``execute``,
    ``fetchall`` and ``close`` cost one each. ``_execute`` is aiosqlite's queue of functions
    for that thread (the one its public methods use); ``_conn`` its sqlite3 connection."""
    result: T = await connection._execute(work, connection._conn)  # type: ignore[no-untyped-call]  # aiosqlite leaves _execute unannotated
    return result


class SqliteBase:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._db: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._pending: list[tuple[Work[Any], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._reads: list[tuple[Work[Any], asyncio.Future[Any]]] = []
        self._read_drainer: asyncio.Task[None] | None = None
        self._read_batch: asyncio.Task[list[_Outcome]] | None = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    @property
    def reader(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise RuntimeError("store is not open")
        return self._reader

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
        # A connection reads the statistics when it opens: a new reader takes over, the old
        # one closes after the reads already queued on it.
        reader = await aiosqlite.connect(self._path, isolation_level=None)
        await reader.execute("PRAGMA query_only=ON")
        old, self._reader = self._reader, reader
        if old is not None:
            # A batch handed to the old reader just before the swap may not have reached its
            # thread yet: closing first would close the connection under it.
            if self._read_batch is not None:
                await asyncio.wait([self._read_batch])
            await old.close()

    async def close(self) -> None:
        for task in (self._flusher, self._read_drainer):
            if task is not None:
                await asyncio.wait([task])
        for connection in (self._reader, self._db):
            if connection is not None:
                await connection.close()
        self._reader = self._db = None

    async def _migrate(self) -> None:
        async with self.db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        version = int(row[0]) if row else 0
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            log.info("applying schema migration %d", number)
            await self.db.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")

    # ---- reads ---------------------------------------------------------------------------

    async def _read(self, work: Work[T]) -> T:
        """Run ``work`` on the read connection (committed data only). Reads queued while the
        reader is busy go to its thread together, in one hop."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._reads.append((work, future))
        if self._read_drainer is None:
            self._read_drainer = asyncio.create_task(self._drain_reads(), name="sqlite-reads")
        return await future

    async def _drain_reads(self) -> None:
        try:
            while self._reads:
                queued, self._reads = self._reads, []
                batch = [(work, future) for work, future in queued if not future.done()]
                if not batch:
                    continue
                works = [work for work, _ in batch]
                self._read_batch = asyncio.ensure_future(
                    on_thread(self.reader, partial(run_reads, works=works))
                )
                try:
                    outcomes = await asyncio.shield(self._read_batch)
                except Exception as exc:
                    outcomes = [(False, exc)] * len(batch)
                finally:
                    self._read_batch = None
                _settle(batch, outcomes)
        finally:
            self._read_drainer = None

    async def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return await self._read(partial(fetch, sql=sql, params=params))

    # ---- writes --------------------------------------------------------------------------

    async def _commit(self, work: Work[T]) -> T:
        """Run ``work`` in a write transaction (shared with the writes queued with it) and
        return its result once that transaction is durably committed. If ``work`` raises, its
        own statements are undone and the exception reaches the caller; the others commit."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((work, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush(), name="sqlite-group-commit")
        return await future

    async def _flush(self) -> None:
        try:
            while self._pending:
                async with self._lock:
                    # Taken under the lock: whatever queued while it was held joins the batch.
                    queued, self._pending = self._pending, []
                    batch = [(work, future) for work, future in queued if not future.done()]
                    if not batch:
                        continue
                    works = [work for work, _ in batch]
                    try:
                        outcomes = await asyncio.shield(
                            on_thread(self.db, partial(run_batch, works=works))
                        )
                    except Exception as exc:
                        outcomes = [(False, exc)] * len(batch)
                _settle(batch, outcomes)
        finally:
            self._flusher = None

    async def _write(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement durably; return the number of rows changed."""
        return await self._commit(lambda conn: conn.execute(sql, params).rowcount)

    async def _many(self, statements: Iterable[tuple[str, Sequence[Any]]]) -> None:
        """Run several statements in one transaction."""
        listed = list(statements)

        def work(conn: sqlite3.Connection) -> None:
            for sql, params in listed:
                conn.execute(sql, params)

        await self._commit(work)

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
    ) -> list[sqlite3.Row]:
        return await self._rows(self._page_sql(select, where, params, query, seq), params)

    @staticmethod
    def _paginate(rows: list[sqlite3.Row], query: ListQuery, convert: Any) -> Page[Any]:
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
