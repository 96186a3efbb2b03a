"""Snapshot data end to end: known bytes written into a volume's files, snapshotted and restored
over the EC2 API, then checked on disk — the restored files, the block store, the manifests.

A volume's content is its size plus its non-zero 512 KiB blocks: everything else reads as zeros.
The tests keep that as a model (`Content`), write it into the volume's segment files, and compare
what a restore produces with it block for block, walking only the files' data extents.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ebsemu.model import BLOCK_SIZE, GIB
from tests import block_support
from tests.block_support import StoredBlock
from tests.server import TEST_CONFIG, ZONE, ServerProcess

MIB = 1024**2
ZERO_BLOCK = bytes(BLOCK_SIZE)
ZERO_DIGEST = hashlib.sha256(ZERO_BLOCK).hexdigest()
T = TypeVar("T")


# ---- the model of a volume's bytes -------------------------------------------------------


@dataclass
class Content:
    """A volume's bytes: ``size`` long, zeros except in ``blocks`` (index -> 512 KiB)."""

    size: int
    blocks: dict[int, bytes] = field(default_factory=dict)

    def nonzero(self) -> dict[int, bytes]:
        return {i: b for i, b in self.blocks.items() if b != ZERO_BLOCK}

    def copy(self) -> Content:
        return Content(self.size, dict(self.blocks))


@dataclass
class VolumeFiles:
    """A file-backend volume on disk: its segment files and the segment size they use."""

    directory: Path

    @property
    def layout(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.directory / "volume.json").read_text())
        return data

    @property
    def segments(self) -> list[Path]:
        return sorted(self.directory.glob("seg-*"))

    def write(self, content: Content, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset`` of the volume (across segments) and into the model."""
        segment_bytes = int(self.layout["segment_bytes"])
        assert offset >= 0 and offset + len(data) <= content.size
        done = 0
        while done < len(data):
            at = offset + done
            segment, local = divmod(at, segment_bytes)
            piece = data[done : done + min(len(data) - done, segment_bytes - local)]
            fd = os.open(self.directory / f"seg-{segment:04d}", os.O_WRONLY)
            try:
                assert os.pwrite(fd, piece, local) == len(piece)
            finally:
                os.close(fd)
            done += len(piece)
        for index in range(offset // BLOCK_SIZE, -(-(offset + len(data)) // BLOCK_SIZE)):
            block = bytearray(content.blocks.get(index, ZERO_BLOCK))
            base = index * BLOCK_SIZE
            lo, hi = max(offset, base), min(offset + len(data), base + BLOCK_SIZE)
            block[lo - base : hi - base] = data[lo - offset : hi - offset]
            content.blocks[index] = bytes(block)

    def read(self) -> Content:
        """The volume's bytes as they are on disk, reading only its data extents."""
        layout = self.layout
        segment_bytes = int(layout["segment_bytes"])
        found = Content(int(layout["size_bytes"]))
        segments = self.segments
        assert len(segments) == -(-found.size // segment_bytes)
        for number, path in enumerate(segments):
            first = number * segment_bytes // BLOCK_SIZE
            with path.open("rb") as f:
                assert os.fstat(f.fileno()).st_size == min(
                    segment_bytes, found.size - number * segment_bytes
                )
                for start, end in data_extents(path):
                    for local in range(start // BLOCK_SIZE, -(-end // BLOCK_SIZE)):
                        f.seek(local * BLOCK_SIZE)
                        block = f.read(BLOCK_SIZE)
                        if block != ZERO_BLOCK:
                            found.blocks[first + local] = block
        return found

    def allocated_bytes(self) -> int:
        return sum(path.stat().st_blocks * 512 for path in self.segments)

    def block_extents(self) -> list[tuple[int, int]]:
        """Data extents of the whole volume, in block indexes [first, end), merged across
        segment boundaries."""
        segment_bytes = int(self.layout["segment_bytes"])
        spans: list[tuple[int, int]] = []
        for number, path in enumerate(self.segments):
            base = number * segment_bytes
            for start, end in data_extents(path):
                assert start % BLOCK_SIZE == 0 and end % BLOCK_SIZE == 0, (start, end)
                spans.append(((base + start) // BLOCK_SIZE, (base + end) // BLOCK_SIZE))
        return merge_spans(spans)


def data_extents(path: Path) -> list[tuple[int, int]]:
    """(start, end) byte offsets of each data extent of ``path`` (SEEK_DATA / SEEK_HOLE)."""
    extents: list[tuple[int, int]] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        offset = 0
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole follows
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            extents.append((start, end))
            offset = end
    finally:
        os.close(fd)
    return extents


def merge_spans(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def spans_of(indexes: set[int]) -> list[tuple[int, int]]:
    return merge_spans([(i, i + 1) for i in indexes])


def digest(block: bytes) -> str:
    return hashlib.sha256(block).hexdigest()


# ---- what the server holds ---------------------------------------------------------------


def volume_files(server: ServerProcess, volume_id: str) -> VolumeFiles:
    return VolumeFiles(server.data_dir / "storage" / "volumes" / volume_id)


def stored_blocks(server: ServerProcess) -> dict[str, int]:
    """Every block in the store: digest hex -> size in bytes."""
    return block_support.stored_blocks(server.data_dir / "blocks")


def block_path(server: ServerProcess, digest_hex: str) -> StoredBlock:
    return StoredBlock(server.data_dir / "blocks", bytes.fromhex(digest_hex))


def manifest(server: ServerProcess, snapshot_id: str) -> dict[int, str]:
    """A snapshot's manifest rows: block index -> digest hex."""
    rows = server.rows(
        "SELECT block_index, digest FROM snapshot_blocks WHERE snapshot_id = ?", snapshot_id
    )
    return {int(index): bytes(d).hex() for index, d in rows}


def snapshot_rows(server: ServerProcess, snapshot_id: str) -> int:
    [(count,)] = server.rows("SELECT COUNT(*) FROM snapshots WHERE id = ?", snapshot_id)
    return int(count)


# ---- API helpers -------------------------------------------------------------------------


def poll(
    what: str, probe: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.05
) -> T:
    """``probe()`` every ``interval`` seconds until it returns something other than None;
    fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(interval)


def volume_state(ec2: Any, volume_id: str) -> str:
    state: str = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]["State"]
    return state


def settled_volume(ec2: Any, volume_id: str) -> str:
    """Wait until the volume leaves `creating`; return the state it reached."""

    def probe() -> str | None:
        state = volume_state(ec2, volume_id)
        return None if state == "creating" else state

    return poll(f"volume {volume_id} leaves creating", probe)


def new_volume(ec2: Any, size_gib: int, volume_type: str = "gp3", **kwargs: Any) -> str:
    volume_id: str = ec2.create_volume(
        AvailabilityZone=ZONE, Size=size_gib, VolumeType=volume_type, **kwargs
    )["VolumeId"]
    assert settled_volume(ec2, volume_id) == "available"
    return volume_id


def restore(ec2: Any, snapshot_id: str) -> str:
    volume_id: str = ec2.create_volume(AvailabilityZone=ZONE, SnapshotId=snapshot_id)["VolumeId"]
    assert settled_volume(ec2, volume_id) == "available"
    return volume_id


def snapshot(ec2: Any, volume_id: str) -> str:
    """CreateSnapshot, then wait for it to complete."""
    snapshot_id: str = ec2.create_snapshot(VolumeId=volume_id)["SnapshotId"]
    completed(ec2, snapshot_id)
    return snapshot_id


def completed(ec2: Any, snapshot_id: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        snap: dict[str, Any] = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
        assert snap["State"] != "error", snap
        return snap if snap["State"] == "completed" else None

    return poll(f"snapshot {snapshot_id} completes", probe)


def delete_snapshot(server: ServerProcess, ec2: Any, snapshot_id: str) -> None:
    """DeleteSnapshot, then wait until the server has swept it (its record is gone)."""
    ec2.delete_snapshot(SnapshotId=snapshot_id)
    poll(f"snapshot {snapshot_id} swept", lambda: snapshot_rows(server, snapshot_id) == 0 or None)


def random_blocks(rng: random.Random, count: int) -> bytes:
    return rng.randbytes(count * BLOCK_SIZE)


# ---- 1. incremental snapshots, restores, holes, zero blocks ------------------------------


@dataclass
class Incremental:
    """Two snapshots of one volume, 1% of its written blocks changed in between, and what the
    block store and the manifests held at each step."""

    server: ServerProcess
    first: Content
    second: Content
    explicit_zero_blocks: set[int]
    changed_blocks: set[int]
    first_snapshot: str
    second_snapshot: str
    store_after_first: dict[str, int]
    store_after_second: dict[str, int]
    first_restore: VolumeFiles
    second_restore: VolumeFiles


@pytest.fixture(scope="module")
def incremental(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Incremental]:
    server = ServerProcess(tmp_path_factory.mktemp("incremental") / "data", TEST_CONFIG)
    server.start()
    try:
        yield _incremental(server)
    finally:
        server.stop()


def _incremental(server: ServerProcess) -> Incremental:
    ec2 = server.client()
    rng = random.Random(0x5EED1)
    volume_id = new_volume(ec2, 2)
    files = volume_files(server, volume_id)
    content = Content(2 * GIB)
    last = content.size // BLOCK_SIZE - 1
    # 200 non-zero blocks in runs with large holes between them, the last block included,
    # one run starting mid-block; 4 blocks of explicit zeros in a hole and 1 inside a run.
    files.write(content, 0, random_blocks(rng, 40))
    files.write(content, 300 * MIB, random_blocks(rng, 60))
    files.write(content, 300 * MIB + 60 * BLOCK_SIZE, ZERO_BLOCK)
    files.write(content, 300 * MIB + 61 * BLOCK_SIZE, random_blocks(rng, 20))
    files.write(content, 700 * MIB + 12345, rng.randbytes(37 * BLOCK_SIZE))  # 38 blocks
    files.write(content, 1100 * MIB, bytes(4 * BLOCK_SIZE))
    files.write(content, 1500 * MIB, random_blocks(rng, 39))
    files.write(content, (last - 2) * BLOCK_SIZE, random_blocks(rng, 3))
    explicit_zero_blocks = {300 * MIB // BLOCK_SIZE + 60} | {
        1100 * MIB // BLOCK_SIZE + i for i in range(4)
    }
    assert len(content.nonzero()) == 200
    assert files.read() == Content(content.size, content.nonzero())  # the model is the disk
    assert stored_blocks(server) == {}

    first_snapshot = snapshot(ec2, volume_id)
    first = content.copy()
    store_after_first = stored_blocks(server)

    # Change 1% of the written blocks: 4 KiB inside one mid-run block and inside the last block.
    changed_blocks = {300 * MIB // BLOCK_SIZE + 30, last}
    for index in changed_blocks:
        files.write(content, index * BLOCK_SIZE + 64 * 1024, rng.randbytes(4096))
    second_snapshot = snapshot(ec2, volume_id)
    store_after_second = stored_blocks(server)

    return Incremental(
        server=server,
        first=first,
        second=content,
        explicit_zero_blocks=explicit_zero_blocks,
        changed_blocks=changed_blocks,
        first_snapshot=first_snapshot,
        second_snapshot=second_snapshot,
        store_after_first=store_after_first,
        store_after_second=store_after_second,
        first_restore=volume_files(server, restore(ec2, first_snapshot)),
        second_restore=volume_files(server, restore(ec2, second_snapshot)),
    )


def test_restore_of_each_snapshot_is_byte_identical_to_the_volume_at_its_moment(
    incremental: Incremental,
) -> None:
    first = incremental.first_restore.read()
    second = incremental.second_restore.read()
    assert first.size == second.size == 2 * GIB
    assert first.blocks == incremental.first.nonzero()
    assert second.blocks == incremental.second.nonzero()
    assert first.blocks != second.blocks  # the two moments differ, and each restore kept its own


def test_manifest_lists_every_nonzero_block_by_its_sha256(incremental: Incremental) -> None:
    server = incremental.server
    for snapshot_id, content in (
        (incremental.first_snapshot, incremental.first),
        (incremental.second_snapshot, incremental.second),
    ):
        expected = {index: digest(block) for index, block in content.nonzero().items()}
        assert manifest(server, snapshot_id) == expected


def test_first_snapshot_stores_each_nonzero_block_once(incremental: Incremental) -> None:
    expected = {digest(b) for b in incremental.first.nonzero().values()}
    assert len(expected) == 200
    assert set(incremental.store_after_first) == expected
    assert sum(incremental.store_after_first.values()) == 200 * BLOCK_SIZE


def test_second_snapshot_adds_only_the_changed_blocks_to_the_store(
    incremental: Incremental,
) -> None:
    before, after = incremental.store_after_first, incremental.store_after_second
    added = set(after) - set(before)
    changed = {digest(incremental.second.blocks[i]) for i in incremental.changed_blocks}
    assert added == changed
    assert set(before) <= set(after)  # the first snapshot still holds its old versions
    assert len(after) == len(before) + 2
    assert sum(after.values()) - sum(before.values()) == 2 * BLOCK_SIZE
    first = manifest(incremental.server, incremental.first_snapshot)
    second = manifest(incremental.server, incremental.second_snapshot)
    assert len(first) == len(second) == 200
    assert {i for i in second if second[i] != first[i]} == incremental.changed_blocks
    assert set(after) == set(first.values()) | set(second.values())


def test_restored_volume_keeps_holes_as_holes(incremental: Incremental) -> None:
    for restored, content in (
        (incremental.first_restore, incremental.first),
        (incremental.second_restore, incremental.second),
    ):
        data_blocks = set(content.nonzero())
        assert restored.block_extents() == spans_of(data_blocks)
        # The data blocks plus at most a few filesystem metadata blocks (an extent tree);
        # nowhere near the 2 GiB the volume is long.
        data_bytes = len(data_blocks) * BLOCK_SIZE
        assert data_bytes <= restored.allocated_bytes() <= data_bytes + 64 * 1024


def test_explicitly_written_zero_blocks_are_not_stored_nor_restored(
    incremental: Incremental,
) -> None:
    zeros = incremental.explicit_zero_blocks
    assert all(incremental.second.blocks[i] == ZERO_BLOCK for i in zeros)
    assert ZERO_DIGEST not in incremental.store_after_second
    for snapshot_id in (incremental.first_snapshot, incremental.second_snapshot):
        assert not zeros & set(manifest(incremental.server, snapshot_id))
    extents = incremental.second_restore.block_extents()
    restored = {i for start, end in extents for i in range(start, end)}
    assert not zeros & restored  # written as zeros in the source, holes in the restore


# ---- 2. point in time --------------------------------------------------------------------


def test_bytes_written_after_create_snapshot_returns_are_not_in_the_snapshot(
    server: ServerProcess, ec2: Any
) -> None:
    rng = random.Random(0x5EED2)
    volume_id = new_volume(ec2, 1)
    files = volume_files(server, volume_id)
    content = Content(GIB)
    # Enough data (384 MiB) that the capture is still reading it when the few blocks below
    # are overwritten, on a fast disk too (the overwrite is 2.5 MiB, the capture hundreds).
    for start in range(8 * MIB, 392 * MIB, 96 * MIB):
        files.write(content, start, random_blocks(rng, 192))
    files.write(content, GIB - BLOCK_SIZE, random_blocks(rng, 1))
    at_snapshot = content.copy()
    overwrite = [
        (GIB - BLOCK_SIZE, random_blocks(rng, 1)),  # the block the capture reaches last
        (8 * MIB, random_blocks(rng, 2)),  # the first it reaches
        (768 * MIB, random_blocks(rng, 2)),  # into a hole
    ]

    snapshot_id = ec2.create_snapshot(VolumeId=volume_id)["SnapshotId"]
    for offset, data in overwrite:
        files.write(content, offset, data)
    state = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]["State"]
    assert state == "pending", "the capture ended before the volume was overwritten"

    completed(ec2, snapshot_id)
    restored = volume_files(server, restore(ec2, snapshot_id)).read()
    assert restored == Content(GIB, at_snapshot.nonzero())
    assert files.read() == Content(GIB, content.nonzero())  # the volume did change


# ---- 3. corrupt blocks -------------------------------------------------------------------


def test_corrupt_stored_block_fails_the_restore_and_removes_the_partial_volume(
    fresh_server: ServerProcess,
) -> None:
    ec2 = fresh_server.client()
    rng = random.Random(0x5EED3)
    volume_id = new_volume(ec2, 1)
    files = volume_files(fresh_server, volume_id)
    content = Content(GIB)
    files.write(content, 0, random_blocks(rng, 16))
    snapshot_id = snapshot(ec2, volume_id)

    # Flip one byte in the block restored last, so the restore writes data before it finds it.
    rows = manifest(fresh_server, snapshot_id)
    victim = block_path(fresh_server, rows[max(rows)])
    flipped = bytearray(victim.read_bytes())
    flipped[BLOCK_SIZE // 2] ^= 0x01
    victim.write_bytes(bytes(flipped))

    restored_id = ec2.create_volume(AvailabilityZone=ZONE, SnapshotId=snapshot_id)["VolumeId"]
    assert settled_volume(ec2, restored_id) == "error"
    assert not volume_files(fresh_server, restored_id).directory.exists()
    snap = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
    assert snap["State"] == "completed"  # the snapshot itself is unchanged
    log = fresh_server.log_path.read_text()
    assert f"block {rows[max(rows)]}" in log and "corrupt" in log


# ---- 4. deletion and block garbage collection --------------------------------------------


def test_deleting_a_snapshot_frees_only_blocks_no_other_snapshot_uses(
    fresh_server: ServerProcess,
) -> None:
    server, ec2 = fresh_server, fresh_server.client()
    rng = random.Random(0x5EED4)
    volume_id = new_volume(ec2, 1)
    files = volume_files(server, volume_id)
    content = Content(GIB)
    files.write(content, 0, random_blocks(rng, 8))
    files.write(content, 600 * MIB, random_blocks(rng, 8))
    older = snapshot(ec2, volume_id)
    older_content = content.copy()
    files.write(content, 600 * MIB, random_blocks(rng, 4))  # 4 of 16 blocks change
    newer = snapshot(ec2, volume_id)

    older_rows, newer_rows = manifest(server, older), manifest(server, newer)
    shared = set(older_rows.values()) & set(newer_rows.values())
    only_older = set(older_rows.values()) - shared
    only_newer = set(newer_rows.values()) - shared
    assert (len(shared), len(only_older), len(only_newer)) == (12, 4, 4)
    assert set(stored_blocks(server)) == shared | only_older | only_newer

    delete_snapshot(server, ec2, older)
    assert manifest(server, older) == {}
    assert set(stored_blocks(server)) == shared | only_newer
    restored = volume_files(server, restore(ec2, newer)).read()
    assert restored == Content(GIB, content.nonzero())
    assert restored != Content(GIB, older_content.nonzero())

    delete_snapshot(server, ec2, newer)
    assert stored_blocks(server) == {}
    assert server.rows("SELECT COUNT(*) FROM snapshot_blocks") == [(0,)]


def test_snapshots_restore_after_their_source_volume_is_deleted(
    server: ServerProcess, ec2: Any
) -> None:
    rng = random.Random(0x5EED5)
    volume_id = new_volume(ec2, 1)
    files = volume_files(server, volume_id)
    content = Content(GIB)
    files.write(content, 100 * MIB, random_blocks(rng, 8))
    snapshot_id = snapshot(ec2, volume_id)

    ec2.delete_volume(VolumeId=volume_id)
    poll(f"volume {volume_id} deleted", lambda: not files.directory.exists() or None)

    restored = volume_files(server, restore(ec2, snapshot_id)).read()
    assert restored == Content(GIB, content.nonzero())


# ---- 5. the largest volume ---------------------------------------------------------------


def test_16_tib_sc1_volume_with_data_at_both_ends_snapshots_and_restores_reading_only_data(
    server: ServerProcess, ec2: Any
) -> None:
    rng = random.Random(0x5EED6)
    size = 16384 * GIB
    volume_id = new_volume(ec2, 16384, "sc1")
    files = volume_files(server, volume_id)
    content = Content(size)
    files.write(content, 0, random_blocks(rng, 4))
    files.write(content, size - 4 * BLOCK_SIZE - 4096, rng.randbytes(4 * BLOCK_SIZE + 4096))

    began = time.monotonic()
    snapshot_id = snapshot(ec2, volume_id)
    # Reading 16 TiB would take hours: finishing in seconds shows only data extents are read.
    assert time.monotonic() - began < 20
    assert set(manifest(server, snapshot_id)) == set(content.nonzero())

    restored = volume_files(server, restore(ec2, snapshot_id))
    assert len(restored.segments) == len(files.segments)
    assert restored.read() == Content(size, content.nonzero())
    assert restored.block_extents() == spans_of(set(content.nonzero()))


# ---- 6. restart --------------------------------------------------------------------------


def test_snapshot_completed_before_a_restart_restores_byte_identical_after_it(
    fresh_server: ServerProcess,
) -> None:
    ec2 = fresh_server.client()
    rng = random.Random(0x5EED7)
    volume_id = new_volume(ec2, 1)
    files = volume_files(fresh_server, volume_id)
    content = Content(GIB)
    files.write(content, 3 * MIB, random_blocks(rng, 10))
    files.write(content, GIB - 2 * BLOCK_SIZE, random_blocks(rng, 2))
    snapshot_id = snapshot(ec2, volume_id)

    fresh_server.restart()
    ec2 = fresh_server.client()
    assert completed(ec2, snapshot_id)["VolumeSize"] == 1
    restored = volume_files(fresh_server, restore(ec2, snapshot_id)).read()
    assert restored == Content(GIB, content.nonzero())


def test_deleting_a_snapshot_while_it_is_captured_leaves_no_block_behind_and_no_damage(
    fresh_server: ServerProcess,
) -> None:
    server, ec2 = fresh_server, fresh_server.client()
    rng = random.Random(0x5EED8)
    volume_id = new_volume(ec2, 1)
    content = Content(GIB)
    volume_files(server, volume_id).write(content, 0, random_blocks(rng, 256))

    snapshot_id = ec2.create_snapshot(VolumeId=volume_id)["SnapshotId"]
    # Delete while the first batch of blocks is being put.
    packed = partial(block_support.packed_bytes, server.data_dir / "blocks")
    poll("capture stores its first blocks", lambda: packed() or None, interval=0.002)
    delete_snapshot(server, ec2, snapshot_id)
    assert stored_blocks(server) == {}

    # The server is none the worse: a new snapshot stores exactly its own blocks.
    again = snapshot(ec2, volume_id)
    assert set(stored_blocks(server)) == set(manifest(server, again).values())
    assert len(manifest(server, again)) == 256
