"""The packed local block store on real files: blocks of the earlier one-file-per-block layout,
puts from many threads, what a crash leaves (a killed process, interrupted deletes), and blocks
stored as reflinks of a frozen view's extents on XFS (copied on ext4)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from itertools import pairwise
from pathlib import Path

import pytest

from backends import sparse
from backends.blockstore import LocalBlockStore
from backends.errors import BackendError, CorruptBlockError
from backends.file import FileStorage
from ebsemu.model import BLOCK_SIZE
from tests.test_file_storage import MIB, xfs_reflink

__all__ = ["xfs_reflink"]

REPO = Path(__file__).resolve().parent.parent


def _block(size: int = BLOCK_SIZE) -> tuple[bytes, bytes]:
    data = os.urandom(size)
    return hashlib.sha256(data).digest(), data


def _seeded(seed: int) -> tuple[bytes, bytes]:
    """A block both this process and a child can make: 512 KiB from ``seed``."""
    data = hashlib.sha256(str(seed).encode()).digest() * (BLOCK_SIZE // 32)
    return hashlib.sha256(data).digest(), data


def _rows(root: Path) -> dict[bytes, tuple[int, int, int]]:
    with closing(sqlite3.connect(root / "index.sqlite3")) as db:
        rows = db.execute("SELECT digest, pack, offset, length FROM blocks").fetchall()
    return {bytes(digest): (pack, offset, length) for digest, pack, offset, length in rows}


def _legacy(root: Path, data: bytes) -> tuple[bytes, Path]:
    """Write a block as the earlier layout did: root/ab/cd/<64 hex digits>."""
    digest = hashlib.sha256(data).digest()
    name = digest.hex()
    path = root / name[:2] / name[2:4] / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest, path


def test_blocks_of_the_one_file_per_block_layout_stay_readable_and_deletable(
    tmp_path: Path,
) -> None:
    old = [_legacy(tmp_path, os.urandom(BLOCK_SIZE)) for _ in range(3)]
    temp = old[0][1].with_name(f".tmp-{old[0][1].name}-0badf00d")
    temp.write_bytes(b"partial")
    store = LocalBlockStore(tmp_path)
    new, new_data = _block()
    store.put(new, new_data)
    store.flush()

    assert all(store.get(digest) == path.read_bytes() for digest, path in old)
    assert all(store.contains(digest) for digest, _ in old)
    assert store.put(old[0][0], old[0][1].read_bytes()) is False  # stored already, as a file
    assert sorted(store.iter_digests()) == sorted([new] + [digest for digest, _ in old])
    assert store.stored_bytes() == 4 * BLOCK_SIZE
    assert list(_rows(tmp_path)) == [new]

    store.delete(old[1][0])
    assert not old[1][1].exists()
    assert not store.contains(old[1][0])
    assert store.remove_temp_files() == 1
    assert not temp.exists()
    assert old[0][1].exists()

    old[2][1].write_bytes(b"\x00" + old[2][1].read_bytes()[1:])
    with pytest.raises(CorruptBlockError, match=old[2][0].hex()):
        store.get(old[2][0])


def test_puts_from_many_threads_with_flushes_among_them_store_each_block_once(
    tmp_path: Path,
) -> None:
    store = LocalBlockStore(tmp_path, pack_bytes=4 * BLOCK_SIZE)
    blocks = [_block() for _ in range(32)]
    stop = threading.Event()

    def flush_until_stopped() -> None:
        while not stop.is_set():
            store.flush()

    flusher = threading.Thread(target=flush_until_stopped)
    flusher.start()
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            written = list(pool.map(lambda block: store.put(*block), blocks + blocks[::-1]))
    finally:
        stop.set()
        flusher.join()
    store.flush()

    assert sum(written) == len(blocks)
    rows = _rows(tmp_path)
    assert sorted(rows) == sorted(digest for digest, _ in blocks)
    spans = sorted((pack, offset, offset + length) for pack, offset, length in rows.values())
    assert all(a[0] != b[0] or a[2] <= b[1] for a, b in pairwise(spans))  # no shared bytes
    fresh = LocalBlockStore(tmp_path)
    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(fresh.get, [d for d, _ in blocks])) == [data for _, data in blocks]


def test_put_many_writes_each_new_block_once_and_skips_those_stored_or_pending(
    tmp_path: Path,
) -> None:
    store = LocalBlockStore(tmp_path)
    flushed, pending, new, other = (_block() for _ in range(4))
    store.put(*flushed)
    store.flush()
    store.put(*pending)

    batch = [flushed, new, pending, other, new]
    assert store.put_many([(digest, data, None) for digest, data in batch]) == 2
    assert store.put_many([(digest, data, None) for digest, data in batch]) == 0
    store.flush()

    rows = _rows(tmp_path)
    assert sorted(rows) == sorted(digest for digest, _ in (flushed, pending, new, other))
    assert LocalBlockStore(tmp_path).get(new[0]) == new[1]
    assert store.stored_bytes() == 4 * BLOCK_SIZE


def test_put_many_from_threads_with_overlapping_batches_stores_each_block_once(
    tmp_path: Path,
) -> None:
    store = LocalBlockStore(tmp_path, pack_bytes=6 * BLOCK_SIZE)
    blocks = [(digest, data, None) for digest, data in (_block() for _ in range(24))]
    batches = [blocks[start : start + 8] for start in range(0, 24, 4)]  # each block in two

    with ThreadPoolExecutor(max_workers=6) as pool:
        written = sum(pool.map(store.put_many, batches + batches[::-1]))
    store.flush()

    assert written == len(blocks)
    rows = _rows(tmp_path)
    assert sorted(rows) == sorted(digest for digest, _, _ in blocks)
    spans = sorted((pack, offset, offset + length) for pack, offset, length in rows.values())
    assert all(a[0] != b[0] or a[2] <= b[1] for a, b in pairwise(spans))  # no shared bytes
    fresh = LocalBlockStore(tmp_path)
    assert [fresh.get(digest) for digest, _, _ in blocks] == [data for _, data, _ in blocks]


def test_a_put_many_that_fails_leaves_its_blocks_for_the_next_put(tmp_path: Path) -> None:
    store = LocalBlockStore(tmp_path)
    digest, data = _block()
    not_open = 2**20 - 1  # a source that cannot be read: EBADF

    with pytest.raises(BackendError, match=digest.hex()):
        store.put_many([(digest, data, (not_open, 0))])
    assert not store.contains(digest)
    assert store.put(digest, data) is True
    store.flush()
    assert LocalBlockStore(tmp_path).get(digest) == data


def test_a_put_many_that_finds_no_room_for_a_pack_gives_up_the_blocks_it_had_placed(
    tmp_path: Path,
) -> None:
    store = LocalBlockStore(tmp_path, pack_bytes=2 * BLOCK_SIZE)
    batch = [(digest, data, None) for digest, data in (_block() for _ in range(4))]
    (tmp_path / "packs").mkdir()
    (tmp_path / "packs" / "2.pack").touch()  # where the second pack would go

    with pytest.raises(BackendError, match="cannot create a pack"):
        store.put_many(batch)  # two blocks had their place in pack 1 by then
    assert not any(store.contains(digest) for digest, _, _ in batch)
    written: list[int] = []
    retry = threading.Thread(target=lambda: written.append(store.put_many(batch)), daemon=True)
    retry.start()
    retry.join(timeout=30)  # a claim left behind would make it wait for good
    assert written == [4]
    store.flush()
    assert [store.get(digest) for digest, _, _ in batch] == [data for _, data, _ in batch]


def test_put_many_shares_each_run_of_adjacent_view_blocks_in_one_reflink_on_xfs(
    xfs_reflink: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = FileStorage(xfs_reflink / "data")
    store = LocalBlockStore(xfs_reflink / "blocks")
    clones: list[int] = []
    clone_range = sparse.clone_range

    def counted(src: int, src_offset: int, length: int, dst: int, dst_offset: int) -> None:
        clones.append(length)
        clone_range(src, src_offset, length, dst, dst_offset)

    monkeypatch.setattr(sparse, "clone_range", counted)
    try:
        written = {i: os.urandom(BLOCK_SIZE) for i in [*range(16), *range(20, 24)]}
        asyncio.run(storage.create("vol-a", 16 * MIB))
        storage.write_blocks("vol-a", written.items())
        os.sync()
        free = _free(xfs_reflink)
        asyncio.run(storage.freeze("vol-a", "snap-1"))
        with storage.open_view("snap-1") as view:
            batch = [
                (hashlib.sha256(data).digest(), data, view.block_location(index))
                for index, data in view.iter_blocks()
            ]
            assert store.put_many(batch) == len(written)
        store.flush()
        os.sync()

        assert clones == [16 * BLOCK_SIZE, 4 * BLOCK_SIZE]  # two runs, two reflinks
        assert free - _free(xfs_reflink) < 2 * MIB  # a copy would take 10 MiB
        asyncio.run(storage.drop_view("snap-1"))
        asyncio.run(storage.delete("vol-a"))
        assert all(store.get(hashlib.sha256(d).digest()) == d for d in written.values())
    finally:
        store.close()  # its open pack would keep the filesystem from being unmounted


CHILD = """
import hashlib, sys, time
from pathlib import Path
from backends.blockstore import LocalBlockStore
from tests.test_blockpack import _seeded

store = LocalBlockStore(Path(sys.argv[1]))
for seed in range(4):
    store.put(*_seeded(seed))
store.flush()
for seed in range(4, 8):
    store.put(*_seeded(seed))
print("written", flush=True)
time.sleep(120)
"""


def test_a_process_killed_before_its_flush_leaves_its_flushed_blocks_whole_and_no_others(
    tmp_path: Path,
) -> None:
    argv = [sys.executable, "-c", CHILD, str(tmp_path)]
    with subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, text=True) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == "written\n"
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
    pack = tmp_path / "packs" / "1.pack"
    assert pack.stat().st_size == 8 * BLOCK_SIZE  # the unflushed blocks' bytes are there

    store = LocalBlockStore(tmp_path)
    assert store.remove_temp_files() == 1
    assert pack.stat().st_size == 4 * BLOCK_SIZE
    flushed = [_seeded(seed) for seed in range(4)]
    assert [store.get(digest) for digest, _ in flushed] == [data for _, data in flushed]
    assert not any(store.contains(_seeded(seed)[0]) for seed in range(4, 8))
    assert sorted(store.iter_digests()) == sorted(digest for digest, _ in flushed)

    again = _seeded(5)
    assert store.put(*again) is True  # into a new pack: the dead process's is never reused
    store.flush()
    assert _rows(tmp_path)[again[0]][0] == 2
    assert store.remove_temp_files() == 0


def test_start_up_cleanup_punches_blocks_a_crash_left_unindexed_and_unlinks_empty_packs(
    tmp_path: Path,
) -> None:
    store = LocalBlockStore(tmp_path, pack_bytes=3 * BLOCK_SIZE)
    blocks = [_block() for _ in range(4)]
    for digest, data in blocks:
        store.put(digest, data)
    store.flush()
    store.close()
    with closing(sqlite3.connect(tmp_path / "index.sqlite3")) as db, db:
        # a delete whose index commit was made and whose punch never happened
        db.execute("DELETE FROM blocks WHERE digest IN (?, ?)", (blocks[1][0], blocks[3][0]))
    os.sync()
    first = tmp_path / "packs" / "1.pack"
    allocated = first.stat().st_blocks * 512

    store = LocalBlockStore(tmp_path)
    assert store.remove_temp_files() == 2
    assert first.stat().st_blocks * 512 == allocated - BLOCK_SIZE
    assert not (tmp_path / "packs" / "2.pack").exists()  # its only block was deleted
    assert [store.get(blocks[i][0]) for i in (0, 2)] == [blocks[0][1], blocks[2][1]]
    assert store.remove_temp_files() == 0


def test_start_up_cleanup_leaves_a_pack_another_process_appends_to(tmp_path: Path) -> None:
    writer = LocalBlockStore(tmp_path)
    digest, data = _block()
    writer.put(digest, data)  # not flushed: pack 1 is still being appended to

    other = LocalBlockStore(tmp_path)
    assert other.remove_temp_files() == 0
    assert (tmp_path / "packs" / "1.pack").stat().st_size == BLOCK_SIZE
    writer.flush()
    assert other.get(digest) == data


def _free(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def _captured(storage: FileStorage, store: LocalBlockStore) -> None:
    """Freeze volume vol-a and put its view's blocks as the capture does."""
    asyncio.run(storage.freeze("vol-a", "snap-1"))
    with storage.open_view("snap-1") as view:
        for index, data in view.iter_blocks():
            fd, offset = view.block_location(index)
            assert os.pread(fd, len(data), offset) == data
            assert store.put_clone(hashlib.sha256(data).digest(), data, fd, offset) is True
    store.flush()
    asyncio.run(storage.drop_view("snap-1"))


def test_put_clone_on_xfs_shares_the_views_extents_instead_of_copying_them(
    xfs_reflink: Path,
) -> None:
    storage = FileStorage(xfs_reflink / "data")
    store = LocalBlockStore(xfs_reflink / "blocks")
    try:
        written = {i * 3: os.urandom(BLOCK_SIZE) for i in range(32)}  # 16 MiB
        asyncio.run(storage.create("vol-a", 64 * MIB))
        storage.write_blocks("vol-a", written.items())
        os.sync()
        free = _free(xfs_reflink)

        _captured(storage, store)
        os.sync()
        assert free - _free(xfs_reflink) < 2 * MIB  # a copy would take 16 MiB
        pack = xfs_reflink / "blocks" / "packs" / "1.pack"
        assert pack.stat().st_blocks * 512 >= 16 * MIB  # extents shared with the volume
        asyncio.run(storage.delete("vol-a"))
        assert all(store.get(hashlib.sha256(d).digest()) == d for d in written.values())
    finally:
        store.close()  # its open pack would keep the filesystem from being unmounted


def test_put_clone_writes_the_bytes_where_the_filesystem_cannot_share_extents(
    tmp_path: Path,
) -> None:
    storage = FileStorage(tmp_path / "data")
    store = LocalBlockStore(tmp_path / "blocks")
    written = {i * 3: os.urandom(BLOCK_SIZE) for i in range(8)}
    asyncio.run(storage.create("vol-a", 64 * MIB))
    storage.write_blocks("vol-a", written.items())
    _captured(storage, store)
    os.sync()
    assert all(store.get(hashlib.sha256(data).digest()) == data for data in written.values())
    pack = tmp_path / "blocks" / "packs" / "1.pack"
    assert pack.stat().st_blocks * 512 >= 8 * BLOCK_SIZE
