"""AttachVolume / DetachVolume as a Linux guest sees them.

A real ebsemu server (file storage, one ``qemu`` VMM host) and a QEMU VM booting a Debian cloud
kernel with a busybox initramfs (tests/guest/). The guest's /init reports on its serial console
each virtio-blk disk that appears (its serial and size) and that goes away, and writes one line
to the first and the last sector of each new disk: the tests check those reports and then find
the lines in the volume's bytes and in a snapshot of it.

The guest is built from Debian packages on first use and cached (see tests/guest/build.py);
the tests skip, saying why, where QEMU is missing or the packages cannot be had.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api_support import FAST, new_snapshot, new_volume, poll, volume_segment
from tests.guest.build import GuestImage, GuestUnavailable, default_cache_dir, guest_image
from tests.guest.vm import MARKER, QEMU, GuestVm, running_guest
from tests.server import TEST_CONFIG, ZONE, ServerProcess

GIB = 1024**3
SECTOR = 512
DEVICE = "/dev/sdf"
GUEST_EVENT_SECONDS = 30.0  # hot-plug is seen in ~1 s, unplug in ~6 s (pciehp's own delay)


@pytest.fixture(scope="session")
def guest_image_files() -> GuestImage:
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
    return tmp_path_factory.mktemp("guest-attach")


@pytest.fixture(scope="module")
def guest(guest_image_files: GuestImage, workdir: Path) -> Iterator[GuestVm]:
    """The guest VM, started but not waited for: it boots while the server starts."""
    socket_dir = workdir / "vms"
    socket_dir.mkdir()
    with running_guest(guest_image_files, socket_dir, workdir, "guest1") as vm:
        yield vm


@pytest.fixture(scope="module")
def guest_server(guest: GuestVm, workdir: Path) -> Iterator[ServerProcess]:
    """A server whose one VMM host is the guest's socket directory."""
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


@pytest.fixture(scope="module")
def ec2(guest_server: ServerProcess) -> Any:
    return guest_server.client()


@pytest.fixture(scope="module")
def instance_id(guest: GuestVm, ec2: Any) -> str:
    """The guest, booted, as the server's instance."""
    guest.wait_ready()
    reservations = ec2.describe_instances()["Reservations"]
    instances = [i for r in reservations for i in r["Instances"]]
    assert [(i["Placement"]["AvailabilityZone"], i["State"]["Name"]) for i in instances] == [
        (ZONE, "running")
    ]
    found: str = instances[0]["InstanceId"]
    return found


def guest_serial(volume_id: str) -> str:
    """What the guest reads as a disk's serial: virtio-blk holds 20 bytes, so the volume id
    without its dash."""
    return "vol" + volume_id.removeprefix("vol-")


def attachment_state(ec2: Any, volume_id: str) -> str | None:
    attachments = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]["Attachments"]
    return attachments[0]["State"] if attachments else None


def block_device_mappings(ec2: Any, instance_id: str) -> dict[str, str]:
    (reservation,) = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    mappings = reservation["Instances"][0].get("BlockDeviceMappings", [])
    return {m["DeviceName"]: m["Ebs"]["VolumeId"] for m in mappings}


def attach(ec2: Any, guest: GuestVm, volume_id: str, instance_id: str) -> str:
    """AttachVolume, then wait until the API says attached and the guest has the disk; the
    guest's name for it (vda, …)."""
    ec2.attach_volume(VolumeId=volume_id, InstanceId=instance_id, Device=DEVICE)
    serial = guest_serial(volume_id)
    added = guest.console.expect(
        rf"{MARKER} DISK-ADDED (?P<name>vd[a-z]+) serial={serial} sectors=(?P<sectors>\d+)",
        timeout=GUEST_EVENT_SECONDS,
        what=f"a disk with serial {serial} in the guest after AttachVolume",
    )
    poll(lambda: attachment_state(ec2, volume_id) == "attached" or None, timeout=30)
    assert int(added["sectors"]) * SECTOR == GIB
    return added["name"]


def detach(ec2: Any, guest: GuestVm, volume_id: str, name: str) -> None:
    """DetachVolume, then wait until the guest has lost the disk and the volume is available."""
    ec2.detach_volume(VolumeId=volume_id)
    guest.console.expect(
        rf"{MARKER} DISK-REMOVED {name} serial={guest_serial(volume_id)}",
        timeout=GUEST_EVENT_SECONDS,
        what=f"{name} gone from the guest after DetachVolume",
    )
    ec2.get_waiter("volume_available").wait(VolumeIds=[volume_id], WaiterConfig=FAST)


def read_sector(path: Path, sector: int) -> bytes:
    with path.open("rb") as handle:
        handle.seek(sector * SECTOR)
        return handle.read(SECTOR)


def stamped(volume_id: str, sector: int) -> bytes:
    """The sector as the guest's /init leaves it: one line, then zeros."""
    line = f"ebsemu guest wrote {guest_serial(volume_id)} at sector {sector}\n".encode()
    return line.ljust(SECTOR, b"\0")


def test_attached_volume_is_a_guest_disk_with_the_volume_id_as_serial_until_detached(
    ec2: Any, guest: GuestVm, instance_id: str
) -> None:
    volume_id = new_volume(ec2, Size=1, AvailabilityZone=ZONE)

    name = attach(ec2, guest, volume_id, instance_id)
    assert block_device_mappings(ec2, instance_id) == {DEVICE: volume_id}
    assert guest.console.disks() == {name: guest_serial(volume_id)}

    detach(ec2, guest, volume_id, name)
    assert guest.console.disks() == {}
    assert block_device_mappings(ec2, instance_id) == {}
    assert attachment_state(ec2, volume_id) is None


def test_bytes_the_guest_wrote_before_detach_are_in_a_snapshot_taken_after_it(
    ec2: Any, guest_server: ServerProcess, guest: GuestVm, instance_id: str
) -> None:
    volume_id = new_volume(ec2, Size=1, AvailabilityZone=ZONE)
    name = attach(ec2, guest, volume_id, instance_id)
    written = guest.console.expect(
        rf"{MARKER} DISK-(?P<outcome>WRITTEN|WRITE-FAILED) {name} "
        rf"serial={guest_serial(volume_id)}(?: sectors=0,(?P<last>\d+))?",
        timeout=GUEST_EVENT_SECONDS,
        what=f"the guest's writes to {name}",
    )
    assert written["outcome"] == "WRITTEN"
    last = int(written["last"])
    assert last == GIB // SECTOR - 1
    detach(ec2, guest, volume_id, name)

    snapshot_id = new_snapshot(ec2, volume_id)
    restored_id = new_volume(ec2, SnapshotId=snapshot_id, AvailabilityZone=ZONE)

    for held_by in (volume_id, restored_id):
        segment = volume_segment(guest_server.data_dir, held_by)
        assert read_sector(segment, 0) == stamped(volume_id, 0), held_by
        assert read_sector(segment, 1) == bytes(SECTOR), held_by
        assert read_sector(segment, last) == stamped(volume_id, last), held_by
