"""CreateSnapshots of a Linux guest's three disks (tests/guest/: a Debian cloud kernel and a
busybox /init that writes one fsync'ed line to the first and last sector of every disk that
appears). What the guest wrote before the call is in every snapshot, and the guest runs on
afterwards (it still sees a disk go away). Skips, saying why, where the guest cannot be had."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api_support import FAST, new_volume, poll, volume_segment
from tests.guest.build import GuestImage, GuestUnavailable, default_cache_dir, guest_image
from tests.guest.vm import MARKER, QEMU, GuestVm, running_guest
from tests.server import TEST_CONFIG, ZONE, ServerProcess

GIB = 1024**3
SECTOR = 512
LAST = GIB // SECTOR - 1
DEVICES = ("/dev/sdf", "/dev/sdg", "/dev/sdh")
GUEST_EVENT_SECONDS = 60.0


@pytest.fixture(scope="module")
def image() -> GuestImage:
    if shutil.which(QEMU) is None:
        pytest.skip(f"needs {QEMU} (apt-get install qemu-system-x86)")
    try:
        return guest_image(default_cache_dir())
    except GuestUnavailable as exc:
        pytest.skip(
            "needs a Linux guest built from Debian's linux-image-*-cloud-amd64 and "
            f"busybox-static (apt-get download): {exc}"
        )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("guest-multi")


@pytest.fixture(scope="module")
def guest(image: GuestImage, workdir: Path) -> Iterator[GuestVm]:
    socket_dir = workdir / "vms"
    socket_dir.mkdir()
    with running_guest(image, socket_dir, workdir, "guest3") as vm:
        yield vm


@pytest.fixture(scope="module")
def server(guest: GuestVm, workdir: Path) -> Iterator[ServerProcess]:
    config = (
        TEST_CONFIG
        + f"""
[vmm guests]
driver = qemu
zone = {ZONE}
socket_dir = {guest.qmp_socket.parent}
"""
    )
    proc = ServerProcess(workdir / "data", config)
    proc.start()
    yield proc
    proc.stop()


def serial(volume_id: str) -> str:
    return "vol" + volume_id.removeprefix("vol-")


def stamped(volume_id: str, sector: int) -> bytes:
    line = f"ebsemu guest wrote {serial(volume_id)} at sector {sector}\n".encode()
    return line.ljust(SECTOR, b"\0")


def read_sector(path: Path, sector: int) -> bytes:
    with path.open("rb") as handle:
        handle.seek(sector * SECTOR)
        return handle.read(SECTOR)


def test_what_the_guest_wrote_to_its_three_disks_is_in_their_snapshots(
    server: ServerProcess, guest: GuestVm
) -> None:
    ec2: Any = server.client()
    guest.wait_ready()
    (reservation,) = ec2.describe_instances()["Reservations"]
    instance_id = reservation["Instances"][0]["InstanceId"]
    volumes = {device: new_volume(ec2, Size=1) for device in DEVICES}
    names = {}
    for device, volume_id in volumes.items():
        ec2.attach_volume(VolumeId=volume_id, InstanceId=instance_id, Device=device)
        written = guest.console.expect(
            rf"{MARKER} DISK-WRITTEN (?P<name>vd[a-z]+) serial={serial(volume_id)} "
            rf"sectors=0,{LAST}",
            timeout=GUEST_EVENT_SECONDS,
            what=f"the guest's writes to {volume_id}",
        )
        names[volume_id] = written["name"]
    ec2.get_waiter("volume_in_use").wait(VolumeIds=list(volumes.values()), WaiterConfig=FAST)

    answer = ec2.create_snapshots(InstanceSpecification={"InstanceId": instance_id})
    snapshots = {s["VolumeId"]: s["SnapshotId"] for s in answer["Snapshots"]}
    assert set(snapshots) == set(volumes.values())
    ec2.get_waiter("snapshot_completed").wait(
        SnapshotIds=list(snapshots.values()), WaiterConfig=FAST
    )
    for volume_id, snapshot_id in snapshots.items():
        restored = new_volume(ec2, SnapshotId=snapshot_id)
        segment = volume_segment(server.data_dir, restored)
        assert read_sector(segment, 0) == stamped(volume_id, 0)
        assert read_sector(segment, LAST) == stamped(volume_id, LAST)
        ec2.delete_volume(VolumeId=restored)

    # The guest was resumed: it sees a disk go away.
    gone = volumes["/dev/sdg"]
    ec2.detach_volume(VolumeId=gone)
    guest.console.expect(
        rf"{MARKER} DISK-REMOVED {names[gone]} serial={serial(gone)}",
        timeout=GUEST_EVENT_SECONDS,
        what="the guest seeing a disk go away after CreateSnapshots",
    )
    poll(
        lambda: (
            True
            if not ec2.describe_volumes(VolumeIds=[gone])["Volumes"][0]["Attachments"]
            else None
        ),
        timeout=60,
    )
