"""Each store the service can run on, for the store contract tests: ``new_store`` is
parametrized over SQLite (a file in the test's directory) and PostgreSQL (a fresh database on
the session's private server). It returns a factory: each call makes an unopened store on the
same database, so a test can close and reopen it.

A fresh PostgreSQL database is a copy of a template migrated once per server (``CREATE
DATABASE … TEMPLATE``), so each test does not run every migration again."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from ebsemu.store.base import Store
from ebsemu.store.postgres import PostgresStore
from ebsemu.store.sqlite import SqliteStore
from tests.pg_fixtures import PostgresServer

NewStore = Callable[[], Store]
STORES = ("sqlite", "postgresql")

_templates: dict[int, str] = {}  # server port -> its migrated template database


async def _migrate(dsn: str) -> None:
    store = PostgresStore(dsn, "template")
    await store.open()
    await store.close()


def migrated_database(server: PostgresServer, prefix: str = "store") -> str:
    """The DSN of a new database on ``server`` with the current schema (call it outside an
    event loop)."""
    template = _templates.get(server.port)
    if template is None:
        template = f"template_{uuid.uuid4().hex[:12]}"
        asyncio.run(_migrate(server.create_database(template)))
        _templates[server.port] = template
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    server.psql(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return server.dsn(name)


def postgres_store_factory(server: PostgresServer, instance_id: str = "test") -> NewStore:
    dsn = migrated_database(server)
    return lambda: PostgresStore(dsn, instance_id)


@pytest.fixture(params=STORES)
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> NewStore:
    if request.param == "sqlite":
        return lambda: SqliteStore(tmp_path / "db.sqlite3")
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return postgres_store_factory(server)
