"""Removing some rows of a snapshot's manifest (an incremental capture whose changed blocks
became zeros): the rows go, and only digests no manifest references any more come back. Copying
a manifest (an incremental capture starts from its base's)."""

from __future__ import annotations

import asyncio

from tests.store_fixtures import NewStore

A, B, C = b"\1" * 32, b"\2" * 32, b"\3" * 32


def test_removed_rows_return_only_digests_nothing_else_references(new_store: NewStore) -> None:
    async def scenario() -> tuple[list[bytes], list[tuple[int, bytes]], list[tuple[int, bytes]]]:
        store = new_store()
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


def test_a_copied_manifest_has_every_row_of_its_source_which_stays_as_it_was(
    new_store: NewStore,
) -> None:
    async def scenario() -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]]:
        store = new_store()
        await store.open()
        try:
            await store.add_manifest_rows("snap-base", [(0, A), (1, B), (7, C)])
            await store.add_manifest_rows("snap-next", [(1, C), (3, A)])  # a resumed capture
            await store.copy_manifest("snap-base", "snap-next")
            return await store.manifest("snap-next"), await store.manifest("snap-base")
        finally:
            await store.close()

    rows, base = asyncio.run(scenario())
    assert rows == [(0, A), (1, B), (3, A), (7, C)]
    assert base == [(0, A), (1, B), (7, C)]
