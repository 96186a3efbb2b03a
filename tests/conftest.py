"""Shared fixtures: a real ebsemu server over HTTP, boto3 clients against it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.pg_fixtures import PostgresServer, postgres_server  # noqa: F401  (a fixture)
from tests.server import RUNNING, TEST_BACKEND, TEST_CONFIG, TEST_STORE, ServerProcess
from tests.store_fixtures import migrated_database, new_store  # noqa: F401  (a fixture)

# Modules that use one host singleton run in one worker, one after the other: there is one
# libvirtd per host, the guest image is built into one cache on first use, and one single-node
# Ceph cluster at a time is enough for this machine (the API tests on an rbd combination join
# the Ceph worker: their shared cluster stays up, idle, beside a later module's own).
SHARED_WORKER = {
    "libvirtd": (
        "test_api_attach_libvirt",
        "test_api_modify_libvirt",
        "test_vmm_libvirt",
        "test_vmm_pause",
    ),
    "guest-image": ("test_guest_attach", "test_guest_multi_snapshots"),
    "ceph": (
        "test_api_blockstore_rados",
        "test_api_rbd",
        "test_blockstore_contract",
        "test_fast_restores_rbd",
        "test_rbd_export",
        "test_rbd_prefix",
        "test_rbd_storage",
    ),
}
_WORKER_OF = {
    f"tests/{module}.py": name for name, modules in SHARED_WORKER.items() for module in modules
}


# The longest modules (and SHARED_WORKER groups) start first, so no worker is left running a
# long one alone at the end; the rest keep their collection order.
LONG_FIRST = (
    "ceph",
    "tests/test_bench_smoke.py",
    "tests/test_crash.py",
    "tests/test_clients_terraform.py",
    "tests/test_clients_ansible.py",
    "guest-image",
    "libvirtd",
    "tests/test_api_cli.py",
    "tests/test_api_encryption.py",
    "tests/test_reconcile.py",
    "tests/test_fuzz.py",
    "tests/test_cli_accounts.py",
    "tests/test_api_modify.py",
    "tests/test_api_attach.py",
    "tests/test_load.py",
)


# The id of a test run on an API_COMBINATIONS combination with the rbd backend.
_ON_RBD = re.compile(r"[\[-](sqlite|postgresql)-rbd[\]-]")


def _scope(nodeid: str) -> str:
    """A test's scheduling unit: its module or SHARED_WORKER group; a module's tests on an rbd
    combination go with the Ceph group (the cluster their servers share is started once)."""
    module = nodeid.split("::", 1)[0]
    if _ON_RBD.search(nodeid):
        return "ceph"
    return _WORKER_OF.get(module, module)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {scope: place for place, scope in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(_scope(item.nodeid), len(rank)))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "backends(*names): run only on these backends of the module's API_COMBINATIONS"
    )


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under ``--dist loadscope`` (scripts/test) a worker runs a whole module, so its module
    fixtures (servers, VMs, tgtd) start once, and the modules of one SHARED_WORKER entry
    together."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return _scope(nodeid)

    return ModuleScheduling(config, log)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failed test's report carries the log tail of every server still running, so a failure
    in CI can be read without the server's files."""
    report = yield
    if report.failed:
        for proc in sorted(RUNNING, key=lambda p: p.port):
            report.sections.append((f"ebsemu server :{proc.port} log", proc.log_tail()))
    return report


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A module naming ``API_COMBINATIONS`` ((store, backend) pairs) runs its server tests
    once on each of them, with ids like ``sqlite-rbd``."""
    combinations = getattr(metafunc.module, "API_COMBINATIONS", None)
    only = metafunc.definition.get_closest_marker("backends")
    if combinations and only is not None:  # @pytest.mark.backends("file"): those backends only
        combinations = [c for c in combinations if c[1] in only.args]
    names = metafunc.fixturenames
    if combinations and "store_kind" in names and "backend_kind" in names:
        metafunc.parametrize(
            ("store_kind", "backend_kind"),
            combinations,
            ids=[f"{store}-{backend}" for store, backend in combinations],
            indirect=True,
            scope="session",
        )


@pytest.fixture(scope="session")
def store_kind(request: pytest.FixtureRequest) -> str:
    """The store of the test servers: a module's ``API_COMBINATIONS`` parameter, else the
    EBSEMU_TEST_STORE default."""
    return str(getattr(request, "param", TEST_STORE))


@pytest.fixture(scope="session")
def backend_kind(request: pytest.FixtureRequest) -> str:
    """The storage backend of the test servers: a module's ``API_COMBINATIONS`` parameter,
    else the EBSEMU_TEST_BACKEND default."""
    return str(getattr(request, "param", TEST_BACKEND))


def _store_dsn(request: pytest.FixtureRequest, store_kind: str) -> str:
    if store_kind != "postgresql":
        return ""  # SQLite
    postgres: PostgresServer = request.getfixturevalue("postgres_server")
    return migrated_database(postgres, "api")


@pytest.fixture(scope="session")
def server(
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
    store_kind: str,
    backend_kind: str,
) -> Iterator[ServerProcess]:
    """One server for the session (per store and backend); tests keep to their own resources
    (unique tags/ids)."""
    proc = ServerProcess(
        tmp_path_factory.mktemp("ebsemu") / "data",
        TEST_CONFIG,
        store_dsn=_store_dsn(request, store_kind),
        backend=backend_kind,
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def fresh_server(
    tmp_path: Path, request: pytest.FixtureRequest, store_kind: str, backend_kind: str
) -> Iterator[ServerProcess]:
    """A server of the test's own, for tests that restart it or count everything it holds."""
    proc = ServerProcess(
        tmp_path / "data",
        TEST_CONFIG,
        store_dsn=_store_dsn(request, store_kind),
        backend=backend_kind,
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def ec2(server: ServerProcess) -> Any:
    return server.client()
