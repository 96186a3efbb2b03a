"""Shared fixtures: a real ebsemu server over HTTP, boto3 clients against it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.pg_fixtures import postgres_server  # noqa: F401  (a fixture)
from tests.server import TEST_CONFIG, ServerProcess
from tests.store_fixtures import new_store  # noqa: F401  (a fixture)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the session; tests keep to their own resources (unique tags/ids)."""
    proc = ServerProcess(tmp_path_factory.mktemp("ebsemu") / "data", TEST_CONFIG)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server of the test's own, for tests that restart it or count everything it holds."""
    proc = ServerProcess(tmp_path / "data", TEST_CONFIG)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def ec2(server: ServerProcess) -> Any:
    return server.client()
