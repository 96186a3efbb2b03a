"""A storage host reached over SSH (a real sshd on 127.0.0.1) with the remote-file backend,
driven over the EC2 API by boto3 against a real server: volumes are sparse files in the host's
directory, snapshots stream their bytes through SSH into the block store, restores write them
back with holes kept, and a host that is down leaves nothing half-done."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.api_support import FAST, new_snapshot, new_volume, poll, volume_state
from tests.server import TEST_CONFIG, ServerProcess
from tests.ssh_fixtures import HAVE_SSHD, NEEDS_SSHD, SshServer, free_port

pytestmark = pytest.mark.skipif(not HAVE_SSHD, reason=NEEDS_SSHD)

GIB = 1024**3
BLOCK = 512 * 1024


@dataclass
class RemoteHost:
    sshd: SshServer
    server: ServerProcess
    path: Path  # the storage host's directory (on this machine, reached over SSH)

    def volume_file(self, volume_id: str) -> Path:
        return self.path / "volumes" / volume_id

    def views(self) -> set[str]:
        return {name for name in self.files() if name.startswith("views/")}

    def files(self) -> set[str]:
        return {
            f"{sub}/{p.name}"
            for sub in ("volumes", "views")
            if (self.path / sub).exists()
            for p in (self.path / sub).iterdir()
        }


def _config(sshd: SshServer, path: Path, url: str | None = None) -> str:
    return TEST_CONFIG + (
        "[storage far]\nzone = us-east-1a\nbackend = remote-file\n"
        f"url = {url or sshd.url}\nkey_file = {sshd.client_key}\n"
        f"known_hosts = {sshd.known_hosts}\npath = {path}\ncommand_timeout = 30\n"
    )


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[RemoteHost]:
    sshd = SshServer(tmp_path / "sshd")
    sshd.start()
    path = tmp_path / "far"
    server = ServerProcess(tmp_path / "data", _config(sshd, path))
    try:
        server.start()
        yield RemoteHost(sshd, server, path)
    finally:
        server.stop()
        sshd.stop()


def _write(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as handle:
        handle.seek(offset)
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _data_extents(path: Path) -> list[tuple[int, int]]:
    """(start, end) of each data extent, from SEEK_DATA / SEEK_HOLE."""
    extents: list[tuple[int, int]] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size, offset = os.fstat(fd).st_size, 0
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            extents.append((start, end))
            offset = end
    finally:
        os.close(fd)
    return extents


def _same_bytes(a: Path, b: Path) -> bool:
    """Byte-identical: same size, and the same bytes over every data extent of either file
    (outside them both files read as zeros)."""
    if a.stat().st_size != b.stat().st_size:
        return False
    with a.open("rb") as fa, b.open("rb") as fb:
        for start, end in sorted({*_data_extents(a), *_data_extents(b)}):
            fa.seek(start)
            fb.seek(start)
            if fa.read(end - start) != fb.read(end - start):
                return False
    return True


def test_volume_snapshot_restore_and_delete_on_a_storage_host_over_ssh(
    remote: RemoteHost,
) -> None:
    ec2 = remote.server.client()
    source = new_volume(ec2)
    source_file = remote.volume_file(source)
    assert source_file.stat().st_size == GIB
    assert source_file.stat().st_blocks == 0  # sparse: nothing allocated

    first, middle, last = os.urandom(BLOCK), os.urandom(100), os.urandom(BLOCK)
    _write(source_file, 0, first)
    _write(source_file, 300 * BLOCK + 4096, middle)  # part of a block: the rest reads as zeros
    _write(source_file, 700 * BLOCK, bytes(BLOCK))  # an allocated block of zeros
    _write(source_file, GIB - BLOCK, last)
    snapshot_id = new_snapshot(ec2, source)
    snapshot = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
    assert (snapshot["State"], snapshot["Progress"]) == ("completed", "100%")
    # The view is dropped after the snapshot is marked completed, over its own SSH command.
    poll(lambda: True if not remote.views() else None)

    restored = new_volume(ec2, SnapshotId=snapshot_id)
    restored_file = remote.volume_file(restored)
    assert _same_bytes(restored_file, source_file)
    data_blocks = {0, 300, 2047}
    extents = _data_extents(restored_file)
    covered = {i for start, end in extents for i in range(start // BLOCK, -(-end // BLOCK))}
    assert covered == data_blocks  # the zero block and every hole stayed holes
    assert restored_file.stat().st_blocks * 512 == len(data_blocks) * BLOCK

    for volume_id in (source, restored):
        ec2.delete_volume(VolumeId=volume_id)
    ec2.get_waiter("volume_deleted").wait(VolumeIds=[source, restored], WaiterConfig=FAST)
    assert remote.files() == set()


def test_create_on_a_host_that_went_down_ends_in_error_and_leaves_nothing(
    remote: RemoteHost,
) -> None:
    ec2 = remote.server.client()
    kept = new_volume(ec2)
    remote.sshd.stop()

    failed = new_volume(ec2, wait=False)
    poll(lambda: True if volume_state(ec2, failed) == "error" else None, timeout=60)
    remote.sshd.start()
    assert remote.files() == {f"volumes/{kept}"}


def test_delete_on_a_host_that_is_down_stays_deleting_until_the_host_is_back(
    remote: RemoteHost,
) -> None:
    ec2 = remote.server.client()
    volume_id = new_volume(ec2)
    remote.sshd.stop()

    ec2.delete_volume(VolumeId=volume_id)
    log = remote.server.log_path
    poll(lambda: True if "stays deleting until its bytes are removed" in log.read_text() else None)
    assert volume_state(ec2, volume_id) == "deleting"
    assert remote.volume_file(volume_id).exists()

    remote.sshd.start()
    ec2.get_waiter("volume_deleted").wait(VolumeIds=[volume_id], WaiterConfig=FAST)
    assert not remote.volume_file(volume_id).exists()


def test_a_host_unreachable_at_start_does_not_stop_the_service(tmp_path: Path) -> None:
    sshd = SshServer(tmp_path / "sshd")  # configured, never started: nothing listens
    path = tmp_path / "far"
    server = ServerProcess(
        tmp_path / "data", _config(sshd, path, f"ssh://{sshd.user}@127.0.0.1:{free_port()}")
    )
    server.start()
    try:
        ec2 = server.client()
        volume_id = new_volume(ec2, wait=False)
        poll(lambda: True if volume_state(ec2, volume_id) == "error" else None, timeout=60)
        assert "storage host far (remote-file" in server.log_path.read_text()
        assert not path.exists()
    finally:
        server.stop()
