"""The SQLite engine of the store (see ``sql_base``): one writer, one reader, migrations.

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
from collections.abc import AsyncIterator, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import aiosqlite

from ebsemu.store.schema import MIGRATIONS
from ebsemu.store.sql_base import Rollback, SqlBase, T, Work, fetch

log = logging.getLogger(__name__)

_Outcome = tuple[bool, Any]  # (succeeded, result or exception)


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


class SqliteBase(SqlBase):
    def __init__(self, path: Path) -> None:
        super().__init__()
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

    async def open_read_only(self) -> None:
        """Open an existing database for reading only (for a dry-run report while a server may
        be using it): no migration, no statistics, nothing written."""
        if not self._path.exists():
            raise FileNotFoundError(f"no database at {self._path}")
        uri = f"{self._path.resolve().as_uri()}?mode=ro"
        connection = await aiosqlite.connect(uri, uri=True, isolation_level=None)
        self._db = self._reader = connection  # reads and (refused) writes alike

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

    async def _serialize(self, db: Any, name: str) -> None:
        """Nothing to do: a transaction holds the writer, so transactions run one at a time."""

    def _serialize_work(self, conn: Any, name: str) -> None:
        """Nothing to do, as for ``_serialize``."""

    async def _rollback(self) -> None:
        # OperationalError: the BEGIN never ran, so there is nothing to undo.
        with contextlib.suppress(sqlite3.OperationalError):
            await asyncio.shield(self.db.execute("ROLLBACK"))
