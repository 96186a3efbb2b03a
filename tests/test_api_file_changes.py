"""Incremental snapshots of the file backend on XFS with reflink, through boto3 against a real
server whose data directory is on a loop-mounted XFS filesystem: the second snapshot reads only
the blocks changed since the first (whose view the server keeps as the volume's base), restores
byte for byte, and the base goes with its snapshot or its volume, never with reconciliation."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import pytest

from tests.api_support import FAST, new_snapshot, new_volume, poll, volume_segment
from tests.file_snapshot_support import (
    captured,
    delete,
    server_on_xfs,
    shared_bytes,
    volume_sha256,
)
from tests.server import ServerProcess
from tests.test_api_modify import wait_finished
from tests.volume_data import write_blocks

BLOCK = 512 * 1024
VOLUME_BLOCKS = 2048  # 1 GiB


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server whose data directory is on its own XFS filesystem (reflink=1)."""
    with server_on_xfs(tmp_path_factory.mktemp("api-file-changes"), reflink=True) as proc:
        yield proc  # reflink views are the file backend's own


@pytest.fixture(scope="module")
def ec2(server: ServerProcess) -> Any:
    return server.client()


def _bases(server: ServerProcess) -> list[str]:
    directory = server.data_dir / "storage" / "bases"
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))


def _kept(server: ServerProcess, volume_id: str, snapshot_id: str) -> None:
    """Wait until the snapshot's view is the volume's one base: it is kept once the snapshot
    completed, and the older base it replaces is removed just after."""
    wanted = [f"{volume_id}@{snapshot_id}"]
    poll(lambda: True if [b for b in _bases(server) if b.startswith(volume_id)] == wanted else None)


def _volume_with_data(server: ServerProcess, ec2: Any, rng: random.Random) -> str:
    volume_id = new_volume(ec2, Size=1)
    write_blocks(server, volume_id, {i * 17: rng.randbytes(BLOCK) for i in range(100)})
    return volume_id


def _changes(rng: random.Random) -> dict[int, bytes]:
    """1% of the volume's blocks: new data over old data and into holes, and one block of
    data overwritten with zeros."""
    indexes = rng.sample(range(VOLUME_BLOCKS), VOLUME_BLOCKS // 100)
    changes = {i: rng.randbytes(BLOCK) for i in indexes}
    changes[17] = bytes(BLOCK)
    return changes


def _restores_identical(server: ServerProcess, ec2: Any, volume_id: str, snapshot_id: str) -> str:
    """A new volume from ``snapshot_id`` holds the same bytes as ``volume_id``; its id."""
    restored = new_volume(ec2, SnapshotId=snapshot_id)
    assert volume_sha256(server, restored) == volume_sha256(server, volume_id)
    return restored


def test_second_snapshot_reads_only_the_changed_blocks_and_restores_identical(
    server: ServerProcess, ec2: Any
) -> None:
    rng = random.Random(11)
    volume_id = _volume_with_data(server, ec2, rng)
    first = new_snapshot(ec2, volume_id)
    assert captured(server, first) == (100, None)
    _kept(server, volume_id, first)

    changes = _changes(rng)
    write_blocks(server, volume_id, changes)
    second = new_snapshot(ec2, volume_id)
    assert captured(server, second) == (len(changes), first)
    _kept(server, volume_id, second)
    assert f"{volume_id}@{first}" not in _bases(server)  # replaced

    restored = _restores_identical(server, ec2, volume_id, second)
    delete(ec2, (restored, volume_id), ())
    poll(lambda: True if not any(b.startswith(volume_id) for b in _bases(server)) else None)
    delete(ec2, (), (first, second))


def test_a_restore_shares_the_stored_blocks_extents_and_outlives_the_snapshot(
    server: ServerProcess, ec2: Any
) -> None:
    rng = random.Random(14)
    volume_id = _volume_with_data(server, ec2, rng)
    snapshot_id = new_snapshot(ec2, volume_id)
    first = _restores_identical(server, ec2, volume_id, snapshot_id)
    second = _restores_identical(server, ec2, volume_id, snapshot_id)
    log = server.log_path.read_text(errors="replace")
    for restored in (first, second):  # no byte of theirs was written: all shared with the store
        assert shared_bytes(volume_segment(server.data_dir, restored)) == 100 * BLOCK
        assert f"volume {restored}: 0 blocks written, 100 sharing the extents" in log
    expected = volume_sha256(server, volume_id)

    write_blocks(server, first, {17: rng.randbytes(BLOCK)})  # copy on write: first alone
    ec2.delete_snapshot(SnapshotId=snapshot_id)
    dropped = f"snapshot {snapshot_id}: manifest dropped"
    poll(lambda: True if dropped in server.log_path.read_text(errors="replace") else None)

    assert volume_sha256(server, second) == expected
    assert volume_sha256(server, first) != expected
    delete(ec2, (first, second, volume_id), ())


def test_deleting_the_first_snapshot_while_the_second_is_pending_keeps_the_second_whole(
    server: ServerProcess, ec2: Any
) -> None:
    rng = random.Random(12)
    volume_id = _volume_with_data(server, ec2, rng)
    first = new_snapshot(ec2, volume_id)
    _kept(server, volume_id, first)
    write_blocks(server, volume_id, _changes(rng))
    second = new_snapshot(ec2, volume_id, wait=False)
    ec2.delete_snapshot(SnapshotId=first)
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[second], WaiterConfig=FAST)

    restored = _restores_identical(server, ec2, volume_id, second)
    _kept(server, volume_id, second)
    assert [b for b in _bases(server) if b.startswith(volume_id)] == [f"{volume_id}@{second}"]
    delete(ec2, (restored, volume_id), (second,))


def test_reconcile_and_a_restart_leave_the_base_to_the_next_snapshot(
    server: ServerProcess, ec2: Any
) -> None:
    rng = random.Random(13)
    volume_id = _volume_with_data(server, ec2, rng)
    first = new_snapshot(ec2, volume_id)
    _kept(server, volume_id, first)
    server.stop()
    try:
        done = server.ebsemu("reconcile", "--json")
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert not [f for f in report["Findings"] if first in f["resource"]], report
        assert f"{volume_id}@{first}" in _bases(server)
    finally:
        server.start()

    changes = {3: rng.randbytes(BLOCK), 1500: rng.randbytes(BLOCK)}
    write_blocks(server, volume_id, changes)
    second = new_snapshot(ec2, volume_id)
    assert captured(server, second) == (2, first)
    restored = _restores_identical(server, ec2, volume_id, second)
    delete(ec2, (restored, volume_id), (first, second))


def test_after_the_volume_grew_only_data_past_the_base_and_changes_are_read(
    server: ServerProcess, ec2: Any
) -> None:
    rng = random.Random(14)
    volume_id = _volume_with_data(server, ec2, rng)
    first = new_snapshot(ec2, volume_id)
    _kept(server, volume_id, first)
    ec2.modify_volume(VolumeId=volume_id, Size=2)
    assert wait_finished(ec2, volume_id)["ModificationState"] == "completed"

    write_blocks(server, volume_id, {5: rng.randbytes(BLOCK), 3000: rng.randbytes(BLOCK)})
    second = new_snapshot(ec2, volume_id)
    assert captured(server, second) == (2, first)
    (snapshot,) = ec2.describe_snapshots(SnapshotIds=[second])["Snapshots"]
    assert snapshot["VolumeSize"] == 2
    restored = _restores_identical(server, ec2, volume_id, second)
    delete(ec2, (restored, volume_id), (first, second))
