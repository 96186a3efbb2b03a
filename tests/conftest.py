"""Shared fixtures: a real ebsemu server over HTTP, boto3 clients against it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.pg_fixtures import PostgresServer, postgres_server  # noqa: F401  (a fixture)
from tests.server import TEST_CONFIG, TEST_STORE, ServerProcess
from tests.store_fixtures import migrated_database, new_store  # noqa: F401  (a fixture)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A module naming ``API_STORES`` runs its server tests once on each of those stores."""
    stores = getattr(metafunc.module, "API_STORES", None)
    if stores and "store_kind" in metafunc.fixturenames:
        metafunc.parametrize("store_kind", stores, indirect=True, scope="session")


@pytest.fixture(scope="session")
def store_kind(request: pytest.FixtureRequest) -> str:
    """The store of the test servers: a module's ``API_STORES`` parameter, else the
    EBSEMU_TEST_STORE default."""
    return str(getattr(request, "param", TEST_STORE))


def _store_dsn(request: pytest.FixtureRequest, store_kind: str) -> str:
    if store_kind != "postgresql":
        return ""  # SQLite
    postgres: PostgresServer = request.getfixturevalue("postgres_server")
    return migrated_database(postgres, "api")


@pytest.fixture(scope="session")
def server(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest, store_kind: str
) -> Iterator[ServerProcess]:
    """One server for the session (per store); tests keep to their own resources (unique
    tags/ids)."""
    proc = ServerProcess(
        tmp_path_factory.mktemp("ebsemu") / "data",
        TEST_CONFIG,
        store_dsn=_store_dsn(request, store_kind),
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def fresh_server(
    tmp_path: Path, request: pytest.FixtureRequest, store_kind: str
) -> Iterator[ServerProcess]:
    """A server of the test's own, for tests that restart it or count everything it holds."""
    proc = ServerProcess(tmp_path / "data", TEST_CONFIG, store_dsn=_store_dsn(request, store_kind))
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def ec2(server: ServerProcess) -> Any:
    return server.client()
