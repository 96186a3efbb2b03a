"""Shared by the API tests of the file backend's snapshots on a private XFS filesystem (with and
without reflink): the server on it, a volume's bytes by SHA-256, what a capture logged, and the
clean-up, and how much of a file shares extents."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from backends import sparse
from tests.api_support import volume_segment
from tests.fs_fixtures import xfs_at
from tests.server import TEST_CONFIG, ServerProcess

GIB = 1024**3
FIEMAP_EXTENT_SHARED = 0x2000  # linux/fiemap.h: the extent is shared with another file


@contextlib.contextmanager
def server_on_xfs(work: Path, *, reflink: bool) -> Iterator[ServerProcess]:
    """A file-backend server whose data directory is on its own 3 GiB XFS filesystem, with
    volume modifications allowed back to back."""
    config = TEST_CONFIG.replace("[limits]\n", "[limits]\nmodification_cooldown_seconds = 0\n")
    with xfs_at(work, 3 * GIB, reflink=reflink) as mounted:
        proc = ServerProcess(mounted / "data", config, backend="file")
        try:
            proc.start()
            yield proc
        finally:
            proc.stop()


def volume_sha256(server: ServerProcess, volume_id: str) -> str:
    """The SHA-256 of the volume's bytes (its one segment file)."""
    digest = hashlib.sha256()
    with volume_segment(server.data_dir, volume_id).open("rb") as handle:
        for chunk in iter(lambda: handle.read(8 * 1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def shared_bytes(path: Path) -> int:
    """How many of the file's bytes lie in extents it shares with another file (reflink)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        extents = sparse.physical_extents(fd, 0, os.fstat(fd).st_size)
        return sum(e.length for e in extents if e.flags & FIEMAP_EXTENT_SHARED)
    finally:
        os.close(fd)


def captured(server: ServerProcess, snapshot_id: str) -> tuple[int, str | None]:
    """(blocks read, the snapshot whose manifest the changes were laid over) from the log line
    the snapshot's capture wrote."""
    log = server.log_path.read_text(errors="replace")
    found = re.search(
        rf"snapshot {snapshot_id}: captured \d+ blocks, \d+ new, (\d+) read"
        r"(?: \(changes since (snap-\w+)\))?",
        log,
    )
    assert found, server.log_tail()
    return int(found.group(1)), found.group(2)


def delete(ec2: Any, volume_ids: tuple[str, ...], snapshot_ids: tuple[str, ...]) -> None:
    """Delete the volumes, then the snapshots."""
    for volume_id in volume_ids:
        ec2.delete_volume(VolumeId=volume_id)
    for snapshot_id in snapshot_ids:
        ec2.delete_snapshot(SnapshotId=snapshot_id)
