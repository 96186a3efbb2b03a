"""Snapshots of the file backend on a filesystem without reflink, through boto3 against a real
server whose data directory is on a loop-mounted XFS made with reflink=0: the first snapshot
copies the volume; a later one hashes the volume against the last completed snapshot's digests
and freezes only the blocks that differ, its manifest starting as that snapshot's. Every
snapshot restores byte for byte, also when the one it was compared with is deleted meanwhile,
and blocks only the deleted one held go. Where no block differs there is no view at all: the
snapshot completes at once with the earlier one's manifest."""

from __future__ import annotations

import os
import random
import re
from collections.abc import Iterator
from typing import Any

import pytest

from backends import sparse
from tests.api_support import FAST, block_path, new_snapshot, new_volume, poll, volume_segment
from tests.file_snapshot_support import captured, delete, server_on_xfs, volume_sha256
from tests.server import ServerProcess
from tests.test_api_modify import wait_finished
from tests.volume_data import write_blocks

BLOCK = 512 * 1024
VOLUME_BLOCKS = 2048  # 1 GiB


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server whose data directory is on its own XFS filesystem without reflink."""
    with server_on_xfs(tmp_path_factory.mktemp("api-digest-freeze"), reflink=False) as proc:
        yield proc


@pytest.fixture(scope="module")
def ec2(server: ServerProcess) -> Any:
    return server.client()


def _restores_as(server: ServerProcess, ec2: Any, snapshot_id: str, expected: str) -> str:
    """A new volume from the snapshot holds bytes whose SHA-256 is ``expected``; its id."""
    restored = new_volume(ec2, SnapshotId=snapshot_id)
    assert volume_sha256(server, restored) == expected
    return restored


def _frozen_by(server: ServerProcess, snapshot_id: str) -> str:
    log = server.log_path.read_text(errors="replace")
    found = re.search(rf"as view {snapshot_id} by (\w+) in", log)
    assert found, server.log_tail()
    return found.group(1)


def _differing(server: ServerProcess, volume_id: str, base_id: str) -> int:
    """How many blocks the last freeze of the volume against ``base_id`` found different."""
    log = server.log_path.read_text(errors="replace")
    found = re.findall(
        rf"volume {volume_id}: (\d+) of (\d+) blocks differ from snapshot {base_id}", log
    )
    assert found, server.log_tail()
    return int(found[-1][0])


def _punch_block(server: ServerProcess, volume_id: str, index: int) -> None:
    fd = os.open(volume_segment(server.data_dir, volume_id), os.O_WRONLY)
    try:
        sparse.punch_hole(fd, index * BLOCK, BLOCK)
        os.fsync(fd)
        assert sparse.is_hole(fd, index * BLOCK, BLOCK)
    finally:
        os.close(fd)


def _volume_and_snapshot(
    server: ServerProcess, ec2: Any, rng: random.Random
) -> tuple[str, dict[int, bytes], str]:
    """A new volume holding 100 blocks of random data, 17 blocks apart, and its first snapshot
    (a copy: there is nothing to compare with yet): (volume, blocks, snapshot)."""
    volume_id = new_volume(ec2, Size=1)
    original = {i * 17: rng.randbytes(BLOCK) for i in range(100)}
    write_blocks(server, volume_id, original)
    first = new_snapshot(ec2, volume_id)
    assert _frozen_by(server, first) == "copy"
    return volume_id, original, first


def test_a_later_snapshot_freezes_only_the_blocks_that_differ_and_restores_identical(
    server: ServerProcess, ec2: Any
) -> None:
    rng = random.Random(21)
    volume_id, original, first = _volume_and_snapshot(server, ec2, rng)
    before = volume_sha256(server, volume_id)

    indexes = rng.sample([i for i in range(VOLUME_BLOCKS) if i % 17], 18)
    changes = {i: rng.randbytes(BLOCK) for i in indexes}  # new data into holes
    changes[34] = rng.randbytes(BLOCK)  # new data over old data
    changes[17] = bytes(BLOCK)  # old data overwritten with zeros
    write_blocks(server, volume_id, {**changes, 51: original[51]})  # 51: the same bytes again
    _punch_block(server, volume_id, 68)  # old data freed, as a discard from a guest does
    changes[68] = bytes(BLOCK)
    after = volume_sha256(server, volume_id)
    second = new_snapshot(ec2, volume_id)

    assert _frozen_by(server, second) == "digest"
    assert _differing(server, volume_id, first) == len(changes)  # block 51 is not among them
    assert captured(server, second) == (len(changes), first)
    (described,) = ec2.describe_snapshots(SnapshotIds=[second])["Snapshots"]
    assert described["State"] == "completed"
    restored = [_restores_as(server, ec2, second, after), _restores_as(server, ec2, first, before)]
    views = server.data_dir / "storage" / "views"
    poll(lambda: True if not any(views.iterdir()) else None)  # each view, once dropped

    delete(ec2, (*restored, volume_id), (first, second))


def test_deleting_the_snapshot_compared_with_keeps_the_later_one_whole(
    server: ServerProcess, ec2: Any
) -> None:
    rng = random.Random(22)
    volume_id, original, first = _volume_and_snapshot(server, ec2, rng)

    replaced = rng.randbytes(BLOCK)
    write_blocks(server, volume_id, {0: replaced})  # block 0's old bytes: only in the first
    after = volume_sha256(server, volume_id)
    second = new_snapshot(ec2, volume_id, wait=False)
    ec2.delete_snapshot(SnapshotId=first)
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[second], WaiterConfig=FAST)
    assert _frozen_by(server, second) == "digest"

    gone = block_path(server.data_dir, original[0])
    poll(lambda: True if not gone.exists() else None)  # the first's own block is freed
    assert block_path(server.data_dir, original[17]).exists()  # a shared one is not
    assert block_path(server.data_dir, replaced).exists()
    restored = _restores_as(server, ec2, second, after)

    delete(ec2, (restored, volume_id), (second,))


def test_after_the_volume_grew_its_new_blocks_are_compared_as_zeros(
    server: ServerProcess, ec2: Any
) -> None:
    rng = random.Random(23)
    volume_id, _, first = _volume_and_snapshot(server, ec2, rng)
    ec2.modify_volume(VolumeId=volume_id, Size=2)
    assert wait_finished(ec2, volume_id)["ModificationState"] == "completed"

    write_blocks(server, volume_id, {5: rng.randbytes(BLOCK), 3000: rng.randbytes(BLOCK)})
    after = volume_sha256(server, volume_id)
    second = new_snapshot(ec2, volume_id)
    assert _frozen_by(server, second) == "digest"
    assert _differing(server, volume_id, first) == 2
    (snapshot,) = ec2.describe_snapshots(SnapshotIds=[second])["Snapshots"]
    assert snapshot["VolumeSize"] == 2
    restored = _restores_as(server, ec2, second, after)

    delete(ec2, (restored, volume_id), (first, second))


def test_a_snapshot_of_an_unchanged_volume_completes_without_a_view_and_restores_identical(
    server: ServerProcess, ec2: Any
) -> None:
    rng = random.Random(24)
    volume_id, original, first = _volume_and_snapshot(server, ec2, rng)
    before = volume_sha256(server, volume_id)
    write_blocks(server, volume_id, {51: original[51]})  # the same bytes again: no change

    answer = ec2.create_snapshot(VolumeId=volume_id)
    second = answer["SnapshotId"]
    assert answer["State"] == "pending"  # answered as every CreateSnapshot is
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[second], WaiterConfig=FAST)

    assert _differing(server, volume_id, first) == 0
    log = server.log_path.read_text(errors="replace")
    assert f"snapshot {second}: completed, 100 blocks, none changed" in log
    assert f"as view {second} " not in log and f"snapshot {second}: captured" not in log
    (described,) = ec2.describe_snapshots(SnapshotIds=[second])["Snapshots"]
    assert (described["Progress"], described["FullSnapshotSizeInBytes"]) == ("100%", 100 * BLOCK)
    assert server.rows("SELECT state FROM jobs WHERE resource_id = ?", second) == [("done",)]
    restored = [_restores_as(server, ec2, second, before)]

    changed = {7: rng.randbytes(BLOCK)}  # the next change is captured, over the unchanged one
    write_blocks(server, volume_id, changed)
    after = volume_sha256(server, volume_id)
    third = new_snapshot(ec2, volume_id)
    assert _frozen_by(server, third) == "digest"
    assert captured(server, third) == (1, second)
    restored.append(_restores_as(server, ec2, third, after))
    views = server.data_dir / "storage" / "views"
    poll(lambda: True if not any(views.iterdir()) else None)  # the third's view, once dropped

    delete(ec2, (*restored, volume_id), (first, second, third))
