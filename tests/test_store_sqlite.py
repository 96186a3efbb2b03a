"""Each store stays usable whatever moment a caller is cancelled at: a write queued for the
group commit (``add_manifest_rows``) and one in a transaction of its own (``direct_key``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from ebsemu.store.base import Store
from tests.store_fixtures import NewStore

Write = Callable[[Store, str], Coroutine[Any, Any, object]]


async def _manifest_rows(store: Store, name: str) -> object:
    await store.add_manifest_rows(name, [(7, b"\1" * 32)])
    return await store.manifest(name)


async def _direct_key(store: Store, name: str) -> object:
    return await store.direct_key(name, name.encode())


@pytest.mark.parametrize("write", [_manifest_rows, _direct_key], ids=["group", "transaction"])
@pytest.mark.parametrize("steps_before_cancel", range(6))
def test_a_write_cancelled_at_any_step_leaves_no_transaction_open(
    new_store: NewStore, steps_before_cancel: int, write: Write
) -> None:
    async def scenario() -> tuple[object, object]:
        store = new_store()
        await store.open()
        try:
            task = asyncio.create_task(write(store, "snap-a"))
            for _ in range(steps_before_cancel):
                await asyncio.sleep(0)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            after = await asyncio.wait_for(write(store, "snap-b"), timeout=10)
            return after, await write(store, "snap-c")
        finally:
            await store.close()

    after, next_one = asyncio.run(scenario())
    if write is _manifest_rows:
        assert after == [(7, b"\1" * 32)]
        assert next_one == [(7, b"\1" * 32)]
    else:
        assert after == b"snap-b"
        assert next_one == b"snap-c"
