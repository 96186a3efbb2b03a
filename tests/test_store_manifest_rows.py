"""Removing some rows of a snapshot's manifest (an incremental capture whose changed blocks
became zeros): the rows go, and only digests no manifest references any more come back."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ebsemu.store.sqlite import SqliteStore

A, B, C = b"\1" * 32, b"\2" * 32, b"\3" * 32


def test_removed_rows_return_only_digests_nothing_else_references(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[bytes], list[tuple[int, bytes]], list[tuple[int, bytes]]]:
        store = SqliteStore(tmp_path / "db.sqlite3")
        await store.open()
        try:
            await store.add_manifest_rows("snap-base", [(0, A), (1, B)])
            await store.add_manifest_rows("snap-next", [(0, A), (1, B), (2, C)])
            freed = await store.remove_manifest_rows("snap-next", [1, 2, 9])
            return freed, await store.manifest("snap-next"), await store.manifest("snap-base")
        finally:
            await store.close()

    freed, rows, base = asyncio.run(scenario())
    assert freed == [C]  # B is still in the base's manifest
    assert rows == [(0, A)]
    assert base == [(0, A), (1, B)]
