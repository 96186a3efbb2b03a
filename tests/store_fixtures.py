"""Each store the service can run on, for the store contract tests: ``new_store`` is
parametrized over SQLite (a file in the test's directory) and PostgreSQL (a fresh database on
the session's private server). It returns a factory: each call makes an unopened store on the
same database, so a test can close and reopen it."""

from __future__ import annotations

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


def postgres_store_factory(server: PostgresServer, instance_id: str = "test") -> NewStore:
    dsn = server.create_database(f"store_{uuid.uuid4().hex[:12]}")
    return lambda: PostgresStore(dsn, instance_id)


@pytest.fixture(params=STORES)
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> NewStore:
    if request.param == "sqlite":
        return lambda: SqliteStore(tmp_path / "db.sqlite3")
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return postgres_store_factory(server)
