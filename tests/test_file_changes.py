"""The file backend's changed-block tracking on real filesystems: a captured view kept as its
volume's base (XFS with reflink), the next view's changed blocks found from the extent maps
(FIEMAP), the base's lifecycle, and no base where the freeze copies (ext4)."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import pytest

from backends import sparse
from backends.base import ChangedBlocksSource, ViewKeeper
from backends.file import FileStorage, FileView
from backends.file_changes import UNSURE, ChangedFileView, block_maps, changed_in
from backends.luks import LuksFormatter
from ebsemu.model import BLOCK_SIZE
from hostcmds import LocalRunner, load_templates
from tests.test_file_storage import xfs_reflink

__all__ = ["xfs_reflink"]

MIB = 1024**2
VOLUME_BLOCKS = 512  # 256 MiB


def _segment(root: Path, volume_id: str) -> Path:
    return root / "volumes" / volume_id / "seg-0000"


def _write(root: Path, volume_id: str, writes: dict[int, bytes], *, at: int = 0) -> None:
    """Write each piece at offset ``at`` of its block straight into the volume's file, as a
    guest would (no fsync: the freeze must see the writes anyway)."""
    fd = os.open(_segment(root, volume_id), os.O_WRONLY)
    try:
        for index, data in writes.items():
            sparse.pwrite_all(fd, data, index * BLOCK_SIZE + at)
    finally:
        os.close(fd)


def _volume_blocks(root: Path, volume_id: str, indexes: list[int]) -> dict[int, bytes]:
    with _segment(root, volume_id).open("rb") as handle:
        out = {}
        for index in indexes:
            handle.seek(index * BLOCK_SIZE)
            out[index] = handle.read(BLOCK_SIZE)
        return out


def _filled(root: Path) -> FileStorage:
    """A file storage with vol-a: its first 3/4 full of distinct data, the rest holes; frozen
    as snap-1, which is kept as its base."""
    storage = FileStorage(root)
    asyncio.run(storage.check_setup())
    asyncio.run(storage.create("vol-a", VOLUME_BLOCKS * BLOCK_SIZE))
    seed = os.urandom(BLOCK_SIZE)
    data = {i: i.to_bytes(8, "big") + seed[8:] for i in range(VOLUME_BLOCKS * 3 // 4)}
    storage.write_blocks("vol-a", data.items())
    asyncio.run(storage.freeze("vol-a", "snap-1"))
    asyncio.run(storage.keep_view("snap-1"))
    return storage


def _changes(storage: FileStorage, view_id: str) -> tuple[str | None, dict[int, bytes]]:
    with storage.open_view(view_id) as view:
        assert isinstance(view, ChangedBlocksSource)
        pairs = list(view.changed_blocks())
        base = view.base_view_id
    indexes = [i for i, _ in pairs]
    assert indexes == sorted(set(indexes)), "not in strict index order"
    return base, dict(pairs)


def test_changed_blocks_after_a_freeze_are_exactly_the_blocks_written_since(
    xfs_reflink: Path,
) -> None:
    root = xfs_reflink / "data"
    storage = _filled(root)
    assert isinstance(storage, ViewKeeper)
    rng = random.Random(3)
    changed = sorted(rng.sample(range(VOLUME_BLOCKS), VOLUME_BLOCKS // 100 + 1))
    # whole blocks in the data and in the holes, and 4 KiB in the middle of one more block
    _write(root, "vol-a", {i: os.urandom(BLOCK_SIZE) for i in changed})
    partial = next(i for i in range(100, VOLUME_BLOCKS) if i not in changed)
    _write(root, "vol-a", {partial: os.urandom(4096)}, at=64 * 1024)
    asyncio.run(storage.freeze("vol-a", "snap-2"))

    base, got = _changes(storage, "snap-2")

    expected = sorted([*changed, partial])
    assert base == "snap-1"
    assert sorted(got) == expected
    assert got == _volume_blocks(root, "vol-a", expected)


def test_unchanged_volume_has_no_changed_blocks_and_reads_whole_without_a_base(
    xfs_reflink: Path,
) -> None:
    root = xfs_reflink / "data"
    storage = _filled(root)
    asyncio.run(storage.freeze("vol-a", "snap-2"))
    assert _changes(storage, "snap-2") == ("snap-1", {})
    with storage.open_view("snap-2") as view:  # the whole view is still there to read
        assert len(list(view.iter_blocks())) == VOLUME_BLOCKS * 3 // 4


def test_blocks_past_the_end_of_the_base_are_changed_when_they_hold_data(
    xfs_reflink: Path,
) -> None:
    root = xfs_reflink / "data"
    storage = _filled(root)
    asyncio.run(storage.extend("vol-a", 2 * VOLUME_BLOCKS * BLOCK_SIZE))
    written = {VOLUME_BLOCKS + 7: os.urandom(BLOCK_SIZE), 3: os.urandom(BLOCK_SIZE)}
    _write(root, "vol-a", written)
    asyncio.run(storage.freeze("vol-a", "snap-2"))
    assert _changes(storage, "snap-2") == ("snap-1", written)


def test_a_block_that_became_a_hole_comes_as_zeros(xfs_reflink: Path) -> None:
    root = xfs_reflink / "data"
    storage = _filled(root)
    # Make a fresh volume file: block 5 is now a hole, the others keep their extents.
    volume = _segment(root, "vol-a")
    fd = os.open(volume, os.O_RDWR)
    try:
        punched = os.open(volume.with_name("punched"), os.O_WRONLY | os.O_CREAT, 0o600)
        os.ftruncate(punched, VOLUME_BLOCKS * BLOCK_SIZE)
        sparse.copy_range(fd, punched, 0, 5 * BLOCK_SIZE)
        rest = 6 * BLOCK_SIZE
        sparse.copy_range(fd, punched, rest, VOLUME_BLOCKS * 3 // 4 * BLOCK_SIZE - rest)
        os.fsync(punched)
        os.close(punched)
    finally:
        os.close(fd)
    os.replace(volume.with_name("punched"), volume)
    asyncio.run(storage.freeze("vol-a", "snap-2"))
    base, got = _changes(storage, "snap-2")
    # copy_file_range on XFS shares the extents it copies (a reflink), so only block 5
    # differs; a filesystem that copied the bytes would report the copied blocks as well
    assert base == "snap-1"
    assert got[5] == bytes(BLOCK_SIZE)
    assert all(data == _volume_blocks(root, "vol-a", [i])[i] for i, data in got.items())


def test_a_base_dropped_while_the_next_view_reads_against_it_stays_readable(
    xfs_reflink: Path,
) -> None:
    root = xfs_reflink / "data"
    storage = _filled(root)
    written = {2: os.urandom(BLOCK_SIZE), 400: os.urandom(BLOCK_SIZE)}
    _write(root, "vol-a", written)
    asyncio.run(storage.freeze("vol-a", "snap-2"))
    with storage.open_view("snap-2") as view:
        assert isinstance(view, ChangedFileView)
        asyncio.run(storage.drop_view("snap-1"))  # its snapshot is deleted meanwhile
        assert list((root / "bases").iterdir()) == []
        assert dict(view.changed_blocks()) == written
    # with no base left, the next view reads whole
    asyncio.run(storage.freeze("vol-a", "snap-3"))
    with storage.open_view("snap-3") as view:
        assert not isinstance(view, ChangedBlocksSource)


def test_one_base_per_volume_replaced_by_newer_views_only(xfs_reflink: Path) -> None:
    root = xfs_reflink / "data"
    storage = _filled(root)
    asyncio.run(storage.freeze("vol-a", "snap-2"))
    asyncio.run(storage.freeze("vol-a", "snap-3"))
    asyncio.run(storage.keep_view("snap-3"))
    assert sorted(p.name for p in (root / "bases").iterdir()) == ["vol-a@snap-3"]
    asyncio.run(storage.keep_view("snap-2"))  # older than the base: dropped
    assert sorted(p.name for p in (root / "bases").iterdir()) == ["vol-a@snap-3"]
    asyncio.run(storage.keep_view("snap-3"))  # again: idempotent
    assert asyncio.run(storage.list_views()) == []  # bases are not views
    asyncio.run(storage.freeze("vol-a", "snap-4"))
    assert _changes(storage, "snap-4") == ("snap-3", {})


def test_deleting_the_volume_removes_its_base_and_start_up_collects_strays(
    xfs_reflink: Path,
) -> None:
    root = xfs_reflink / "data"
    storage = _filled(root)
    asyncio.run(storage.create("vol-b", MIB))
    asyncio.run(storage.freeze("vol-b", "snap-b"))
    asyncio.run(storage.keep_view("snap-b"))
    asyncio.run(storage.delete("vol-a"))
    assert sorted(p.name for p in (root / "bases").iterdir()) == ["vol-b@snap-b"]

    # a base whose volume went while the server was down, and a second base of vol-b
    (root / "bases" / "vol-b@snap-b").rename(root / "bases" / "vol-gone@snap-b")
    asyncio.run(storage.create("vol-a", MIB))
    for view_id in ("snap-c", "snap-d"):
        asyncio.run(storage.freeze("vol-b", view_id))
        os.rename(root / "views" / view_id, root / "bases" / f"vol-b@{view_id}")
    asyncio.run(FileStorage(root).check_setup())
    assert sorted(p.name for p in (root / "bases").iterdir()) == ["vol-b@snap-d"]


def test_an_encrypted_volume_takes_the_same_path_its_ciphertext_compared(
    xfs_reflink: Path,
) -> None:
    root = xfs_reflink / "data"
    storage = FileStorage(root, luks_formatter=LuksFormatter(LocalRunner(), load_templates()))
    asyncio.run(storage.check_setup())
    if storage.encryption_unavailable() is not None:
        pytest.skip(f"needs qemu-img to format LUKS images: {storage.encryption_unavailable()}")
    asyncio.run(storage.create_encrypted("vol-e", 64 * MIB, "a passphrase of the test"))
    asyncio.run(storage.freeze("vol-e", "snap-1"))
    asyncio.run(storage.keep_view("snap-1"))
    written = {10: os.urandom(BLOCK_SIZE)}  # as the VMM writes ciphertext into the file
    _write(root, "vol-e", written)
    asyncio.run(storage.freeze("vol-e", "snap-2"))
    assert _changes(storage, "snap-2") == ("snap-1", written)


def test_views_on_a_copying_filesystem_are_never_kept(tmp_path: Path) -> None:
    if _reflinks(tmp_path):
        pytest.skip(f"{tmp_path} supports reflink; this test needs a copying filesystem (ext4)")
    storage = FileStorage(tmp_path / "data")
    asyncio.run(storage.check_setup())
    asyncio.run(storage.create("vol-a", 4 * MIB))
    storage.write_blocks("vol-a", [(1, os.urandom(BLOCK_SIZE))])
    asyncio.run(storage.freeze("vol-a", "snap-1"))
    asyncio.run(storage.keep_view("snap-1"))
    assert list((tmp_path / "data" / "bases").iterdir()) == []
    assert list((tmp_path / "data" / "views").iterdir()) == []
    asyncio.run(storage.freeze("vol-a", "snap-2"))
    with storage.open_view("snap-2") as view:
        assert type(view) is FileView
        assert not isinstance(view, ChangedBlocksSource)
        assert [i for i, _ in view.iter_blocks()] == [1]


def _reflinks(directory: Path) -> bool:
    source, target = directory / "probe-a", directory / "probe-b"
    source.write_bytes(b"x" * 4096)
    try:
        return sparse.clone_file(source, target, 4096) == "reflink"
    finally:
        source.unlink()
        target.unlink(missing_ok=True)


# -- the comparison itself, on extent maps given by hand --


def _extent(logical: int, physical: int, length: int, flags: int = 0) -> sparse.Extent:
    return sparse.Extent(logical, physical, length, flags)


def test_the_same_ranges_split_into_other_extents_compare_equal() -> None:
    size = 4 * BLOCK_SIZE
    whole = [_extent(0, 10 * BLOCK_SIZE, 2 * BLOCK_SIZE)]
    split = [
        _extent(0, 10 * BLOCK_SIZE, 4096),
        _extent(4096, 10 * BLOCK_SIZE + 4096, 2 * BLOCK_SIZE - 4096),
    ]
    assert list(changed_in(block_maps(split, size), block_maps(whole, size))) == []


def test_moved_missing_and_unsure_extents_are_changed() -> None:
    size = 8 * BLOCK_SIZE
    base = [_extent(0, 0, 3 * BLOCK_SIZE), _extent(5 * BLOCK_SIZE, 50 * BLOCK_SIZE, BLOCK_SIZE)]
    new = [
        _extent(0, 0, BLOCK_SIZE),  # block 0 the same
        _extent(BLOCK_SIZE, 90 * BLOCK_SIZE, 4096),  # block 1 partly moved
        _extent(BLOCK_SIZE + 4096, BLOCK_SIZE + 4096, BLOCK_SIZE - 4096),
        # block 2 now a hole
        _extent(4 * BLOCK_SIZE, 80 * BLOCK_SIZE, BLOCK_SIZE),  # block 4 new data
        _extent(5 * BLOCK_SIZE, 50 * BLOCK_SIZE, BLOCK_SIZE, 0x4),  # block 5 delalloc
    ]
    assert list(changed_in(block_maps(new, size), block_maps(base, size))) == [
        (1, True),
        (2, False),
        (4, True),
        (5, True),
    ]
    assert next(block_maps([_extent(0, 7, 10, 0x8)], size)) == (0, ((0, UNSURE, 10),))


def test_extents_past_the_size_asked_for_are_left_out() -> None:
    extents = [_extent(0, 0, 3 * BLOCK_SIZE)]
    assert [index for index, _ in block_maps(extents, BLOCK_SIZE + 4096)] == [0, 1]
