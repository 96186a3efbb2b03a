"""Snapshots over the EC2 API with their blocks in RADOS: a real server subprocess with
``[blockstore] backend = rados`` against a real single-node Ceph cluster."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backends.ceph_bindings import load_rados
from backends.errors import SetupError
from tests.api_support import FAST, new_snapshot, new_volume, poll
from tests.ceph_fixtures import CephCluster, ceph_cluster
from tests.direct_support import random_blocks, upload
from tests.server import TEST_CONFIG, ServerProcess
from tests.test_api_metrics import scrape
from tests.test_api_snapshots import BLOCK, read_blocks, write_blocks

__all__ = ["ceph_cluster"]
NAMESPACE = "api-blocks"


def _config(cluster: CephCluster, namespace: str = NAMESPACE) -> str:
    return TEST_CONFIG + (
        f"\n[blockstore]\nbackend = rados\nconf = {cluster.conf}\npool = {cluster.pool}\n"
        f"namespace = {namespace}\nmetrics_refresh_seconds = 0\n"
    )


@pytest.fixture(scope="module", autouse=True)
def bindings() -> None:
    try:
        load_rados()
    except SetupError:
        pytest.skip("needs the librados Python bindings: apt-get install python3-rados")


@pytest.fixture(scope="module")
def rados_server(
    ceph_cluster: CephCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("rados") / "data", _config(ceph_cluster))
    server.start()
    yield server
    server.stop()


def _objects(cluster: CephCluster) -> list[str]:
    listing = cluster.run("rados", "--conf", str(cluster.conf), "-p", cluster.pool,
                          "-N", NAMESPACE, "ls")  # fmt: skip
    return sorted(listing.stdout.decode().split())


def test_snapshot_blocks_are_rados_objects_restored_byte_for_byte_and_collected(
    rados_server: ServerProcess, ceph_cluster: CephCluster
) -> None:
    ec2: Any = rados_server.client()
    same = os.urandom(BLOCK)
    blocks = {0: same, 7: os.urandom(BLOCK), 300: same, 1500: os.urandom(BLOCK)}
    volume_id = new_volume(ec2, Size=1)
    write_blocks(rados_server, volume_id, blocks)
    snapshot_id = new_snapshot(ec2, volume_id)
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[snapshot_id], WaiterConfig=FAST)

    distinct = sorted({hashlib.sha256(data).hexdigest() for data in blocks.values()})
    assert _objects(ceph_cluster) == distinct
    assert not (rados_server.data_dir / "blocks").exists()
    metrics = scrape(rados_server)
    assert metrics.value("ebsemu_blockstore_blocks") == len(distinct)
    assert metrics.value("ebsemu_blockstore_bytes") == len(distinct) * BLOCK

    restored_id = new_volume(ec2, SnapshotId=snapshot_id)
    got = read_blocks(rados_server, restored_id, [*blocks, 1, 2047])
    assert got == {**blocks, 1: bytes(BLOCK), 2047: bytes(BLOCK)}

    for vid in (volume_id, restored_id):
        ec2.delete_volume(VolumeId=vid)
    ec2.delete_snapshot(SnapshotId=snapshot_id)
    poll(lambda: _objects(ceph_cluster) == [] or None)


def test_server_refuses_to_start_on_a_missing_pool(
    ceph_cluster: CephCluster, tmp_path: Path
) -> None:
    config = _config(ceph_cluster).replace(f"pool = {ceph_cluster.pool}", "pool = absent")
    server = ServerProcess(tmp_path / "data", config)
    with pytest.raises(RuntimeError, match="Ceph pool absent does not exist"):
        server.start()


def test_check_host_reports_the_rados_block_store(
    ceph_cluster: CephCluster, tmp_path: Path
) -> None:
    config = tmp_path / "c.ini"
    config.write_text(_config(ceph_cluster, "check-host"))
    result = subprocess.run(
        [sys.executable, "-m", "ebsemu", "check-host", "--config", str(config),
         "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"ok   blockstore (rados, pool {ceph_cluster.pool} namespace check-host)" in (
        result.stdout.splitlines()
    )


def test_direct_api_blocks_go_to_rados_and_read_back(
    rados_server: ServerProcess, ceph_cluster: CephCluster
) -> None:
    ebs: Any = rados_server.client("ebs")
    ec2: Any = rados_server.client()
    blocks = random_blocks([3, 900])
    snapshot_id = upload(ebs, blocks)
    digests = sorted(hashlib.sha256(data).hexdigest() for data in blocks.values())
    assert _objects(ceph_cluster) == digests

    listed = ebs.list_snapshot_blocks(SnapshotId=snapshot_id)["Blocks"]
    token = {b["BlockIndex"]: b["BlockToken"] for b in listed}[900]
    got = ebs.get_snapshot_block(SnapshotId=snapshot_id, BlockIndex=900, BlockToken=token)
    assert got["BlockData"].read() == blocks[900]

    ec2.delete_snapshot(SnapshotId=snapshot_id)
    poll(lambda: _objects(ceph_cluster) == [] or None)
