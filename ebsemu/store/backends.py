"""The store a configuration names: SQLite in the data directory (the default), or a
PostgreSQL database that several server instances may share."""

from __future__ import annotations

import socket
import sqlite3

from ebsemu.config import Config
from ebsemu.store.base import Store
from ebsemu.store.sqlite import SqliteStore


def store_errors() -> tuple[type[Exception], ...]:
    """What opening or using a store raises when the database is unreachable or unusable. A
    function, so that asyncpg is imported only once an error is to be matched (``except
    store_errors()``), not by every server and CLI process."""
    import asyncpg

    return (OSError, sqlite3.Error, asyncpg.PostgresError)


def describe_store(config: Config) -> str:
    """The database, as it may be shown or logged (a DSN without its password)."""
    if config.store_backend == "postgresql":
        from ebsemu.store.postgres_base import redact_dsn

        return redact_dsn(config.store_dsn or "")
    return str(config.database)


def instance_id(config: Config) -> str:
    """This server among those sharing a database: configured, or host name and port."""
    return config.store_instance_id or f"{socket.gethostname()}:{config.port}"


def build_store(config: Config) -> Store:
    if config.store_backend == "postgresql":
        from ebsemu.store.postgres import PostgresStore

        assert config.store_dsn is not None  # checked by Config
        return PostgresStore(config.store_dsn, instance_id(config), config.job_lease_seconds)
    return SqliteStore(config.database)
