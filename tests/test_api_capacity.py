"""When the volume store cannot hold a restore, CreateVolume answers a clear error at once and
nothing half-made is left behind."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api_support import aws_error, new_snapshot, new_volume
from tests.server import ServerProcess

MIB = 1024 * 1024


@pytest.fixture
def small_store(tmp_path: Path) -> Iterator[Path]:
    """A 160 MiB tmpfs for volume files (root only)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8) to make a small tmpfs for the volume store")
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=160m", "tmpfs", str(mountpoint)],
        check=True,
        timeout=30,
    )
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False, timeout=30)


def _fill(path: Path, size: int) -> None:
    with path.open("r+b") as handle:
        handle.write(os.urandom(size))
        handle.flush()
        os.fsync(handle.fileno())


def test_restore_larger_than_free_space_is_refused_with_insufficient_volume_capacity(
    tmp_path: Path, small_store: Path
) -> None:
    server = ServerProcess(tmp_path / "data", f"[storage]\npath = {small_store}\n")
    server.start()
    try:
        ec2 = server.client()
        source = new_volume(ec2)
        _fill(small_store / "volumes" / source / "seg-0000", 60 * MIB)
        snapshot_id = new_snapshot(ec2, source)
        filler = new_volume(ec2)
        _fill(small_store / "volumes" / filler / "seg-0000", 60 * MIB)
        volumes_before = sorted(p.name for p in (small_store / "volumes").iterdir())

        code, message, status = aws_error(
            ec2.create_volume, AvailabilityZone="us-east-1a", SnapshotId=snapshot_id
        )

        assert (code, status) == ("InsufficientVolumeCapacity", 400)
        assert "capacity" in message
        assert sorted(p.name for p in (small_store / "volumes").iterdir()) == volumes_before
        assert (
            ec2.describe_volumes(Filters=[{"Name": "snapshot-id", "Values": [snapshot_id]}])[
                "Volumes"
            ]
            == []
        )
    finally:
        server.stop()
