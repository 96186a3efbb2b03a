"""The local snapshot block store on real files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from backends.base import BlockStore
from backends.blockstore import LocalBlockStore
from backends.errors import CorruptBlockError, MissingBlockError
from ebsemu.model import BLOCK_SIZE


def _block() -> tuple[bytes, bytes]:
    data = os.urandom(BLOCK_SIZE)
    return hashlib.sha256(data).digest(), data


def test_local_block_store_satisfies_the_block_store_protocol(tmp_path: Path) -> None:
    assert isinstance(LocalBlockStore(tmp_path), BlockStore)


def test_put_then_get_returns_the_same_bytes_from_a_fanned_out_file(tmp_path: Path) -> None:
    store = LocalBlockStore(tmp_path)
    digest, data = _block()
    assert store.put(digest, data) is True
    assert store.get(digest) == data
    assert store.contains(digest)
    name = digest.hex()
    assert (tmp_path / name[:2] / name[2:4] / name).read_bytes() == data


def test_second_put_of_a_block_writes_nothing_and_returns_false(tmp_path: Path) -> None:
    store = LocalBlockStore(tmp_path)
    digest, data = _block()
    store.put(digest, data)
    path = store.path_of(digest)
    inode = path.stat().st_ino
    assert store.put(digest, data) is False
    assert path.stat().st_ino == inode
    assert list(store.iter_digests()) == [digest]
    assert store.stored_bytes() == BLOCK_SIZE


def test_get_detects_a_flipped_byte_on_disk(tmp_path: Path) -> None:
    store = LocalBlockStore(tmp_path)
    digest, data = _block()
    store.put(digest, data)
    with store.path_of(digest).open("r+b") as f:
        f.seek(BLOCK_SIZE // 2)
        f.write(bytes([data[BLOCK_SIZE // 2] ^ 0x01]))
    with pytest.raises(CorruptBlockError, match=digest.hex()):
        store.get(digest)


def test_get_of_an_absent_block_raises_missing_block_error(tmp_path: Path) -> None:
    store = LocalBlockStore(tmp_path / "never-created")
    digest, _ = _block()
    assert not store.contains(digest)
    with pytest.raises(MissingBlockError, match=digest.hex()):
        store.get(digest)


def test_delete_removes_the_block_and_is_idempotent(tmp_path: Path) -> None:
    store = LocalBlockStore(tmp_path)
    (digest, data), (kept, kept_data) = _block(), _block()
    store.put(digest, data)
    store.put(kept, kept_data)
    store.delete(digest)
    store.delete(digest)
    assert not store.contains(digest)
    assert list(store.iter_digests()) == [kept]
    assert store.stored_bytes() == len(kept_data)


def test_iter_digests_lists_every_block_and_ignores_temp_and_stray_files(
    tmp_path: Path,
) -> None:
    store = LocalBlockStore(tmp_path)
    blocks = dict(_block() for _ in range(20))
    for digest, data in blocks.items():
        store.put(digest, data)
    some = store.path_of(next(iter(blocks)))
    (some.parent / f".tmp-{some.name}-deadbeef").write_bytes(b"partial")
    (some.parent / "README").write_bytes(b"not a block")
    misplaced = _block()[0].hex()
    (some.parent / misplaced).write_bytes(b"a digest name in the wrong directory")
    (tmp_path / "zz").mkdir()

    assert sorted(store.iter_digests()) == sorted(blocks)
    assert store.stored_bytes() == sum(len(d) for d in blocks.values())


def test_remove_temp_files_deletes_crash_leftovers_only(tmp_path: Path) -> None:
    store = LocalBlockStore(tmp_path)
    digest, data = _block()
    store.put(digest, data)
    path = store.path_of(digest)
    leftovers = [path.parent / f".tmp-{path.name}-{n}" for n in ("00000000", "11111111")]
    for leftover in leftovers:
        leftover.write_bytes(b"partial")

    assert store.remove_temp_files() == 2
    assert not any(p.exists() for p in leftovers)
    assert store.get(digest) == data
    assert store.remove_temp_files() == 0


def test_flush_succeeds_and_blocks_stay_readable(tmp_path: Path) -> None:
    store = LocalBlockStore(tmp_path)
    LocalBlockStore(tmp_path / "empty").flush()  # nothing put yet: nothing to sync
    blocks = dict(_block() for _ in range(8))
    for digest, data in blocks.items():
        store.put(digest, data)
    store.flush()
    assert {d: store.get(d) for d in store.iter_digests()} == blocks


def test_put_leaves_no_temp_file_behind(tmp_path: Path) -> None:
    store = LocalBlockStore(tmp_path)
    digest, data = _block()
    store.put(digest, data)
    assert [p.name for p in store.path_of(digest).parent.iterdir()] == [digest.hex()]


def test_digests_of_the_wrong_length_are_refused(tmp_path: Path) -> None:
    store = LocalBlockStore(tmp_path)
    with pytest.raises(ValueError, match="32 bytes"):
        store.put(b"\x00" * 20, b"data")
