"""Copy an SQLite deployment's database into an empty PostgreSQL database, table by table.

Both databases are first brought to the current schema (each store's migrations), so their
tables and columns match (PostgreSQL's extra columns — the job leases — keep their defaults:
an unfinished job is claimed by the first instance that starts). The copy is one PostgreSQL
transaction: the row count of every table is compared before it commits, so a failed or
partial copy leaves the target empty. Run it with the server stopped.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from ebsemu.store.postgres import PostgresStore
from ebsemu.store.sqlite import SqliteStore

log = logging.getLogger(__name__)

BATCH_ROWS = 5000
# Tables referenced by a foreign key go first.
FIRST = ("accounts", "jobs")
# The keys PostgreSQL numbers from a sequence, continued after the copied rows.
SERIALS = {
    "volumes": "seq",
    "snapshots": "seq",
    "instances": "seq",
    "jobs": "id",
    "tags": "rowid",
    "volume_modifications": "seq",
    "fast_snapshot_restores": "seq",
    "snapshot_locks": "seq",
}


class CopyError(Exception):
    """The target is not empty, a table has no counterpart, or the counts differ."""


@dataclass(frozen=True)
class Copied:
    table: str
    rows: int


def _tables(source: sqlite3.Connection) -> list[str]:
    names = [
        str(row[0])
        for row in source.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' "
            "AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
    ]
    return sorted(names, key=lambda name: (name not in FIRST, name))


def _columns(source: sqlite3.Connection, table: str) -> list[str]:
    columns = [str(row[1]) for row in source.execute(f'PRAGMA table_info("{table}")')]
    return (["rowid"] if table == "tags" else []) + columns


def _batches(source: sqlite3.Connection, table: str, columns: list[str]) -> Iterator[list[Any]]:
    cursor = source.execute(f'SELECT {", ".join(columns)} FROM "{table}"')
    while rows := cursor.fetchmany(BATCH_ROWS):
        yield [tuple(row) for row in rows]


async def copy_sqlite_to_postgres(sqlite_path: Path, dsn: str) -> list[Copied]:
    """Copy every table; returns the tables and their row counts."""
    if not sqlite_path.exists():
        raise CopyError(f"no SQLite database at {sqlite_path}")
    for store in (SqliteStore(sqlite_path), PostgresStore(dsn, "migrate")):
        await store.open()  # brings the schema to the current version
        await store.close()
    source = sqlite3.connect(sqlite_path)
    try:
        target: asyncpg.Connection = await asyncpg.connect(dsn)
        try:
            async with target.transaction():
                return await _copy(source, target)
        finally:
            await target.close()
    finally:
        source.close()


async def _copy(source: sqlite3.Connection, target: asyncpg.Connection) -> list[Copied]:
    copied: list[Copied] = []
    tables = _tables(source)
    present = {
        str(row[0])
        for row in await target.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
    }
    missing = [table for table in tables if table not in present]
    if missing:
        raise CopyError(f"the PostgreSQL schema has no table {', '.join(missing)}")
    for table in tables:
        if await target.fetchval(f'SELECT EXISTS (SELECT 1 FROM "{table}")'):
            raise CopyError(f"the target database is not empty (table {table} has rows)")
    for table in tables:
        columns = _columns(source, table)
        for batch in _batches(source, table, columns):
            await target.copy_records_to_table(table, records=batch, columns=columns)
        expected = int(source.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0])
        found = int(await target.fetchval(f'SELECT COUNT(*) FROM "{table}"'))
        if found != expected:
            raise CopyError(f"table {table}: {found} rows copied of {expected}")
        if table in SERIALS:
            column = SERIALS[table]
            await target.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
                f"COALESCE(MAX({column}), 1), MAX({column}) IS NOT NULL) FROM {table}"
            )
        log.info("copied %s: %d rows", table, found)
        copied.append(Copied(table, found))
    return copied
