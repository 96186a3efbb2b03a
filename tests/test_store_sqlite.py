"""Each store stays usable whatever moment a caller is cancelled at."""

from __future__ import annotations

import asyncio

import pytest

from tests.store_fixtures import NewStore


@pytest.mark.parametrize("steps_before_cancel", range(6))
def test_a_write_cancelled_at_any_step_leaves_no_transaction_open(
    new_store: NewStore, steps_before_cancel: int
) -> None:
    async def scenario() -> list[tuple[int, bytes]]:
        store = new_store()
        await store.open()
        try:
            task = asyncio.create_task(store.add_manifest_rows("snap-a", [(0, b"\0" * 32)]))
            for _ in range(steps_before_cancel):
                await asyncio.sleep(0)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await store.add_manifest_rows("snap-b", [(7, b"\1" * 32)])
            return await store.manifest("snap-b")
        finally:
            await store.close()

    assert asyncio.run(scenario()) == [(7, b"\1" * 32)]
