"""The file backend's freeze against an earlier snapshot's digests, on real files: the view holds
the blocks whose bytes differ and nothing else, across segments, and reads back as those
changes only; where no block differs, no view is made; a damaged list of changes is refused,
not read as another snapshot."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends import sparse
from backends.base import BlockDigests, DigestFreezer, SeededChangesSource
from backends.errors import BackendError
from backends.file import FileStorage
from backends.file_digests import CHANGED_NAME
from ebsemu.model import BLOCK_SIZE
from tests.fs_fixtures import mounted, xfs_reflink_at

MIB = 1024**2
ZEROS = bytes(BLOCK_SIZE)
VOLUME = "vol-0123456789abcdef0"


@pytest.fixture
def storage(tmp_path: Path) -> FileStorage:
    """Four blocks a segment file: a 16-block volume spans four segments."""
    return FileStorage(tmp_path, segment_bytes=4 * BLOCK_SIZE)


def _digests(blocks: dict[int, bytes]) -> dict[int, bytes]:
    return {index: hashlib.sha256(data).digest() for index, data in blocks.items()}


def _punch(storage_root: Path, index: int) -> None:
    segment, local = divmod(index, 4)
    path = storage_root / "volumes" / VOLUME / f"seg-{segment:04d}"
    fd = os.open(path, os.O_WRONLY)
    try:
        sparse.punch_hole(fd, local * BLOCK_SIZE, BLOCK_SIZE)
    finally:
        os.close(fd)


def _view_files(root: Path, view_id: str) -> list[Path]:
    return sorted((root / "views" / view_id).glob("seg-*"))


def _frozen(storage: FileStorage, root: Path) -> tuple[dict[int, bytes], dict[int, bytes]]:
    """A volume of 16 blocks frozen against the digests of what it held before four changes
    and a rewrite of the same bytes: (the changes, the blocks it held before)."""
    before = {index: os.urandom(BLOCK_SIZE) for index in (0, 3, 5, 9, 14)}
    asyncio.run(storage.create(VOLUME, 16 * BLOCK_SIZE))
    storage.write_blocks(VOLUME, before.items())
    changes = {3: os.urandom(BLOCK_SIZE), 5: ZEROS, 12: os.urandom(BLOCK_SIZE), 9: ZEROS}
    storage.write_blocks(VOLUME, [(3, changes[3]), (5, ZEROS), (12, changes[12])])
    storage.write_blocks(VOLUME, [(14, before[14])])  # the same bytes again: not a change
    _punch(root, 9)
    base = BlockDigests("snap-0000000000000000a", _digests(before))
    assert asyncio.run(storage.freeze_changes(VOLUME, "snap-0000000000000000b", base))
    return changes, before


def test_the_view_holds_only_the_blocks_whose_bytes_differ(
    storage: FileStorage, tmp_path: Path
) -> None:
    changes, _ = _frozen(storage, tmp_path)

    view = storage.open_view("snap-0000000000000000b")
    try:
        assert isinstance(view, SeededChangesSource)
        assert view.seeded_from == "snap-0000000000000000a"
        assert list(view.changed_blocks()) == sorted(changes.items())
        with pytest.raises(BackendError, match="only the blocks changed since"):
            next(view.iter_blocks(0))
    finally:
        view.close()
    files = _view_files(tmp_path, "snap-0000000000000000b")
    assert len(files) == 4
    allocated = sum(path.stat().st_blocks * 512 for path in files)
    assert allocated == 2 * BLOCK_SIZE  # blocks 3 and 12: the zeroed ones stay holes


def test_freezing_again_keeps_the_view(storage: FileStorage, tmp_path: Path) -> None:
    changes, before = _frozen(storage, tmp_path)
    storage.write_blocks(VOLUME, [(0, os.urandom(BLOCK_SIZE))])
    base = BlockDigests("snap-0000000000000000a", _digests(before))
    assert asyncio.run(storage.freeze_changes(VOLUME, "snap-0000000000000000b", base))

    view = storage.open_view("snap-0000000000000000b")
    try:
        assert isinstance(view, SeededChangesSource)
        assert [index for index, _ in view.changed_blocks()] == sorted(changes)
    finally:
        view.close()


def test_a_volume_where_no_block_differs_gets_no_view(storage: FileStorage, tmp_path: Path) -> None:
    held = {index: os.urandom(BLOCK_SIZE) for index in (0, 6, 13)}
    asyncio.run(storage.create(VOLUME, 16 * BLOCK_SIZE))
    storage.write_blocks(VOLUME, [*held.items(), (9, ZEROS)])  # zeros, as the base has none
    storage.write_blocks(VOLUME, [(6, held[6])])  # the same bytes again
    base = BlockDigests("snap-0000000000000000a", _digests(held))

    assert not asyncio.run(storage.freeze_changes(VOLUME, "snap-0000000000000000b", base))
    assert asyncio.run(storage.list_views()) == []
    assert list((tmp_path / "views").iterdir()) == []  # no staging left either

    storage.write_blocks(VOLUME, [(13, os.urandom(BLOCK_SIZE))])
    assert asyncio.run(storage.freeze_changes(VOLUME, "snap-0000000000000000c", base))
    view = storage.open_view("snap-0000000000000000c")
    try:
        assert isinstance(view, SeededChangesSource)
        assert [index for index, _ in view.changed_blocks()] == [13]
    finally:
        view.close()


@pytest.mark.parametrize(
    "damage",
    [
        b"\x01" * 7,
        (5).to_bytes(8, "little") + (3).to_bytes(8, "little"),
        (16).to_bytes(8, "little"),
    ],
    ids=["torn", "out-of-order", "beyond-the-volume"],
)
def test_a_damaged_list_of_changes_is_refused(
    storage: FileStorage, tmp_path: Path, damage: bytes
) -> None:
    _frozen(storage, tmp_path)
    (tmp_path / "views" / "snap-0000000000000000b" / CHANGED_NAME).write_bytes(damage)
    with pytest.raises(BackendError):
        storage.open_view("snap-0000000000000000b")


def test_a_copied_view_is_read_whole(storage: FileStorage) -> None:
    asyncio.run(storage.create(VOLUME, 16 * BLOCK_SIZE))
    data = os.urandom(BLOCK_SIZE)
    storage.write_blocks(VOLUME, [(6, data)])
    asyncio.run(storage.freeze(VOLUME, "snap-0000000000000000c"))
    view = storage.open_view("snap-0000000000000000c")
    try:
        assert not isinstance(view, SeededChangesSource)
        assert list(view.iter_blocks(0)) == [(6, data)]
    finally:
        view.close()


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    target = tmp_path / "tmpfs"
    with mounted(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(target)], target):
        yield target


def test_only_a_filesystem_without_reflink_freezes_by_copy(tmpfs: Path, tmp_path: Path) -> None:
    on_tmpfs = FileStorage(tmpfs)
    assert isinstance(on_tmpfs, DigestFreezer)
    assert asyncio.run(on_tmpfs.freezes_by_copy())
    with xfs_reflink_at(tmp_path, 320 * MIB) as xfs:
        assert not asyncio.run(FileStorage(xfs).freezes_by_copy())
    assert not [path for path in tmpfs.rglob("*") if path.name.startswith(".probe-")]


def test_digests_past_the_end_of_the_volume_are_refused(storage: FileStorage) -> None:
    asyncio.run(storage.create(VOLUME, 16 * BLOCK_SIZE))
    base = BlockDigests("snap-0000000000000000a", {16: hashlib.sha256(ZEROS).digest()})
    with pytest.raises(BackendError, match="past the volume's end"):
        asyncio.run(storage.freeze_changes(VOLUME, "snap-0000000000000000b", base))
    assert asyncio.run(storage.list_views()) == []
