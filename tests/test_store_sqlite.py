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
ROW = (7, b"\1" * 32)


async def _manifest_rows(store: Store, name: str) -> object:
    """A manifest row added, then the manifest read back: [ROW]."""
    await store.add_manifest_rows(name, [ROW])
    return await store.manifest(name)


async def _direct_key(store: Store, name: str) -> object:
    """A key stored under ``name`` (its bytes as the secret), then returned: name.encode()."""
    return await store.direct_key(name, name.encode())


WRITES = [
    pytest.param(_manifest_rows, lambda name: [ROW], id="group"),
    pytest.param(_direct_key, lambda name: name.encode(), id="transaction"),
]


@pytest.mark.parametrize(("write", "expected"), WRITES)
@pytest.mark.parametrize("steps_before_cancel", range(6))
def test_a_write_cancelled_at_any_step_leaves_no_transaction_open(
    new_store: NewStore,
    steps_before_cancel: int,
    write: Write,
    expected: Callable[[str], object],
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

    assert asyncio.run(scenario()) == (expected("snap-b"), expected("snap-c"))
