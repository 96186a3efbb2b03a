"""Several storage hosts: CreateVolume places each volume on a host of its zone with the most
free space (real statvfs of real filesystems), a zone whose hosts are full answers
InsufficientVolumeCapacity, and every later call (snapshot, restore, delete) goes to the host
the volume was placed on — checked on the hosts' directories."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.api_support import FAST, aws_error, new_snapshot, new_volume, poll
from tests.server import TEST_CONFIG, ServerProcess

MIB = 1024 * 1024


@dataclass
class Hosts:
    server: ServerProcess
    small: Path  # us-east-1a, a 64 MiB tmpfs: sorts first by name, has less free space
    big: Path  # us-east-1a, on the test's filesystem
    other: Path  # us-east-1b, its only host
    full: Path  # us-east-1c, a tmpfs filled to the last byte
    roomy: Path  # us-east-1d, a 64 MiB tmpfs
    cramped: Path  # us-east-1d, a 32 MiB tmpfs
    tie_first: Path  # us-east-1e, 16 MiB tmpfs, first by name
    tie_second: Path  # us-east-1e, 16 MiB tmpfs


def _tmpfs(mountpoint: Path, size: str) -> None:
    mountpoint.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint)],
        check=True,
        timeout=30,
    )


def _fill(path: Path, size: int) -> None:
    with path.open("wb") as handle:
        handle.write(b"\xff" * size)
        handle.flush()
        os.fsync(handle.fileno())


def _fill_up(directory: Path) -> None:
    """Write into ``directory`` until its filesystem has no byte left."""
    with (directory / "filler").open("wb") as handle:
        try:
            while True:
                handle.write(b"\xff" * MIB)
                handle.flush()
        except OSError:
            pass


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8) to give storage hosts small tmpfs filesystems")
    root = tmp_path_factory.mktemp("storage-hosts")
    small, big, other, full = root / "a-small", root / "b-big", root / "other", root / "full"
    roomy, cramped = root / "roomy", root / "cramped"
    tie_first, tie_second = root / "tie-1", root / "tie-2"
    sizes = {small: "64m", full: "4m", roomy: "64m", cramped: "32m"}
    sizes |= {tie_first: "16m", tie_second: "16m"}
    for mountpoint, size in sizes.items():
        _tmpfs(mountpoint, size)
    config = TEST_CONFIG + (
        "[region us-east-1]\nzones = us-east-1a, us-east-1b, us-east-1c, us-east-1d, us-east-1e\n"
        f"[storage a-small]\nzone = us-east-1a\npath = {small}\n"
        f"[storage b-big]\nzone = us-east-1a\nbackend = file\npath = {big}\n"
        f"[storage other]\nzone = us-east-1b\npath = {other}\n"
        f"[storage full]\nzone = us-east-1c\npath = {full}\n"
        f"[storage p-roomy]\nzone = us-east-1d\npath = {roomy}\n"
        f"[storage c-cramped]\nzone = us-east-1d\npath = {cramped}\n"
        f"[storage tie-2]\nzone = us-east-1e\npath = {tie_second}\n"
        f"[storage tie-1]\nzone = us-east-1e\npath = {tie_first}\n"
    )
    server = ServerProcess(root / "data", config)
    try:
        server.start()
        _fill_up(full)
        yield Hosts(server, small, big, other, full, roomy, cramped, tie_first, tie_second)
    finally:
        server.stop()
        for mountpoint in sizes:
            subprocess.run(["umount", "-l", str(mountpoint)], check=False, timeout=30)


def _segment(host: Path, volume_id: str) -> Path:
    return host / "volumes" / volume_id / "seg-0000"


def _volume_ids(host: Path) -> set[str]:
    directory = host / "volumes"
    return {p.name for p in directory.iterdir()} if directory.exists() else set()


def test_volumes_go_to_the_host_of_their_zone_with_the_most_free_space(hosts: Hosts) -> None:
    ec2 = hosts.server.client()
    placed = [new_volume(ec2, AvailabilityZone="us-east-1a") for _ in range(3)]
    for volume_id in placed:
        assert _segment(hosts.big, volume_id).is_file()
        assert volume_id not in _volume_ids(hosts.small)
        assert volume_id not in _volume_ids(hosts.other)


def test_a_volume_lands_on_its_own_zones_host(hosts: Hosts) -> None:
    ec2 = hosts.server.client()
    in_b = new_volume(ec2, AvailabilityZone="us-east-1b")
    assert _segment(hosts.other, in_b).is_file()
    assert in_b not in _volume_ids(hosts.big) | _volume_ids(hosts.small)
    volume = ec2.describe_volumes(VolumeIds=[in_b])["Volumes"][0]
    assert (volume["AvailabilityZone"], volume["State"]) == ("us-east-1b", "available")
    assert "StorageHost" not in volume and "storage_host" not in str(volume)


def test_a_zone_whose_hosts_are_all_full_answers_insufficient_capacity(hosts: Hosts) -> None:
    ec2 = hosts.server.client()
    code, _, status = aws_error(ec2.create_volume, AvailabilityZone="us-east-1c", Size=1)
    assert (code, status) == ("InsufficientVolumeCapacity", 400)
    assert _volume_ids(hosts.full) == set()
    assert not [
        v for v in ec2.describe_volumes()["Volumes"] if v["AvailabilityZone"] == "us-east-1c"
    ]


def test_snapshot_restore_and_delete_use_each_volumes_host(hosts: Hosts) -> None:
    ec2 = hosts.server.client()
    source = new_volume(ec2, AvailabilityZone="us-east-1b")
    data = os.urandom(3 * MIB)
    with _segment(hosts.other, source).open("r+b") as handle:
        handle.seek(5 * MIB)
        handle.write(data)
    snapshot_id = new_snapshot(ec2, source)
    restored = new_volume(ec2, AvailabilityZone="us-east-1a", SnapshotId=snapshot_id)
    with _segment(hosts.big, restored).open("rb") as handle:
        handle.seek(5 * MIB)
        assert handle.read(len(data)) == data
    assert _segment(hosts.big, restored).stat().st_blocks * 512 < 4 * MIB  # holes kept

    for volume_id, host in ((source, hosts.other), (restored, hosts.big)):
        ec2.delete_volume(VolumeId=volume_id)
        poll(lambda v=volume_id, h=host: True if v not in _volume_ids(h) else None)
    ec2.get_waiter("volume_deleted").wait(VolumeIds=[source, restored], WaiterConfig=FAST)


def test_the_emptier_host_wins_as_its_free_space_changes(hosts: Hosts) -> None:
    ec2 = hosts.server.client()
    first = new_volume(ec2, AvailabilityZone="us-east-1d")
    assert _segment(hosts.roomy, first).is_file()  # 64 MiB free against 32 MiB
    _fill(hosts.roomy / "filler", 48 * MIB)  # now 16 MiB free against 32 MiB
    second = new_volume(ec2, AvailabilityZone="us-east-1d")
    assert _segment(hosts.cramped, second).is_file()
    assert second not in _volume_ids(hosts.roomy)


def test_hosts_with_equal_free_space_are_chosen_by_name(hosts: Hosts) -> None:
    ec2 = hosts.server.client()
    volume_id = new_volume(ec2, AvailabilityZone="us-east-1e")
    assert _segment(hosts.tie_first, volume_id).is_file()
    assert _volume_ids(hosts.tie_second) == set()
