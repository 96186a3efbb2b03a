"""The file storage backend on real files: sparse segment layout, freeze, block I/O."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.base import SnapshotSource, StorageBackend
from backends.errors import BackendError, CapacityError, SetupError
from backends.file import MAX_SEGMENT_BYTES, FileStorage, probe_segment_bytes
from backends.sparse import clone_file
from ebsemu.model import BLOCK_SIZE, GIB
from tests.fs_fixtures import mounted, xfs_reflink_at

MIB = 1024**2


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A private 32 MiB tmpfs: free space only this test changes, and it fills up fast."""
    target = tmp_path / "tmpfs"
    with mounted(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(target)], target):
        yield target


@pytest.fixture
def xfs_reflink(tmp_path: Path) -> Iterator[Path]:
    """A loop-mounted XFS filesystem with reflink=1."""
    with xfs_reflink_at(tmp_path, 640 * MIB) as target:
        yield target


def _random_block() -> bytes:
    return os.urandom(BLOCK_SIZE)


def _distinct_blocks(count: int) -> dict[int, bytes]:
    """``count`` different blocks full of random-looking data, made cheaply from one block."""
    base = _random_block()
    return {i: i.to_bytes(8, "big") + base[8:] for i in range(count)}


def _segments(root: Path, kind: str, name: str) -> list[Path]:
    return sorted((root / kind / name).glob("seg-*"))


def _allocated(paths: list[Path]) -> int:
    return sum(p.stat().st_blocks * 512 for p in paths)


def _blocks_by_reading_everything(root: Path, kind: str, name: str) -> dict[int, bytes]:
    """The reference answer: every non-zero block, found by reading each byte."""
    data = b"".join(p.read_bytes() for p in _segments(root, kind, name))
    zero = bytes(BLOCK_SIZE)
    return {
        i // BLOCK_SIZE: data[i : i + BLOCK_SIZE]
        for i in range(0, len(data), BLOCK_SIZE)
        if data[i : i + BLOCK_SIZE] != zero
    }


def _view_blocks(storage: FileStorage, view_id: str, start: int = 0) -> dict[int, bytes]:
    with storage.open_view(view_id) as view:
        pairs = list(view.iter_blocks(start))
    assert [i for i, _ in pairs] == sorted({i for i, _ in pairs}), "not in strict index order"
    return dict(pairs)


def test_file_storage_and_its_views_satisfy_the_backend_protocols(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    assert isinstance(storage, StorageBackend)
    asyncio.run(storage.create("vol-1", MIB))
    asyncio.run(storage.freeze("vol-1", "snap-1"))
    with storage.open_view("snap-1") as view:
        assert isinstance(view, SnapshotSource)
        assert view.size_bytes == MIB


def test_probe_finds_the_largest_power_of_two_one_file_can_hold(tmp_path: Path) -> None:
    size = probe_segment_bytes(tmp_path)
    assert size & (size - 1) == 0 and BLOCK_SIZE <= size <= MAX_SEGMENT_BYTES
    with (tmp_path / "f").open("wb") as f:
        f.truncate(size)
        if size < MAX_SEGMENT_BYTES:
            with pytest.raises(OSError):
                f.truncate(size * 2)
    assert list(tmp_path.iterdir()) == [tmp_path / "f"], "probe left a file behind"


@pytest.mark.parametrize("size_gib", [1, 16384, 65536])
def test_create_any_ebs_size_is_sparse_and_segmented_by_probed_limit(
    tmp_path: Path, size_gib: int
) -> None:
    storage = FileStorage(tmp_path)
    segment = probe_segment_bytes(tmp_path)
    asyncio.run(storage.create("vol-a", size_gib * GIB))

    segments = _segments(tmp_path, "volumes", "vol-a")
    expected_count = -(-size_gib * GIB // segment)
    assert len(segments) == expected_count
    assert [p.stat().st_size for p in segments[:-1]] == [segment] * (expected_count - 1)
    assert sum(p.stat().st_size for p in segments) == size_gib * GIB
    assert _allocated(segments) <= 64 * 1024
    meta = json.loads((tmp_path / "volumes" / "vol-a" / "volume.json").read_text())
    assert meta["size_bytes"] == size_gib * GIB
    assert meta["segment_bytes"] == segment


def test_create_keeps_same_size_volume_and_refuses_another_size(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    asyncio.run(storage.create("vol-a", 4 * MIB))
    storage.write_blocks("vol-a", [(1, block := _random_block())])
    asyncio.run(storage.create("vol-a", 4 * MIB))
    assert _blocks_by_reading_everything(tmp_path, "volumes", "vol-a") == {1: block}
    with pytest.raises(BackendError, match="exists with"):
        asyncio.run(storage.create("vol-a", 8 * MIB))
    assert asyncio.run(storage.list_volumes()) == ["vol-a"]


def test_create_refuses_ids_that_are_not_one_path_component(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path / "data")
    for bad in ("../escape", "a/b", ".hidden", ""):
        with pytest.raises(BackendError, match="invalid"):
            asyncio.run(storage.create(bad, MIB))
    assert not (tmp_path / "escape").exists()


def test_delete_frees_the_space_and_is_idempotent(small_fs: Path) -> None:
    storage = FileStorage(small_fs / "data")
    asyncio.run(storage.create("vol-a", 16 * MIB))
    free_empty = storage.free_bytes()
    storage.write_blocks("vol-a", [(i, _random_block()) for i in range(32)])
    assert free_empty - storage.free_bytes() >= 16 * MIB

    asyncio.run(storage.delete("vol-a"))
    assert storage.free_bytes() >= free_empty
    assert asyncio.run(storage.list_volumes()) == []
    asyncio.run(storage.delete("vol-a"))
    assert list((small_fs / "data" / "volumes").iterdir()) == []


def test_extend_grows_the_last_segment_then_adds_segments(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path, segment_bytes=4 * MIB)
    asyncio.run(storage.create("vol-a", 6 * MIB))
    last = _random_block()
    storage.write_blocks("vol-a", [(11, last)])

    asyncio.run(storage.extend("vol-a", 13 * MIB))
    segments = _segments(tmp_path, "volumes", "vol-a")
    assert [p.stat().st_size for p in segments] == [4 * MIB, 4 * MIB, 4 * MIB, 1 * MIB]
    assert _blocks_by_reading_everything(tmp_path, "volumes", "vol-a") == {11: last}
    new_block = _random_block()
    storage.write_blocks("vol-a", [(25, new_block)])
    assert _blocks_by_reading_everything(tmp_path, "volumes", "vol-a") == {
        11: last,
        25: new_block,
    }

    asyncio.run(storage.extend("vol-a", 13 * MIB))  # same size: nothing to do
    with pytest.raises(BackendError, match="shrink"):
        asyncio.run(storage.extend("vol-a", 4 * MIB))


def test_an_attached_volume_is_not_extended_past_one_segment_file(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path, segment_bytes=4 * MIB)
    asyncio.run(storage.create("vol-a", 2 * MIB))
    data = _random_block()
    storage.write_blocks("vol-a", [(1, data)])

    asyncio.run(storage.extend("vol-a", 4 * MIB, one_device=True))  # still one file
    assert storage.device_path("vol-a").endswith("seg-0000")
    with pytest.raises(CapacityError, match="must stay one file"):
        asyncio.run(storage.extend("vol-a", 5 * MIB, one_device=True))
    assert [p.stat().st_size for p in _segments(tmp_path, "volumes", "vol-a")] == [4 * MIB]
    meta = json.loads((tmp_path / "volumes" / "vol-a" / "volume.json").read_text())
    assert meta["size_bytes"] == 4 * MIB
    assert _blocks_by_reading_everything(tmp_path, "volumes", "vol-a") == {1: data}

    asyncio.run(storage.extend("vol-a", 5 * MIB))  # detached, it may span two files
    assert [p.stat().st_size for p in _segments(tmp_path, "volumes", "vol-a")] == [4 * MIB, MIB]


def test_freeze_is_point_in_time(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    asyncio.run(storage.create("vol-a", 8 * MIB))
    before = _random_block()
    storage.write_blocks("vol-a", [(3, before)])
    asyncio.run(storage.freeze("vol-a", "snap-1"))
    storage.write_blocks("vol-a", [(3, _random_block()), (7, _random_block())])

    assert _view_blocks(storage, "snap-1") == {3: before}
    assert asyncio.run(storage.list_views()) == ["snap-1"]


def test_freeze_keeps_an_existing_view_of_that_name(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    asyncio.run(storage.create("vol-a", 2 * MIB))
    first = _random_block()
    storage.write_blocks("vol-a", [(0, first)])
    asyncio.run(storage.freeze("vol-a", "snap-1"))
    storage.write_blocks("vol-a", [(0, _random_block())])
    asyncio.run(storage.freeze("vol-a", "snap-1"))
    assert _view_blocks(storage, "snap-1") == {0: first}


def test_freeze_copy_keeps_holes_and_copies_data(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    asyncio.run(storage.create("vol-a", 64 * MIB))
    written = {5: _random_block(), 100: _random_block(), 127: _random_block()}
    storage.write_blocks("vol-a", written.items())
    asyncio.run(storage.freeze("vol-a", "snap-1"))

    view_files = _segments(tmp_path, "views", "snap-1")
    assert 3 * BLOCK_SIZE <= _allocated(view_files) <= 3 * BLOCK_SIZE + 256 * 1024
    assert _blocks_by_reading_everything(tmp_path, "views", "snap-1") == written


def test_clone_file_across_filesystems_falls_back_to_read_write_and_keeps_holes(
    tmp_path: Path, small_fs: Path
) -> None:
    source = tmp_path / "source"
    data = {0: _random_block(), 9: _random_block()}
    with source.open("wb") as f:
        f.truncate(16 * BLOCK_SIZE)
        for index, block in data.items():
            f.seek(index * BLOCK_SIZE)
            f.write(block)
    copy = small_fs / "copy"
    assert clone_file(source, copy, 16 * BLOCK_SIZE) == "copy"
    assert copy.stat().st_size == 16 * BLOCK_SIZE
    assert _allocated([copy]) == 2 * BLOCK_SIZE
    raw = copy.read_bytes()
    assert raw == b"".join(data.get(i, bytes(BLOCK_SIZE)) for i in range(16))


def test_drop_view_removes_it_and_is_idempotent(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    asyncio.run(storage.create("vol-a", MIB))
    asyncio.run(storage.freeze("vol-a", "snap-1"))
    asyncio.run(storage.drop_view("snap-1"))
    asyncio.run(storage.drop_view("snap-1"))
    assert asyncio.run(storage.list_views()) == []
    assert list((tmp_path / "views").iterdir()) == []
    with pytest.raises(BackendError, match="no view"):
        storage.open_view("snap-1")


def test_iter_blocks_skips_holes_and_zero_blocks_across_segment_boundaries(
    tmp_path: Path,
) -> None:
    storage = FileStorage(tmp_path, segment_bytes=4 * BLOCK_SIZE)
    asyncio.run(storage.create("vol-a", 16 * BLOCK_SIZE))
    storage.write_blocks("vol-a", [(i, _random_block()) for i in (1, 3, 4, 9, 15)])
    seg = _segments(tmp_path, "volumes", "vol-a")
    with seg[1].open("r+b") as f:  # blocks 4..7
        f.seek(1 * BLOCK_SIZE)
        f.write(bytes(BLOCK_SIZE))  # block 5: allocated, all zeros
        f.seek(2 * BLOCK_SIZE)
        f.write(b"\x01" * 4096)  # block 6: data at its start ...
        f.seek(3 * BLOCK_SIZE - 4096)
        f.write(b"\x02" * 4096)  # ... and at its end, a hole between
    with seg[2].open("r+b") as f:  # blocks 8..11
        f.seek(3 * BLOCK_SIZE - 1)
        f.write(b"\x03")  # block 10: one byte at its very end
    asyncio.run(storage.freeze("vol-a", "snap-1"))

    expected = _blocks_by_reading_everything(tmp_path, "views", "snap-1")
    assert sorted(expected) == [1, 3, 4, 6, 9, 10, 15]
    assert _view_blocks(storage, "snap-1") == expected
    for start in (0, 3, 4, 5, 7, 8, 11, 15, 16, 99):
        assert _view_blocks(storage, "snap-1", start) == {
            i: data for i, data in expected.items() if i >= start
        }


def test_iter_blocks_of_mostly_empty_16_tib_view_takes_milliseconds(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    size = 16384 * GIB
    last = size // BLOCK_SIZE - 1
    written = {0: _random_block(), 123_456_789 % last: _random_block(), last: _random_block()}
    asyncio.run(storage.create("vol-a", size))
    storage.write_blocks("vol-a", written.items())
    asyncio.run(storage.freeze("vol-a", "snap-1"))

    began = time.monotonic()
    assert _view_blocks(storage, "snap-1") == written
    assert time.monotonic() - began < 0.5


def test_write_blocks_round_trip_keeps_holes(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    asyncio.run(storage.create("vol-a", 64 * MIB))
    written = {i: _random_block() for i in (0, 17, 18, 127)}
    storage.write_blocks("vol-a", [*written.items(), (50, bytes(BLOCK_SIZE))])

    assert _blocks_by_reading_everything(tmp_path, "volumes", "vol-a") == written
    allocated = _allocated(_segments(tmp_path, "volumes", "vol-a"))
    assert len(written) * BLOCK_SIZE <= allocated <= len(written) * BLOCK_SIZE + 64 * 1024


def test_write_blocks_zero_block_over_data_makes_it_read_zeros(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    asyncio.run(storage.create("vol-a", 4 * MIB))
    storage.write_blocks("vol-a", [(2, _random_block()), (3, keep := _random_block())])
    storage.write_blocks("vol-a", [(2, bytes(BLOCK_SIZE))])
    assert _blocks_by_reading_everything(tmp_path, "volumes", "vol-a") == {3: keep}


def test_write_blocks_refuses_blocks_outside_the_volume_or_of_wrong_size(
    tmp_path: Path,
) -> None:
    storage = FileStorage(tmp_path)
    asyncio.run(storage.create("vol-a", 4 * MIB))
    for index, data in ((8, _random_block()), (-1, _random_block()), (0, b"short")):
        with pytest.raises(BackendError, match="does not fit"):
            storage.write_blocks("vol-a", [(index, data)])
    with pytest.raises(BackendError, match="no volume"):
        storage.write_blocks("vol-missing", [(0, _random_block())])


def test_device_path_names_the_single_file_and_refuses_multi_segment_volumes(
    tmp_path: Path,
) -> None:
    storage = FileStorage(tmp_path, segment_bytes=MIB)
    asyncio.run(storage.create("vol-one", MIB))
    asyncio.run(storage.create("vol-two", 2 * MIB))
    path = Path(storage.device_path("vol-one"))
    assert path.is_file() and path.stat().st_size == MIB
    with pytest.raises(
        BackendError, match=r"spans 2 segment files .* at most 1 MiB .* XFS or btrfs"
    ):
        storage.device_path("vol-two")


def test_freeze_uses_reflink_on_xfs_and_stays_copy_on_write(
    xfs_reflink: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="backends.file")
    storage = FileStorage(xfs_reflink / "data")
    asyncio.run(storage.create("vol-a", 256 * MIB))
    written = _distinct_blocks(512)
    storage.write_blocks("vol-a", written.items())
    free_before = storage.free_bytes()

    asyncio.run(storage.freeze("vol-a", "snap-1"))
    assert free_before - storage.free_bytes() < 16 * MIB  # a copy would take 256 MiB
    assert any("by reflink" in r.getMessage() for r in caplog.records)

    storage.write_blocks("vol-a", [(0, _random_block())])
    assert _view_blocks(storage, "snap-1") == written


def test_freeze_out_of_space_raises_capacity_error_and_leaves_no_partial_view(
    small_fs: Path,
) -> None:
    storage = FileStorage(small_fs / "data")
    asyncio.run(storage.create("vol-a", 64 * MIB))
    storage.write_blocks("vol-a", [(i, _random_block()) for i in range(40)])  # 20 MiB
    with pytest.raises(CapacityError):
        asyncio.run(storage.freeze("vol-a", "snap-1"))
    assert asyncio.run(storage.list_views()) == []
    assert list((small_fs / "data" / "views").iterdir()) == []


def test_write_blocks_out_of_space_raises_capacity_error(small_fs: Path) -> None:
    storage = FileStorage(small_fs / "data")
    asyncio.run(storage.create("vol-a", 64 * MIB))
    with pytest.raises(CapacityError):
        storage.write_blocks("vol-a", [(i, _random_block()) for i in range(128)])


def test_check_setup_fails_clearly_when_the_data_directory_cannot_be_made(
    tmp_path: Path,
) -> None:
    (tmp_path / "not-a-dir").write_text("")
    storage = FileStorage(tmp_path / "not-a-dir" / "data")
    with pytest.raises(SetupError, match="writable data directory"):
        asyncio.run(storage.check_setup())


def test_check_setup_creates_directories_and_removes_leftovers(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    asyncio.run(storage.check_setup())
    leftovers = [
        tmp_path / "volumes" / ".tmp-vol-a-1234abcd",
        tmp_path / "views" / ".del-snap-1-1234abcd",
    ]
    for leftover in leftovers:
        leftover.mkdir()
        (leftover / "seg-0000").write_bytes(b"x")
    asyncio.run(storage.create("vol-a", MIB))
    assert asyncio.run(storage.list_volumes()) == ["vol-a"]
    asyncio.run(storage.check_setup())
    assert not any(p.exists() for p in leftovers)
    assert asyncio.run(storage.list_volumes()) == ["vol-a"]


def test_copy_volume_holds_the_bytes_of_its_moment_keeps_holes_and_keeps_an_existing_copy(
    tmp_path: Path,
) -> None:
    storage = FileStorage(tmp_path)
    asyncio.run(storage.create("vol-a", 64 * MIB))
    written = {5: _random_block(), 100: _random_block(), 127: _random_block()}
    storage.write_blocks("vol-a", written.items())
    asyncio.run(storage.copy_volume("vol-a", "vol-b"))
    storage.write_blocks("vol-a", [(5, _random_block()), (6, _random_block())])

    assert _blocks_by_reading_everything(tmp_path, "volumes", "vol-b") == written
    copied = _segments(tmp_path, "volumes", "vol-b")
    assert 3 * BLOCK_SIZE <= _allocated(copied) <= 3 * BLOCK_SIZE + 256 * 1024
    asyncio.run(storage.copy_volume("vol-a", "vol-b"))  # a retry keeps the copy made
    assert _blocks_by_reading_everything(tmp_path, "volumes", "vol-b") == written
    assert asyncio.run(storage.list_volumes()) == ["vol-a", "vol-b"]
    asyncio.run(storage.extend("vol-b", 128 * MIB))  # a copy is a volume like any other
    assert _blocks_by_reading_everything(tmp_path, "volumes", "vol-b") == written


def test_copy_volume_out_of_space_raises_capacity_error_and_leaves_nothing(
    small_fs: Path,
) -> None:
    storage = FileStorage(small_fs / "data")
    asyncio.run(storage.create("vol-a", 64 * MIB))
    storage.write_blocks("vol-a", [(i, _random_block()) for i in range(40)])  # 20 MiB
    with pytest.raises(CapacityError):
        asyncio.run(storage.copy_volume("vol-a", "vol-b"))
    assert asyncio.run(storage.list_volumes()) == ["vol-a"]
    assert [p.name for p in (small_fs / "data" / "volumes").iterdir()] == ["vol-a"]


def test_copy_volume_shares_extents_on_xfs(
    xfs_reflink: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="backends.file")
    storage = FileStorage(xfs_reflink / "data")
    asyncio.run(storage.create("vol-a", 256 * MIB))
    written = _distinct_blocks(512)
    storage.write_blocks("vol-a", written.items())
    free_before = storage.free_bytes()
    asyncio.run(storage.copy_volume("vol-a", "vol-b"))
    assert free_before - storage.free_bytes() < 16 * MIB  # a copy of the data takes 256 MiB
    assert any("to vol-b by reflink" in r.getMessage() for r in caplog.records)
    storage.write_blocks("vol-a", [(0, _random_block())])
    assert _blocks_by_reading_everything(xfs_reflink / "data", "volumes", "vol-b") == written
