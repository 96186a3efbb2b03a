"""The block store contract, run against every block store: files on the local disk and
objects in a real single-node Ceph cluster (RADOS)."""

from __future__ import annotations

import hashlib
import os
import secrets
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest

from backends.base import BlockStore
from backends.blockstore import LocalBlockStore
from backends.blockstore_rados import RadosBlockStore
from backends.ceph_bindings import load_rados
from backends.errors import CorruptBlockError, MissingBlockError, SetupError
from ebsemu.model import BLOCK_SIZE
from tests.ceph_fixtures import CephCluster, ceph_cluster

__all__ = ["ceph_cluster"]
NEEDS_RADOS = "needs the librados Python bindings: apt-get install python3-rados"


@pytest.fixture
def bindings() -> None:
    try:
        load_rados()
    except SetupError:
        pytest.skip(NEEDS_RADOS)


@dataclass
class StoreCase:
    store: BlockStore
    overwrite: Callable[[bytes, bytes], None]  # replace a stored block's bytes behind its back
    objects: Callable[[], list[str]]  # what the store holds, seen without it


def _block(size: int = BLOCK_SIZE) -> tuple[bytes, bytes]:
    data = os.urandom(size)
    return hashlib.sha256(data).digest(), data


def _local(tmp_path: Path) -> StoreCase:
    root = tmp_path / "blocks"
    store = LocalBlockStore(root)

    def indexed() -> dict[bytes, tuple[int, int]]:
        store.flush()  # the index holds flushed blocks only
        with closing(sqlite3.connect(root / "index.sqlite3")) as db:
            rows = db.execute("SELECT digest, pack, offset FROM blocks").fetchall()
        return {bytes(digest): (pack, offset) for digest, pack, offset in rows}

    def overwrite(digest: bytes, data: bytes) -> None:
        pack, offset = indexed()[digest]
        with (root / "packs" / f"{pack}.pack").open("r+b") as f:
            f.seek(offset)
            f.write(data)
        with closing(sqlite3.connect(root / "index.sqlite3")) as db, db:
            db.execute("UPDATE blocks SET length = ? WHERE digest = ?", (len(data), digest))

    def objects() -> list[str]:
        return [digest.hex() for digest in indexed()]

    return StoreCase(store, overwrite, objects)


def _rados(cluster: CephCluster, tmp_path: Path) -> Iterator[StoreCase]:
    namespace = f"test-{secrets.token_hex(4)}"
    store = RadosBlockStore(cluster.conf, cluster.pool, namespace=namespace)
    where = ("rados", "--conf", str(cluster.conf), "-p", cluster.pool, "-N", namespace)

    def overwrite(digest: bytes, data: bytes) -> None:
        source = tmp_path / "overwrite"
        source.write_bytes(data)
        cluster.run(*where, "put", digest.hex(), str(source))

    def objects() -> list[str]:
        return cluster.run(*where, "ls").stdout.decode().split()

    yield StoreCase(store, overwrite, objects)
    store.close()


@pytest.fixture(params=["local", "rados"])
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreCase]:
    if request.param == "local":
        yield _local(tmp_path)
    else:
        request.getfixturevalue("bindings")
        yield from _rados(request.getfixturevalue("ceph_cluster"), tmp_path)


def test_store_satisfies_the_block_store_protocol(case: StoreCase) -> None:
    assert isinstance(case.store, BlockStore)
    case.store.check_setup()


def test_put_then_get_returns_the_same_bytes(case: StoreCase) -> None:
    digest, data = _block()
    assert case.store.put(digest, data) is True
    assert case.store.contains(digest)
    assert case.store.get(digest) == data
    assert case.objects() == [digest.hex()]


def test_second_put_of_a_block_returns_false_and_stores_it_once(case: StoreCase) -> None:
    digest, data = _block()
    assert case.store.put(digest, data) is True
    assert case.store.put(digest, data) is False
    assert list(case.store.iter_digests()) == [digest]
    assert case.objects() == [digest.hex()]
    assert case.store.stored_bytes() == BLOCK_SIZE


def test_get_detects_a_block_overwritten_with_other_bytes(case: StoreCase) -> None:
    digest, data = _block()
    case.store.put(digest, data)
    flipped = bytearray(data)
    flipped[BLOCK_SIZE // 2] ^= 0x01
    case.overwrite(digest, bytes(flipped))
    with pytest.raises(CorruptBlockError, match=digest.hex()):
        case.store.get(digest)


def test_get_detects_a_block_with_bytes_appended(case: StoreCase) -> None:
    digest, data = _block()
    case.store.put(digest, data)
    case.overwrite(digest, data + b"\x00")
    with pytest.raises(CorruptBlockError, match=digest.hex()):
        case.store.get(digest)


def test_get_of_an_absent_block_raises_missing_block_error(case: StoreCase) -> None:
    digest, _ = _block()
    assert not case.store.contains(digest)
    with pytest.raises(MissingBlockError, match=digest.hex()):
        case.store.get(digest)


def test_delete_removes_the_block_and_is_idempotent(case: StoreCase) -> None:
    (digest, data), (kept, kept_data) = _block(), _block(4096)
    case.store.put(digest, data)
    case.store.put(kept, kept_data)
    case.store.delete(digest)
    case.store.delete(digest)
    assert not case.store.contains(digest)
    assert list(case.store.iter_digests()) == [kept]
    assert case.store.stored_bytes() == len(kept_data)
    assert case.objects() == [kept.hex()]


def test_iter_digests_and_stored_bytes_cover_every_block(case: StoreCase) -> None:
    blocks = dict(_block(size) for size in (BLOCK_SIZE,) * 6 + (1, 4096))
    for digest, data in blocks.items():
        case.store.put(digest, data)
    case.store.flush()
    assert sorted(case.store.iter_digests()) == sorted(blocks)
    assert case.store.stored_bytes() == sum(len(d) for d in blocks.values())
    assert {d: case.store.get(d) for d in blocks} == blocks
    assert case.store.remove_temp_files() == 0


def test_concurrent_puts_from_threads_store_every_block_once(case: StoreCase) -> None:
    blocks = [_block() for _ in range(24)]
    work = blocks + blocks  # every block put twice, by different threads

    with ThreadPoolExecutor(max_workers=8) as pool:
        written = list(pool.map(lambda block: case.store.put(*block), work))
    assert sum(written) >= len(blocks)
    assert sorted(case.store.iter_digests()) == sorted(d for d, _ in blocks)
    with ThreadPoolExecutor(max_workers=8) as pool:
        read = list(pool.map(case.store.get, [d for d, _ in blocks]))
    assert read == [data for _, data in blocks]
    assert sorted(case.objects()) == sorted(d.hex() for d, _ in blocks)


def test_digests_of_the_wrong_length_are_refused(case: StoreCase) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        case.store.put(b"\x00" * 20, b"data")


def test_rados_store_names_a_missing_pool_at_setup(
    bindings: None, ceph_cluster: CephCluster
) -> None:
    store = RadosBlockStore(ceph_cluster.conf, "no-such-pool")
    with pytest.raises(SetupError, match="pool no-such-pool does not exist"):
        store.check_setup()


def test_rados_store_names_an_unreachable_cluster_at_setup(bindings: None, tmp_path: Path) -> None:
    conf = tmp_path / "ceph.conf"
    conf.write_text("[global]\nmon host = v2:127.0.0.1:1\nauth client required = none\n")
    store = RadosBlockStore(conf, "rbd", connect_timeout=1)
    with pytest.raises(SetupError, match="cannot connect to the Ceph cluster"):
        store.check_setup()


def test_rados_store_lists_only_block_objects_of_its_own_namespace(
    bindings: None, ceph_cluster: CephCluster, tmp_path: Path
) -> None:
    store = RadosBlockStore(ceph_cluster.conf, ceph_cluster.pool, namespace="own")
    neighbour = RadosBlockStore(ceph_cluster.conf, ceph_cluster.pool, namespace="neighbour")
    (digest, data), (other, other_data) = _block(), _block()
    store.put(digest, data)
    neighbour.put(other, other_data)
    stray = tmp_path / "stray"
    stray.write_bytes(b"not a block")
    ceph_cluster.run("rados", "--conf", str(ceph_cluster.conf), "-p", ceph_cluster.pool,
                     "-N", "own", "put", "README", str(stray))  # fmt: skip

    assert list(store.iter_digests()) == [digest]
    assert store.stored_bytes() == len(data)
    assert not store.contains(other)
    assert neighbour.get(other) == other_data
    store.close()
    neighbour.close()


def test_missing_bindings_name_the_package_to_install(tmp_path: Path) -> None:
    with pytest.raises(SetupError, match="apt-get install python3-rados"):
        load_rados(tmp_path)
