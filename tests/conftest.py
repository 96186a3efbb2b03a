"""Shared fixtures: a real ebsemu server over HTTP, boto3 clients against it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.server import RUNNING, TEST_CONFIG, ServerProcess


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under ``--dist loadgroup`` (scripts/test) each test module runs whole in one worker, so
    its module fixtures (servers, VMs, tgtd) start once. Modules sharing a host singleton say
    so with ``pytestmark = pytest.mark.xdist_group(NAME)`` and share a worker."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__ if item.module else ""))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failed test's report carries the log tail of every server still running, so a failure
    in CI can be read without the server's files."""
    report = yield
    if report.failed:
        for proc in sorted(RUNNING, key=lambda p: p.port):
            report.sections.append((f"ebsemu server :{proc.port} log", proc.log_tail()))
    return report


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
