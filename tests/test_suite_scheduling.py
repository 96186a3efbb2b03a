"""How the suite spreads over pytest-xdist workers (tests/conftest.py): the modules of one
SHARED_WORKER group and the API tests on an rbd combination share the Ceph worker."""

from __future__ import annotations

import pytest

from tests.conftest import _scope


@pytest.mark.parametrize(
    ("nodeid", "scope"),
    [
        ("tests/test_api_volumes.py::test_delete[sqlite-rbd]", "ceph"),
        ("tests/test_api_tags.py::test_limits[sqlite-rbd-key-128]", "ceph"),
        ("tests/test_api_snapshots.py::test_copy[postgresql-rbd]", "ceph"),
        ("tests/test_api_tags.py::test_limits[sqlite-file-key-128]", "tests/test_api_tags.py"),
        ("tests/test_api_volumes.py::test_delete[postgresql-file]", "tests/test_api_volumes.py"),
        ("tests/test_api_rbd.py::test_clone", "ceph"),
        ("tests/test_rbd_prefix.py::test_refused[a/b-]", "ceph"),
        ("tests/test_vmm_pause.py::test_pause", "libvirtd"),
        ("tests/test_api_auth.py::test_signed", "tests/test_api_auth.py"),
    ],
)
def test_a_test_runs_in_its_module_or_its_shared_worker_group(nodeid: str, scope: str) -> None:
    assert _scope(nodeid) == scope
