"""The local snapshot block store on real files: blocks in pack files, an SQLite index."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from backends.base import BlockStore
from backends.blockstore import LocalBlockStore
from backends.errors import CorruptBlockError, MissingBlockError
from ebsemu.model import BLOCK_SIZE


def _block(size: int = BLOCK_SIZE) -> tuple[bytes, bytes]:
    data = os.urandom(size)
    return hashlib.sha256(data).digest(), data


def test_local_block_store_satisfies_the_block_store_protocol(tmp_path: Path) -> None:
    assert isinstance(LocalBlockStore(tmp_path), BlockStore)


def _rows(root: Path) -> dict[bytes, tuple[int, int, int]]:
    """The index as SQLite has it on disk: digest -> (pack, offset, length)."""
    with closing(sqlite3.connect(root / "index.sqlite3")) as db:
        rows = db.execute("SELECT digest, pack, offset, length FROM blocks").fetchall()
    return {bytes(digest): (pack, offset, length) for digest, pack, offset, length in rows}


def _pack(root: Path, number: int) -> Path:
    return root / "packs" / f"{number}.pack"


def test_put_then_get_returns_the_same_bytes_from_a_pack(tmp_path: Path) -> None:
    store = LocalBlockStore(tmp_path)
    digest, data = _block()
    assert store.put(digest, data) is True
    assert store.get(digest) == data
    assert store.contains(digest)
    store.flush()
    pack, offset, length = _rows(tmp_path)[digest]
    assert length == BLOCK_SIZE
    with _pack(tmp_path, pack).open("rb") as f:
        f.seek(offset)
        assert f.read(length) == data
    assert {p.name for p in tmp_path.iterdir()} - {"index.sqlite3-shm", "index.sqlite3-wal"} == {
        "index.sqlite3",
        "packs",
    }  # no fan-out directory


def test_blocks_go_at_4_kib_aligned_offsets_and_packs_roll_over_at_their_size(
    tmp_path: Path,
) -> None:
    store = LocalBlockStore(tmp_path, pack_bytes=2 * BLOCK_SIZE)
    blocks = [_block(size) for size in (100, BLOCK_SIZE, 5000, BLOCK_SIZE)]
    for digest, data in blocks:
        store.put(digest, data)
    store.flush()
    rows = _rows(tmp_path)
    assert [rows[digest][:2] for digest, _ in blocks] == [
        (1, 0),
        (1, 4096),
        (1, 4096 + BLOCK_SIZE),
        (2, 0),  # at 4096 + 512 KiB + 8192 it would pass the pack's 1 MiB
    ]
    assert {d: store.get(d) for d, _ in blocks} == dict(blocks)


def test_second_put_of_a_block_writes_nothing_and_returns_false(tmp_path: Path) -> None:
    store = LocalBlockStore(tmp_path)
    digest, data = _block()
    store.put(digest, data)
    assert store.put(digest, data) is False
    store.flush()
    assert store.put(digest, data) is False
    assert LocalBlockStore(tmp_path).put(digest, data) is False
    assert _pack(tmp_path, 1).stat().st_size == BLOCK_SIZE
    assert list(store.iter_digests()) == [digest]
    assert store.stored_bytes() == BLOCK_SIZE


def test_flushed_blocks_are_seen_by_a_new_store_and_unflushed_ones_only_by_their_own(
    tmp_path: Path,
) -> None:
    store = LocalBlockStore(tmp_path)
    (flushed, flushed_data), (later, later_data) = _block(), _block()
    store.put(flushed, flushed_data)
    store.flush()
    store.put(later, later_data)
    other = LocalBlockStore(tmp_path)
    assert other.get(flushed) == flushed_data
    assert not other.contains(later)
    assert store.get(later) == later_data
    assert sorted(store.iter_digests()) == sorted([flushed, later])
    assert store.stored_bytes() == 2 * BLOCK_SIZE
    store.flush()
    assert other.get(later) == later_data


def test_get_detects_a_flipped_byte_in_a_pack(tmp_path: Path) -> None:
    store = LocalBlockStore(tmp_path)
    (before, before_data), (digest, data) = _block(), _block()
    store.put(before, before_data)
    store.put(digest, data)
    store.flush()
    pack, offset, _ = _rows(tmp_path)[digest]
    with _pack(tmp_path, pack).open("r+b") as f:
        f.seek(offset + BLOCK_SIZE // 2)
        f.write(bytes([data[BLOCK_SIZE // 2] ^ 0x01]))
    with pytest.raises(CorruptBlockError, match=digest.hex()):
        store.get(digest)
    assert store.get(before) == before_data


def test_get_of_an_absent_block_raises_missing_block_error(tmp_path: Path) -> None:
    store = LocalBlockStore(tmp_path / "never-created")
    digest, _ = _block()
    assert not store.contains(digest)
    with pytest.raises(MissingBlockError, match=digest.hex()):
        store.get(digest)


def test_delete_removes_the_block_and_is_idempotent(tmp_path: Path) -> None:
    store = LocalBlockStore(tmp_path)
    (digest, data), (kept, kept_data), (unflushed, _) = _block(), _block(), _block()
    store.put(digest, data)
    store.put(kept, kept_data)
    store.flush()
    store.put(unflushed, os.urandom(BLOCK_SIZE))
    store.delete(digest)
    store.delete(digest)
    store.delete(unflushed)
    assert not store.contains(digest)
    assert not store.contains(unflushed)
    assert list(store.iter_digests()) == [kept]
    assert store.stored_bytes() == len(kept_data)
    store.flush()
    assert list(_rows(tmp_path)) == [kept]
    assert not LocalBlockStore(tmp_path).contains(digest)


def test_delete_punches_a_hole_where_the_block_was(tmp_path: Path) -> None:
    store = LocalBlockStore(tmp_path)
    blocks = [_block() for _ in range(4)]
    for digest, data in blocks:
        store.put(digest, data)
    store.flush()
    pack = _pack(tmp_path, 1)
    os.sync()  # allocate the delayed extents, so st_blocks counts them
    allocated = pack.stat().st_blocks * 512
    assert allocated >= 4 * BLOCK_SIZE
    size = pack.stat().st_size

    store.delete(blocks[1][0])
    assert pack.stat().st_blocks * 512 == allocated - BLOCK_SIZE
    assert pack.stat().st_size == size
    with pack.open("rb") as f:
        f.seek(BLOCK_SIZE)
        assert f.read(BLOCK_SIZE) == bytes(BLOCK_SIZE)
    assert [store.get(d) for d, _ in blocks if d != blocks[1][0]] == [
        data for d, data in blocks if d != blocks[1][0]
    ]


def test_a_pack_left_without_blocks_is_unlinked_unless_it_is_appended_to(
    tmp_path: Path,
) -> None:
    store = LocalBlockStore(tmp_path, pack_bytes=2 * BLOCK_SIZE)
    blocks = [_block() for _ in range(3)]
    for digest, data in blocks:
        store.put(digest, data)
    store.flush()
    assert _pack(tmp_path, 1).exists() and _pack(tmp_path, 2).exists()

    store.delete(blocks[0][0])
    assert _pack(tmp_path, 1).exists()  # one block left in it
    store.delete(blocks[1][0])
    assert not _pack(tmp_path, 1).exists()
    store.delete(blocks[2][0])
    assert _pack(tmp_path, 2).exists()  # still where the next put goes
    digest, data = _block()
    store.put(digest, data)
    store.flush()
    assert _rows(tmp_path) == {digest: (2, BLOCK_SIZE, BLOCK_SIZE)}


def test_iter_digests_lists_every_block_and_ignores_stray_files(tmp_path: Path) -> None:
    store = LocalBlockStore(tmp_path)
    blocks = dict(_block() for _ in range(20))
    for digest, data in blocks.items():
        store.put(digest, data)
    store.flush()
    (tmp_path / "packs" / "README").write_bytes(b"not a pack")
    (tmp_path / "zz").mkdir()

    assert sorted(store.iter_digests()) == sorted(blocks)
    assert store.stored_bytes() == sum(len(d) for d in blocks.values())
    assert LocalBlockStore(tmp_path).remove_temp_files() == 0
    assert (tmp_path / "packs" / "README").exists()


def test_flush_succeeds_and_blocks_stay_readable(tmp_path: Path) -> None:
    store = LocalBlockStore(tmp_path)
    LocalBlockStore(tmp_path / "empty").flush()  # nothing put yet: nothing to sync
    assert not (tmp_path / "empty").exists()
    blocks = dict(_block() for _ in range(8))
    for digest, data in blocks.items():
        store.put(digest, data)
    store.flush()
    store.flush()
    assert {d: store.get(d) for d in store.iter_digests()} == blocks


def test_digests_of_the_wrong_length_are_refused(tmp_path: Path) -> None:
    store = LocalBlockStore(tmp_path)
    with pytest.raises(ValueError, match="32 bytes"):
        store.put(b"\x00" * 20, b"data")
