"""A capture's Progress: its first rise is written at once (a client sees the capture moving),
later ones at most once per PROGRESS_EVERY seconds, since each is a durable commit."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from ebsemu.service import snapshot_data
from ebsemu.service.snapshot_data import Progress
from ebsemu.store.sqlite import SqliteStore
from tests.test_store_contract import snapshot


def test_progress_is_written_at_its_first_rise_then_at_most_once_per_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(snapshot_data, "PROGRESS_EVERY", 0.3)

    async def scenario() -> list[int]:
        store = SqliteStore(tmp_path / "db.sqlite3")
        await store.open()
        try:
            await store.insert_snapshot(snapshot("snap-1"))
            progress = Progress(store, "snap-1", total_blocks=100)
            seen = []
            for index in (10, 20, 30):  # one after the other, well within the interval
                await progress.reached(index)
                seen.append(await _percent(store))
            time.sleep(0.3)
            await progress.reached(40)
            seen.append(await _percent(store))
            await progress.reached(50)  # within the interval again
            seen.append(await _percent(store))
            time.sleep(0.3)
            await progress.reached(100)  # never 100 before the capture completes
            seen.append(await _percent(store))
            return seen
        finally:
            await store.close()

    assert asyncio.run(scenario()) == [10, 10, 10, 40, 40, 99]


async def _percent(store: SqliteStore) -> int:
    found = await store.get_snapshot("snap-1")
    assert found is not None
    return found.progress
