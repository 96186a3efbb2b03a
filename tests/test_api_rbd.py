"""The EC2 API over a storage host with ``backend = rbd``: boto3 against a real server whose
volumes are RBD images in a real single-node Ceph cluster (tests/ceph_fixtures.py), attached to a
diskless QEMU VM through QEMU's rbd block driver."""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from ebsemu.model import BLOCK_SIZE, GIB
from ebsemu.service.instances import instance_id
from tests.api_support import new_snapshot, new_volume, poll
from tests.ceph_fixtures import CephCluster, ceph_cluster
from tests.server import TEST_CONFIG, ZONE, ServerProcess
from tests.vmm_fixtures import HAVE_QEMU, NEEDS_QEMU, QemuVm, qmp, run, running_vm

__all__ = ["ceph_cluster"]

MIB = 1 << 20
VMM = "kvm-a"
STORAGE = "ceph-a"


@dataclass
class Lab:
    server: ServerProcess
    ec2: Any
    cluster: CephCluster
    vm: QemuVm
    instance: str

    def log_tail(self) -> str:
        return self.server.log_path.read_text(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, ceph_cluster: CephCluster) -> Iterator[Lab]:
    if not HAVE_QEMU:
        pytest.skip(NEEDS_QEMU)
    work = tmp_path_factory.mktemp("api-rbd")
    sockets = work / "qmp"
    sockets.mkdir()
    config = TEST_CONFIG + (
        f"[region us-east-1]\nzones = {ZONE}\n"
        f"[storage {STORAGE}]\nzone = {ZONE}\nbackend = rbd\n"
        f"pool = {ceph_cluster.pool}\nconf = {ceph_cluster.conf}\n"
        f"[vmm {VMM}]\ndriver = qemu\nzone = {ZONE}\nsocket_dir = {sockets}\ndetach_timeout = 10\n"
    )
    with contextlib.ExitStack() as stack:
        vm = stack.enter_context(running_vm(sockets, "web", ports=4))
        server = ServerProcess(work / "data", config)
        stack.callback(server.stop)
        server.start()
        yield Lab(server, server.client(), ceph_cluster, vm, instance_id(VMM, "web"))


def _image(lab: Lab, volume_id: str) -> bytes:
    out = lab.cluster.root / "api-export.raw"
    out.unlink(missing_ok=True)
    lab.cluster.rbd("export", "--no-progress", f"{lab.cluster.pool}/{volume_id}", str(out))
    return out.read_bytes()


def _write(lab: Lab, volume_id: str, blocks: dict[int, bytes]) -> None:
    image = f"rbd:{lab.cluster.pool}/{volume_id}:conf={lab.cluster.conf}"
    path = lab.cluster.root / "api-block"
    for index, data in blocks.items():
        path.write_bytes(data)
        lab.cluster.run(
            "qemu-io", "-f", "raw", "-c", f"write -s {path} {index * BLOCK_SIZE} {BLOCK_SIZE}",
            image,
        )  # fmt: skip


def _snapshot(lab: Lab, volume_id: str) -> str:
    """A completed snapshot of the volume, once its view is kept as the volume's base: that
    happens just after the snapshot is marked completed, and the next snapshot's diff and a
    clone from this one depend on it."""
    snapshot_id = new_snapshot(lab.ec2, volume_id)
    (snapshot,) = lab.ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
    assert snapshot["State"] == "completed", lab.log_tail()

    poll(lambda: True if f"{snapshot_id}.base" in lab.cluster.snapshots(volume_id) else None)
    return snapshot_id


def _wait_gone(lab: Lab, image: str) -> None:
    poll(lambda: True if image not in lab.cluster.images() else None)


def test_create_volume_makes_an_image_and_delete_removes_it(lab: Lab) -> None:
    volume_id = new_volume(lab.ec2, Size=2)
    info = json.loads(lab.cluster.rbd("info", "--format", "json", f"rbd/{volume_id}"))
    assert info["size"] == 2 * GIB
    lab.ec2.delete_volume(VolumeId=volume_id)
    _wait_gone(lab, volume_id)


def test_snapshots_restore_the_same_bytes_by_clone_and_by_blocks(lab: Lab) -> None:
    rng = random.Random(7)
    volume_id = new_volume(lab.ec2)
    _write(lab, volume_id, {i: rng.randbytes(BLOCK_SIZE) for i in (0, 5, 300, 2047)})
    first = _snapshot(lab, volume_id)
    first_bytes = _image(lab, volume_id)
    # block 0 becomes zeros, 5 changes, 900 is new: the second snapshot reads only the
    # objects holding them and lays them over the first's manifest
    _write(lab, volume_id, {0: bytes(BLOCK_SIZE), 5: rng.randbytes(BLOCK_SIZE)})
    _write(lab, volume_id, {900: rng.randbytes(BLOCK_SIZE)})
    second = _snapshot(lab, volume_id)
    second_bytes = _image(lab, volume_id)
    log = lab.server.log_path.read_text()
    assert f"read 2 data extents ({8 * MIB} bytes) and 0 zero extents changed since {first}" in log
    _write(lab, volume_id, {1000: rng.randbytes(BLOCK_SIZE)})
    third = _snapshot(lab, volume_id)  # now the kept view: second's is gone
    third_bytes = _image(lab, volume_id)

    cloned = new_volume(lab.ec2, SnapshotId=third)  # its view is kept: rbd clone
    parent = json.loads(lab.cluster.rbd("info", "--format", "json", f"rbd/{cloned}"))["parent"]
    assert parent["image"] == volume_id and parent["snapshot"] == f"{third}.base"
    assert _image(lab, cloned) == third_bytes

    restored = {}
    for snapshot in (first, second):  # their views are gone: blocks written
        volume = new_volume(lab.ec2, SnapshotId=snapshot)
        info = json.loads(lab.cluster.rbd("info", "--format", "json", f"rbd/{volume}"))
        assert "parent" not in info
        restored[snapshot] = volume
    assert _image(lab, restored[first]) == first_bytes
    assert _image(lab, restored[second]) == second_bytes  # built from an incremental capture

    volumes = [volume_id, cloned, *restored.values()]
    for volume in volumes:
        lab.ec2.delete_volume(VolumeId=volume)
    for snapshot in (first, second, third):
        lab.ec2.delete_snapshot(SnapshotId=snapshot)
    for image in (*volumes, f"deleted.{volume_id}"):
        _wait_gone(lab, image)


def test_bytes_written_through_the_attached_rbd_disk_land_in_the_image(lab: Lab) -> None:
    volume_id = new_volume(lab.ec2)
    lab.ec2.attach_volume(VolumeId=volume_id, InstanceId=lab.instance, Device="/dev/sdf")

    def attached() -> bool | None:
        (volume,) = lab.ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"]
        if not volume["Attachments"]:
            pytest.fail(f"attach failed:\n{lab.log_tail()}")
        return True if volume["Attachments"][0]["State"] == "attached" else None

    poll(attached)
    blocks = run(qmp(lab.vm, "query-block"))
    (disk,) = [b for b in blocks if volume_id in str(b.get("qdev", ""))]
    opened = disk["inserted"]["file"]  # what QEMU opened: the image through librbd
    assert "rbd" in opened and volume_id in opened, opened
    backend = f"ebs.{volume_id}.sdf/virtio-backend"  # the guest device's own block backend
    command = f'qemu-io -d {backend} "write -P 0x5a 1M 1M"'
    assert run(qmp(lab.vm, "human-monitor-command", {"command-line": command})) == ""
    lab.ec2.detach_volume(VolumeId=volume_id)
    lab.ec2.get_waiter("volume_available").wait(
        VolumeIds=[volume_id], WaiterConfig={"Delay": 1, "MaxAttempts": 60}
    )
    data = _image(lab, volume_id)
    assert data[: 3 * MIB] == bytes(MIB) + b"\x5a" * MIB + bytes(MIB)
    lab.ec2.delete_volume(VolumeId=volume_id)
