"""A restore into a file-backend volume, on real filesystems: where the block store's packs and
the volume are on one XFS with reflink, the volume shares the packs' extents (runs of adjacent
blocks in one call) and keeps its bytes when the blocks are deleted from the store; where the
filesystem cannot share, the same bytes are written, and the device is not tried again."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends import sparse
from backends.base import LocatedBlock
from backends.blockstore import LocalBlockStore
from backends.file import FileStorage
from ebsemu.model import BLOCK_SIZE
from tests.file_snapshot_support import shared_bytes
from tests.fs_fixtures import xfs_at

GIB = 1024**3
VOLUME = "vol-0123456789abcdef0"
VOLUME_BLOCKS = 160


@pytest.fixture
def xfs(tmp_path: Path) -> Iterator[Path]:
    with xfs_at(tmp_path, GIB, reflink=True) as mounted:
        yield mounted


@pytest.fixture
def xfs_without_reflink(tmp_path: Path) -> Iterator[Path]:
    with xfs_at(tmp_path, GIB, reflink=False) as mounted:
        yield mounted


class CountedClones:
    """Counts the FICLONERANGE calls made, and makes them."""

    def __init__(self) -> None:
        self.calls = 0
        self._clone_range = sparse.clone_range

    def __call__(self, src: int, src_offset: int, length: int, dst: int, dst_offset: int) -> None:
        self.calls += 1
        self._clone_range(src, src_offset, length, dst, dst_offset)


@pytest.fixture
def clones(monkeypatch: pytest.MonkeyPatch) -> CountedClones:
    counted = CountedClones()
    monkeypatch.setattr(sparse, "clone_range", counted)
    return counted


def _stored(store: LocalBlockStore, indexes: list[int]) -> dict[int, bytes]:
    """Random blocks put into the store in the order given (so its packs hold them in that
    order), flushed: {block index: digest}."""
    digests: dict[int, bytes] = {}
    for index in indexes:
        data = os.urandom(BLOCK_SIZE)
        digests[index] = hashlib.sha256(data).digest()
        store.put(digests[index], data)
    store.flush()
    return digests


def _restore(storage: FileStorage, store: LocalBlockStore, digests: dict[int, bytes]) -> None:
    """What a restore does: each block read and verified, then written or shared."""

    def located() -> Iterator[LocatedBlock]:
        for index in sorted(digests):
            data, where = store.get_located(digests[index])
            yield index, data, where

    storage.write_located_blocks(VOLUME, located())


def _volume_file(root: Path, segment: int = 0) -> Path:
    return root / "storage" / "volumes" / VOLUME / f"seg-{segment:04d}"


def _check_bytes(root: Path, digests: dict[int, bytes], per_segment: int = VOLUME_BLOCKS) -> None:
    """Every block restored holds its bytes; every other block is a hole."""
    for index in range(VOLUME_BLOCKS):
        segment, local = divmod(index, per_segment)
        fd = os.open(_volume_file(root, segment), os.O_RDONLY)
        try:
            offset = local * BLOCK_SIZE
            if index in digests:
                data = os.pread(fd, BLOCK_SIZE, offset)
                assert hashlib.sha256(data).digest() == digests[index], f"block {index}"
            else:
                assert sparse.is_hole(fd, offset, BLOCK_SIZE), f"block {index} is not a hole"
        finally:
            os.close(fd)


@contextlib.contextmanager
def _block_store(root: Path) -> Iterator[LocalBlockStore]:
    """The store, closed at the end (it holds its packs open: the filesystem can then go)."""
    store = LocalBlockStore(root)
    try:
        yield store
    finally:
        store.close()


@contextlib.contextmanager
def _setup(
    root: Path, segment_bytes: int | None = None
) -> Iterator[tuple[FileStorage, LocalBlockStore]]:
    storage = FileStorage(root / "storage", segment_bytes)
    asyncio.run(storage.create(VOLUME, VOLUME_BLOCKS * BLOCK_SIZE))
    with _block_store(root / "blocks") as store:
        yield storage, store


def _logged_counts(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "sharing the extents" in r.getMessage()]


def test_on_xfs_with_reflink_the_volume_shares_the_packs_extents_in_runs(
    xfs: Path, clones: CountedClones, caplog: pytest.LogCaptureFixture
) -> None:
    with _setup(xfs) as (storage, store), caplog.at_level(logging.INFO, "backends.file"):
        # 0-129 adjacent in the volume and in the pack: runs of 64, 64 and 2. Then 140-149
        # put in reverse order: adjacent in the volume, not in the pack, so one call each.
        digests = _stored(store, list(range(130)) + list(range(149, 139, -1)))

        _restore(storage, store, digests)

    assert clones.calls == 3 + 10
    assert _logged_counts(caplog) == [
        f"volume {VOLUME}: 0 blocks written, 140 sharing the extents that held them"
    ]
    _check_bytes(xfs, digests)
    assert shared_bytes(_volume_file(xfs)) == len(digests) * BLOCK_SIZE


def test_runs_end_at_a_segments_end(xfs: Path, clones: CountedClones) -> None:
    per_segment = 80
    with _setup(xfs, per_segment * BLOCK_SIZE) as (storage, store):
        digests = _stored(store, list(range(100)))  # back to back in the pack

        _restore(storage, store, digests)

    assert clones.calls == 3  # 0-63 (64 at most), 64-79 (the first segment's end), 80-99
    _check_bytes(xfs, digests, per_segment)
    assert shared_bytes(_volume_file(xfs, 0)) == 80 * BLOCK_SIZE
    assert shared_bytes(_volume_file(xfs, 1)) == 20 * BLOCK_SIZE


def test_a_shared_volume_keeps_its_bytes_when_the_store_deletes_its_blocks(
    xfs: Path, clones: CountedClones
) -> None:
    with _setup(xfs) as (storage, store):
        digests = _stored(store, list(range(0, 100, 3)))
        _restore(storage, store, digests)
        assert clones.calls > 0

        store.delete_many(list(digests.values()))
        assert store.stored_bytes() == 0

    _check_bytes(xfs, digests)  # the blocks' bytes are in the volume alone now


def test_without_reflink_the_bytes_are_written_and_the_device_is_not_tried_again(
    xfs_without_reflink: Path, clones: CountedClones, caplog: pytest.LogCaptureFixture
) -> None:
    root = xfs_without_reflink
    with _setup(root) as (storage, store), caplog.at_level(logging.INFO, "backends"):
        digests = _stored(store, [*range(70), 100, 90, 80])

        _restore(storage, store, digests)
        _check_bytes(root, digests)
        assert clones.calls == 1  # the first run was refused: every later block was written
        refused = [r for r in caplog.records if "written, not shared" in r.getMessage()]
        assert len(refused) == 1, caplog.text

        asyncio.run(storage.delete(VOLUME))
        asyncio.run(storage.create(VOLUME, VOLUME_BLOCKS * BLOCK_SIZE))
        _restore(storage, store, digests)
    _check_bytes(root, digests)
    assert clones.calls == 1  # the next restore did not try
    assert _logged_counts(caplog) == 2 * [
        f"volume {VOLUME}: 73 blocks written, 0 sharing the extents that held them"
    ]


def test_a_volume_on_another_filesystem_than_the_store_gets_the_bytes_written(
    xfs: Path, tmp_path: Path, clones: CountedClones
) -> None:
    storage = FileStorage(xfs / "storage")
    asyncio.run(storage.create(VOLUME, VOLUME_BLOCKS * BLOCK_SIZE))
    with _block_store(tmp_path / "blocks") as store:  # not on the XFS filesystem
        digests = _stored(store, list(range(5)))
        _restore(storage, store, digests)

    _check_bytes(xfs, digests)
    assert clones.calls == 1
    assert shared_bytes(_volume_file(xfs)) == 0


def test_a_source_file_that_cannot_be_opened_leaves_its_blocks_written(
    xfs: Path, clones: CountedClones
) -> None:
    storage = FileStorage(xfs / "storage")
    asyncio.run(storage.create(VOLUME, VOLUME_BLOCKS * BLOCK_SIZE))
    blocks = {index: os.urandom(BLOCK_SIZE) for index in (1, 2, 7)}
    gone = str(xfs / "no-such-pack")

    storage.write_located_blocks(
        VOLUME, [(index, data, (gone, index * BLOCK_SIZE)) for index, data in blocks.items()]
    )

    digests = {index: hashlib.sha256(data).digest() for index, data in blocks.items()}
    _check_bytes(xfs, digests)
    assert clones.calls == 0


def test_a_fifo_or_an_unaligned_range_gets_its_block_written_and_sharing_goes_on(
    xfs: Path, clones: CountedClones
) -> None:
    fifo = xfs / "fifo"
    os.mkfifo(fifo)  # opened as a source, it must not wait for a writer
    with _setup(xfs) as (storage, store):
        digests = _stored(store, [0, 1, 2])
        located = [(index, *store.get_located(digests[index])) for index in (0, 1, 2)]
        unaligned = (located[1][2][0], located[1][2][1] + 512)  # FICLONERANGE: EINVAL
        blocks = {3: os.urandom(BLOCK_SIZE), 4: os.urandom(BLOCK_SIZE)}
        digests |= {index: hashlib.sha256(data).digest() for index, data in blocks.items()}

        storage.write_located_blocks(
            VOLUME,
            [
                (3, blocks[3], (str(fifo), 0)),
                (1, located[1][1], unaligned),  # out of order: a run of its own
                located[0],
                (4, blocks[4], (str(fifo), 0)),
                located[2],
            ],
        )

    _check_bytes(xfs, digests)
    assert clones.calls == 3  # the unaligned range, then 0 and 2, shared
    assert shared_bytes(_volume_file(xfs)) == 2 * BLOCK_SIZE
