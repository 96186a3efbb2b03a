"""The data path when a snapshot it depends on is deleted meanwhile.

A restore reads its snapshot's manifest, then makes sure the snapshot is still there: one
deleted meanwhile may have lost its rows already, and writing what is left of them would leave
an `available` volume short of its data. It fails instead (the volume goes to `error`).

A capture whose manifest was seeded with an earlier snapshot's rows replaces the rows of the
blocks that changed. When that earlier snapshot was deleted before (its sweep kept the blocks
the seeded rows still named), the replaced rows held the only references to their blocks: the
capture frees them, or they would stay in the block store for good.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from backends.base import SnapshotSource, StorageBackend
from backends.blockstore import LocalBlockStore
from backends.errors import MissingBlockError
from ebsemu.model import BLOCK_SIZE, SnapshotState, utcnow
from ebsemu.service import snapshot_data
from ebsemu.service.core import Core
from ebsemu.store.sqlite import SqliteStore
from tests.test_store_contract import snapshot


class Written:
    """A stand-in volume backend that records what a restore writes."""

    def __init__(self) -> None:
        self.blocks: list[tuple[int, bytes]] = []

    def write_blocks(self, volume_id: str, blocks: Iterable[tuple[int, bytes]]) -> None:
        self.blocks += blocks


def test_a_restore_of_a_snapshot_deleted_before_it_read_the_rows_fails_and_writes_nothing(
    tmp_path: Path,
) -> None:
    digest = hashlib.sha256(b"\1" * BLOCK_SIZE).digest()
    written = Written()

    async def scenario() -> None:
        store = SqliteStore(tmp_path / "db.sqlite3")
        await store.open()
        try:
            await store.insert_snapshot(snapshot("snap-1", state=SnapshotState.COMPLETED))
            await store.add_manifest_rows("snap-1", [(0, digest)])
            assert (await store.mark_snapshot_deleted("snap-1", utcnow())).marked
            await store.remove_snapshot("snap-1")  # its rows with it
            no_blocks: dict[bytes, bytes] = {}
            core = cast(
                Core, SimpleNamespace(store=store, blocks=SimpleNamespace(get=no_blocks.get))
            )
            with pytest.raises(MissingBlockError, match="snap-1"):
                await snapshot_data.restore(core, "snap-1", "vol-1", cast(StorageBackend, written))
        finally:
            await store.close()

    asyncio.run(scenario())
    assert written.blocks == []


def test_a_capture_frees_the_blocks_only_its_replaced_seeded_rows_named(tmp_path: Path) -> None:
    old, new, kept = (bytes([n]) * BLOCK_SIZE for n in (1, 2, 3))
    blocks = LocalBlockStore(tmp_path / "blocks")
    for data in (old, kept):
        blocks.put(_digest(data), data)
    blocks.flush()

    async def scenario() -> None:
        store = SqliteStore(tmp_path / "db.sqlite3")
        await store.open()
        try:
            for snapshot_id in ("snap-1", "snap-2"):
                await store.insert_snapshot(snapshot(snapshot_id))
            await store.add_manifest_rows("snap-1", [(0, _digest(old)), (1, _digest(kept))])
            await store.copy_manifest("snap-1", "snap-2")  # snap-2's freeze seeds its manifest
            assert await store.clear_manifest("snap-1") == []  # snap-1 deleted: all still named
            core = cast(
                Core, SimpleNamespace(store=store, blocks=blocks, block_gc_lock=asyncio.Lock())
            )
            batch = [(0, _digest(new), new)]  # block 0 changed since snap-1
            put = snapshot_data._putter(blocks, cast(SnapshotSource, object()))
            assert await snapshot_data._store_batch(core, "snap-2", batch, put) == 1
            assert dict(await store.manifest("snap-2")) == {0: _digest(new), 1: _digest(kept)}
        finally:
            await store.close()

    asyncio.run(scenario())
    blocks.flush()
    assert not blocks.contains(_digest(old))
    assert blocks.contains(_digest(new)) and blocks.contains(_digest(kept))


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()
