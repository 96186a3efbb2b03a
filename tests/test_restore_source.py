"""A restore reads its snapshot's manifest, then makes sure the snapshot is still there: one
deleted meanwhile may have lost its rows already, and writing what is left of them would leave
an `available` volume short of its data. It fails instead (the volume goes to `error`)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from backends.base import StorageBackend
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
