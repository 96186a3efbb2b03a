"""The EBS direct API's queries on each store: manifests compared by digest, puts, timeouts,
tokens."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ebsemu.model import ZERO_DIGEST, Snapshot, SnapshotState, utcnow
from ebsemu.store.base import Store
from ebsemu.store.direct import ChangedRow, DirectMeta
from tests.store_fixtures import NewStore

T = TypeVar("T")
A, B, C = (bytes([n]) * 32 for n in (1, 2, 3))


def run(new_store: NewStore, scenario: Callable[[Store], Awaitable[T]]) -> T:
    async def opened() -> T:
        store = new_store()
        await store.open()
        try:
            return await scenario(store)
        finally:
            await store.close()

    return asyncio.run(opened())


def pending(
    snapshot_id: str, parent: str | None = None, **meta: Any
) -> tuple[Snapshot, DirectMeta]:
    snapshot = Snapshot(
        id=snapshot_id,
        owner_id="000000000000",
        region="us-east-1",
        volume_id="vol-ffffffff",
        volume_size_gib=1,
        state=SnapshotState.PENDING,
        start_time=utcnow(),
        tags={"k": "v"},
    )
    base = DirectMeta(snapshot_id, "000000000000", parent, None, "d", 60, time.time())
    return snapshot, dataclasses.replace(base, **meta)


def test_changed_blocks_are_the_indexes_whose_digests_differ_either_way(
    new_store: NewStore,
) -> None:
    async def scenario(store: Store) -> tuple[list[ChangedRow], ...]:
        await store.add_manifest_rows("snap-1", [(0, A), (1, B), (2, C), (5, A)])
        await store.add_manifest_rows("snap-2", [(0, A), (1, C), (3, B), (5, A)])
        return (
            await store.changed_page("snap-1", "snap-2", 0, 100),
            await store.changed_page("snap-1", "snap-2", 2, 1),
            await store.changed_page(None, "snap-2", 1, 2),
        )

    every, window, alone = run(new_store, scenario)
    assert every == [ChangedRow(1, B, C), ChangedRow(2, C, None), ChangedRow(3, None, B)]
    assert window == [ChangedRow(2, C, None)]
    assert alone == [ChangedRow(1, None, C), ChangedRow(3, None, B)]


def test_a_child_starts_with_its_parents_manifest_and_puts_replace_or_punch_it(
    new_store: NewStore,
) -> None:
    async def scenario(store: Store) -> tuple[object, ...]:
        parent, parent_meta = pending("snap-p")
        await store.start_direct_snapshot(parent, parent_meta)
        await store.add_manifest_rows("snap-p", [(0, A), (1, B)])
        await store.finish_direct_snapshot("snap-p", 0)
        child, child_meta = pending("snap-c", parent="snap-p", client_token="t")
        assert await store.start_direct_snapshot(child, child_meta) == "snap-c"
        again, again_meta = pending("snap-x", client_token="t")
        repeated = await store.start_direct_snapshot(again, again_meta)
        await store.put_direct_block("snap-c", 1, ZERO_DIGEST)
        await store.put_direct_block("snap-c", 2, C)
        written = await store.direct_written("snap-c")
        finished = await store.finish_direct_snapshot("snap-c", 0)
        late = await store.put_direct_block("snap-c", 3, A)
        return (
            repeated,
            written,
            finished,
            late,
            await store.manifest("snap-c"),
            await store.direct_written("snap-c"),
            await store.get_snapshot("snap-x"),
        )

    repeated, written, finished, late, manifest, after, absent = run(new_store, scenario)
    assert repeated == "snap-c"  # the ClientToken names the first snapshot; nothing inserted
    assert absent is None
    assert written == [(1, ZERO_DIGEST), (2, C)]
    assert (finished, late) == (True, None)
    assert manifest == [(0, A), (2, C)]
    assert after == []


def test_overdue_snapshots_are_pending_ones_past_their_timeout(new_store: NewStore) -> None:
    async def scenario(store: Store) -> list[str]:
        now = time.time()
        for name, minutes, idle in (("snap-old", 10, 700.0), ("snap-new", 10, 500.0)):
            snapshot, meta = pending(name, timeout_minutes=minutes, last_activity=now - idle)
            await store.start_direct_snapshot(snapshot, meta)
        done, meta = pending("snap-done", timeout_minutes=10, last_activity=now - 9000)
        await store.start_direct_snapshot(done, meta)
        await store.finish_direct_snapshot("snap-done", 0)
        return await store.overdue_direct_snapshots(now, 60.0)

    assert run(new_store, scenario) == ["snap-old"]


def test_the_token_key_is_made_once_and_kept(new_store: NewStore) -> None:
    async def scenario(store: Store) -> tuple[bytes, bytes]:
        return await store.direct_key("tokens", b"first"), await store.direct_key("tokens", b"x")

    assert run(new_store, scenario) == (b"first", b"first")
    assert run(new_store, scenario) == (b"first", b"first")


def test_a_put_over_a_block_no_other_row_names_gives_that_block_back_to_be_freed(
    new_store: NewStore,
) -> None:
    async def scenario(store: Store) -> list[list[bytes] | None]:
        parent, parent_meta = pending("snap-p")
        await store.start_direct_snapshot(parent, parent_meta)
        await store.add_manifest_rows("snap-p", [(0, A), (1, B)])
        await store.finish_direct_snapshot("snap-p", 0)
        child, child_meta = pending("snap-c", parent="snap-p")
        await store.start_direct_snapshot(child, child_meta)
        return [
            await store.put_direct_block("snap-c", 0, C),  # A: the parent still names it
            await store.put_direct_block("snap-c", 2, C),  # over a hole
            await store.put_direct_block("snap-c", 2, C),  # the same block again
            await store.put_direct_block("snap-c", 2, B),  # C: row 0 still names it
            await store.put_direct_block("snap-c", 0, ZERO_DIGEST),  # C: named by nothing now
            await store.put_direct_block("snap-c", 2, A),  # B: the parent still names it
        ]

    assert run(new_store, scenario) == [[], [], [], [], [C], []]
