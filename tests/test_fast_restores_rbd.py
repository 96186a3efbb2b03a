"""Fast snapshot restores made real on an rbd storage host: boto3 against a real server whose
volumes are RBD images in a real single-node Ceph cluster (tests/ceph_fixtures.py). An enabled
snapshot's RBD snapshot is kept (protected, as ``….fsr``) through later snapshots of its
volume, a volume restored from it is an ``rbd clone`` of it, and disabling and deleting leave
no RBD snapshot behind."""

from __future__ import annotations

import json
import random
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from ebsemu.model import BLOCK_SIZE
from tests.api_support import new_snapshot, new_volume, poll
from tests.ceph_fixtures import CephCluster, ceph_cluster
from tests.server import TEST_CONFIG, ZONE, ServerProcess

__all__ = ["ceph_cluster"]


@pytest.fixture(scope="module")
def rbd_server(
    tmp_path_factory: pytest.TempPathFactory, ceph_cluster: CephCluster
) -> Iterator[ServerProcess]:
    work = tmp_path_factory.mktemp("fsr-rbd")
    config = TEST_CONFIG + (
        f"[region us-east-1]\nzones = {ZONE}\n"
        f"[storage ceph-a]\nzone = {ZONE}\nbackend = rbd\n"
        f"pool = {ceph_cluster.pool}\nconf = {ceph_cluster.conf}\n"
    )
    server = ServerProcess(work / "data", config)
    server.start()
    yield server
    server.stop()


def _info(cluster: CephCluster, image: str) -> dict[str, Any]:
    info: dict[str, Any] = json.loads(
        cluster.rbd("info", "--format", "json", f"{cluster.pool}/{image}")
    )
    return info


def _matches(cluster: CephCluster, image: str, blocks: dict[int, bytes]) -> bool:
    """Whether the image holds ``blocks`` and zeros elsewhere, byte for byte (qemu-img
    compare against a sparse file built from them; both sides skip their holes)."""
    expected = cluster.root / "fsr-expected.raw"
    expected.unlink(missing_ok=True)
    with expected.open("wb") as out:
        out.truncate(_info(cluster, image)["size"])
        for index, data in blocks.items():
            out.seek(index * BLOCK_SIZE)
            out.write(data)
    target = f"rbd:{cluster.pool}/{image}:conf={cluster.conf}"
    done = subprocess.run(
        ["qemu-img", "compare", "-f", "raw", "-F", "raw", str(expected), target],
        env=cluster.env(),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr.decode()
    return done.returncode == 0


def _write(cluster: CephCluster, image: str, blocks: dict[int, bytes]) -> None:
    target = f"rbd:{cluster.pool}/{image}:conf={cluster.conf}"
    path = cluster.root / "fsr-block"
    for index, data in blocks.items():
        path.write_bytes(data)
        cluster.run(
            "qemu-io", "-f", "raw", "-c", f"write -s {path} {index * BLOCK_SIZE} {BLOCK_SIZE}",
            target,
        )  # fmt: skip


def _state(ec2: Any, snapshot_id: str, state: str) -> bool | None:
    found = ec2.describe_fast_snapshot_restores(
        Filters=[{"Name": "snapshot-id", "Values": [snapshot_id]}]
    )["FastSnapshotRestores"]
    return True if [i["State"] for i in found] == [state] else None


def test_a_volume_from_an_enabled_snapshot_is_a_clone_and_nothing_is_left_behind(
    rbd_server: ServerProcess, ceph_cluster: CephCluster
) -> None:
    ec2, cluster = rbd_server.client(), ceph_cluster
    rng = random.Random(11)
    volume_id = new_volume(ec2)
    first_blocks = {0: rng.randbytes(BLOCK_SIZE), 700: rng.randbytes(BLOCK_SIZE)}
    _write(cluster, volume_id, first_blocks)
    first = new_snapshot(ec2, volume_id)
    assert _matches(cluster, volume_id, first_blocks)
    ec2.enable_fast_snapshot_restores(SourceSnapshotIds=[first], AvailabilityZones=[ZONE])
    poll(lambda: _state(ec2, first, "enabled"))
    kept = cluster.snapshots(volume_id)[f"{first}.fsr"]
    assert kept["protected"] == "true"

    # later snapshots keep their own base; the enabled one's RBD snapshot stays
    for index in (3, 900):
        _write(cluster, volume_id, {index: rng.randbytes(BLOCK_SIZE), 0: bytes(BLOCK_SIZE)})
        later = new_snapshot(ec2, volume_id)
    wanted = {f"{first}.fsr", f"{later}.base"}  # the base is kept just after completion
    poll(lambda: True if set(cluster.snapshots(volume_id)) == wanted else None)

    restored = new_volume(ec2, SnapshotId=first)
    parent = _info(cluster, restored)["parent"]
    assert (parent["image"], parent["snapshot"]) == (volume_id, f"{first}.fsr")
    children = cluster.rbd("children", f"{cluster.pool}/{volume_id}@{first}.fsr").split()
    assert children == [f"{cluster.pool}/{restored}"]
    assert _matches(cluster, restored, first_blocks)
    assert not _matches(cluster, volume_id, first_blocks)  # the volume itself has moved on

    # disabled once the clone has gone: the kept RBD snapshot is removed (the volume's base
    # is the later snapshot's)
    ec2.delete_volume(VolumeId=restored)
    poll(lambda: True if restored not in cluster.images() else None)
    ec2.disable_fast_snapshot_restores(SourceSnapshotIds=[first], AvailabilityZones=[ZONE])
    poll(lambda: _state(ec2, first, "disabled"))
    poll(lambda: True if set(cluster.snapshots(volume_id)) == {f"{later}.base"} else None)
    # the volume's last snapshot: disabling gives its RBD snapshot back as the diff base
    ec2.enable_fast_snapshot_restores(SourceSnapshotIds=[later], AvailabilityZones=[ZONE])
    poll(lambda: _state(ec2, later, "enabled"))
    assert set(cluster.snapshots(volume_id)) == {f"{later}.fsr"}
    ec2.disable_fast_snapshot_restores(SourceSnapshotIds=[later], AvailabilityZones=[ZONE])
    poll(lambda: _state(ec2, later, "disabled"))
    assert set(cluster.snapshots(volume_id)) == {f"{later}.base"}
    # deleting a snapshot while enabled disables it and removes its kept RBD snapshot
    ec2.enable_fast_snapshot_restores(SourceSnapshotIds=[later], AvailabilityZones=[ZONE])
    poll(lambda: _state(ec2, later, "enabled"))
    assert set(cluster.snapshots(volume_id)) == {f"{later}.fsr"}
    for snapshot in (first, later):
        ec2.delete_snapshot(SnapshotId=snapshot)
    poll(lambda: _state(ec2, later, "disabled"))
    poll(lambda: True if cluster.snapshots(volume_id) == {} else None)
    ec2.delete_volume(VolumeId=volume_id)
    poll(lambda: True if volume_id not in cluster.images() else None)
