"""The PostgreSQL engine of the store (see ``sql_base``): a connection pool.

Every query of the store is written once, in the SQLite modules, and runs here through
``pg_dialect``. The store uses its database in three ways, and each has its counterpart:

- one statement (``_rows``, ``_write``): run on any pooled connection;
- an async transaction (``_transaction``): one pooled connection from BEGIN to COMMIT, behind
  an object with the methods of aiosqlite's connection the store calls (``Transaction``);
- a unit of work (``_commit``, ``_read``): a synchronous function of a ``sqlite3.Connection``.
  It runs unchanged in a worker thread, against ``PgConnection``: the part of
  ``sqlite3.Connection`` the store uses (``execute`` returning a cursor with ``fetchone``,
  ``fetchall``, ``rowcount`` and ``lastrowid``; ``executemany``), each statement handed to
  the event loop (``run_coroutine_threadsafe``) and run on the work's own pooled connection.
  A write's work runs in one transaction of its own, a read's statement by statement, as on
  SQLite's reader.

Why this shape: the group commit of the SQLite store exists because SQLite has one writer and
one fsync per transaction; PostgreSQL takes concurrent transactions from many connections
(and many server instances), so each unit of work simply gets its own connection and
transaction, while the queries and the code around them stay shared. The alternatives — a
second, async copy of every unit of work, or rewriting the SQLite store around async
functions — would fork or churn the code both stores run. The cost is one thread hop per
statement of a unit of work (a few of them per request), not per row.

Isolation is READ COMMITTED: every state change is a compare-and-set
`UPDATE … WHERE state IN (…)`, which PostgreSQL re-checks on the row it has locked, so of two
concurrent changes from one state only one applies. A unique index a statement violates
raises ``sqlite3.IntegrityError``, as on SQLite, and in a unit of work an INSERT runs in a
savepoint, so the work can go on after catching it (a ClientToken used already).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Coroutine, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from ebsemu.store.pg_dialect import Translation, bind, changed_rows, translate
from ebsemu.store.pg_schema import PG_MIGRATIONS
from ebsemu.store.sql_base import Rollback, SqlBase, Work

log = logging.getLogger(__name__)

T = TypeVar("T")

# pg_advisory_lock key for schema migrations; the others are derived from a name.
MIGRATION_LOCK = 0x65627365  # "ebse"
POOL_SIZE = 10


def redact_dsn(dsn: str) -> str:
    """The DSN as it may be logged: without its password."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + host))


class Cursor:
    """A statement's outcome, as a ``sqlite3.Cursor`` offers it."""

    def __init__(self, rows: list[tuple[Any, ...]], rowcount: int, lastrowid: int | None) -> None:
        self._rows = rows
        self.rowcount = rowcount
        self.lastrowid = lastrowid

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._rows

    def close(self) -> None:
        return None


async def run_statement(
    connection: asyncpg.Connection, sql: str, params: Sequence[Any], savepoint: bool = False
) -> Cursor:
    """Run one statement of the store's SQL; ``savepoint``: an INSERT inside a transaction
    runs in a savepoint, so the transaction survives its failure."""
    translation = translate(sql)
    args = bind(translation, params)
    try:
        if savepoint and translation.sql.lstrip().upper().startswith("INSERT"):
            async with connection.transaction():
                return await _run(connection, translation, args)
        return await _run(connection, translation, args)
    except asyncpg.IntegrityConstraintViolationError as exc:
        raise sqlite3.IntegrityError(str(exc)) from exc


async def _run(
    connection: asyncpg.Connection, translation: Translation, args: Sequence[Any]
) -> Cursor:
    if translation.returns_rows:
        rows = [tuple(row) for row in await connection.fetch(translation.sql, *args)]
        key = int(rows[0][0]) if translation.returns_key and rows else None
        return Cursor(rows, len(rows), key)
    status = await connection.execute(translation.sql, *args)
    return Cursor([], changed_rows(status), None)


async def run_many(connection: asyncpg.Connection, sql: str, rows: Iterable[Sequence[Any]]) -> None:
    translation = translate(sql)
    batch = [bind(translation, row) for row in rows]
    if not batch:
        return
    try:
        await connection.executemany(translation.sql, batch)
    except asyncpg.IntegrityConstraintViolationError as exc:
        raise sqlite3.IntegrityError(str(exc)) from exc


_SERIALIZE_SQL = "SELECT pg_advisory_xact_lock(hashtext(?))"


class PgConnection:
    """What a unit of work uses of ``sqlite3.Connection``, for a worker thread: each
    statement runs on ``connection`` in the event loop ``loop``, the thread waiting for it."""

    def __init__(self, connection: asyncpg.Connection, loop: asyncio.AbstractEventLoop) -> None:
        self._connection = connection
        self._loop = loop
        self._savepoints = connection.is_in_transaction()

    def _wait(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        return self._wait(run_statement(self._connection, sql, params, self._savepoints))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._wait(run_many(self._connection, sql, list(rows)))


class AsyncCursor:
    """A statement's outcome, as an aiosqlite cursor offers it."""

    def __init__(self, cursor: Cursor) -> None:
        self._cursor = cursor
        self.rowcount = cursor.rowcount
        self.lastrowid = cursor.lastrowid

    async def fetchone(self) -> tuple[Any, ...] | None:
        return self._cursor.fetchone()

    async def fetchall(self) -> list[tuple[Any, ...]]:
        return self._cursor.fetchall()

    async def close(self) -> None:
        return None


class _Execution:
    """``Transaction.execute``'s result: awaited, or used as ``async with db.execute(…)``."""

    def __init__(self, statement: Awaitable[Cursor]) -> None:
        self._statement = statement

    def __await__(self) -> Any:
        return self._cursor().__await__()

    async def __aenter__(self) -> AsyncCursor:
        return await self._cursor()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    async def _cursor(self) -> AsyncCursor:
        return AsyncCursor(await self._statement)


class Transaction:
    """One connection inside a transaction, used as the SQLite store uses aiosqlite's."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self.connection = connection

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Execution:
        return _Execution(run_statement(self.connection, sql, params))

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await run_many(self.connection, sql, rows)


class PostgresBase(SqlBase):
    def __init__(self, dsn: str, instance_id: str, lease_seconds: float = 30.0) -> None:
        super().__init__()
        self._dsn = dsn
        self._pool: asyncpg.Pool | None = None
        self._threads: ThreadPoolExecutor | None = None
        self.instance_id = instance_id
        self.lease_seconds = lease_seconds
        self.owner = instance_id  # the job owner this run writes (see PostgresStore)
        self._read_only = False

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("store is not open")
        return self._pool

    async def open(self) -> None:
        await self._connect(read_only=False)
        await self._migrate()
        await self.refresh_statistics()

    async def open_read_only(self) -> None:
        """Open the database for reading only (a dry-run report while servers use it)."""
        await self._connect(read_only=True)

    async def _connect(self, read_only: bool) -> None:
        log.info("store: PostgreSQL at %s (instance %s)", redact_dsn(self._dsn), self.instance_id)
        settings = {
            "ebsemu.job_owner": self.owner,
            "ebsemu.job_lease_seconds": repr(float(self.lease_seconds)),
        }
        self._read_only = read_only
        if read_only:
            settings["default_transaction_read_only"] = "on"
        self._pool = await asyncpg.create_pool(
            self._dsn, min_size=1, max_size=POOL_SIZE, server_settings=settings
        )
        self._threads = ThreadPoolExecutor(POOL_SIZE, thread_name_prefix="pg-work")

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self._threads is not None:
            # Not waiting: a unit of work still running would wait for this very loop.
            self._threads.shutdown(wait=False)
            self._threads = None

    async def refresh_statistics(self) -> None:
        await self.pool.execute("ANALYZE")

    async def _migrate(self) -> None:
        async with self.pool.acquire() as connection, connection.transaction():
            # Two instances starting together: one migrates, the other then finds it done.
            await connection.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await connection.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
            )
            version = int(
                await connection.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            )
            for number, script in enumerate(PG_MIGRATIONS[version:], start=version + 1):
                log.info("applying schema migration %d", number)
                await connection.execute(script)
                await connection.execute("INSERT INTO schema_version (version) VALUES ($1)", number)

    async def schema_version(self) -> int:
        return int(await self.pool.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version"))

    # ---- units of work -------------------------------------------------------------------

    async def _in_thread(self, connection: asyncpg.Connection, work: Work[T]) -> T:
        """Run ``work`` in a worker thread against ``connection``. A cancelled caller still
        waits for the work's statements to end before the connection goes back to the pool."""
        assert self._threads is not None
        loop = asyncio.get_running_loop()
        adapter: Any = PgConnection(connection, loop)  # stands in for a sqlite3.Connection
        future = loop.run_in_executor(self._threads, work, adapter)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            await asyncio.wait([future])
            raise

    async def _commit(self, work: Work[T]) -> T:
        """Run ``work`` in a transaction of its own; its result once committed. If ``work``
        raises, its statements are undone and the exception reaches the caller."""
        async with self.pool.acquire() as connection, connection.transaction():
            return await self._in_thread(connection, work)

    async def _read(self, work: Work[T]) -> T:
        async with self.pool.acquire() as connection:
            return await self._in_thread(connection, work)

    # ---- statements and transactions -----------------------------------------------------

    async def _write(self, sql: str, params: Sequence[Any] = ()) -> int:
        async with self.pool.acquire() as connection:
            return (await run_statement(connection, sql, params)).rowcount

    async def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        async with self.pool.acquire() as connection:
            return (await run_statement(connection, sql, params)).fetchall()

    async def _many(self, statements: Iterable[tuple[str, Sequence[Any]]]) -> None:
        async with self._transaction() as db:
            for sql, params in statements:
                await db.execute(sql, params)

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Any]:
        """One transaction on one pooled connection, committed when the block ends and rolled
        back if it raises (``Rollback`` undoes it quietly). A caller cancelled mid-way leaves
        the connection to the pool, which rolls back whatever is open before reusing it."""
        async with self.pool.acquire() as connection:
            transaction = connection.transaction()
            await transaction.start()
            try:
                yield Transaction(connection)
            except Rollback:
                await transaction.rollback()
                return
            except BaseException:
                await transaction.rollback()
                raise
            await transaction.commit()

    async def _serialize(self, db: Any, name: str) -> None:
        """A transaction-scoped advisory lock named ``name``, released at COMMIT or ROLLBACK."""
        await db.execute(_SERIALIZE_SQL, (f"ebsemu:{name}",))

    def _serialize_work(self, conn: Any, name: str) -> None:
        conn.execute(_SERIALIZE_SQL, (f"ebsemu:{name}",))

    @contextlib.asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[None]:
        """A session advisory lock named ``name``, held on its own connection for the block:
        one server instance at a time runs it."""
        async with self.pool.acquire() as connection:
            key = int(await connection.fetchval("SELECT hashtext($1)", f"ebsemu:{name}"))
            await connection.execute("SELECT pg_advisory_lock($1)", key)
            try:
                yield
            finally:
                await connection.execute("SELECT pg_advisory_unlock($1)", key)
