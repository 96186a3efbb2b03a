"""The planner statistics are refreshed under load: reads queued while the reader connection
is replaced all get their answers (none runs on the connection being closed)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ebsemu.store.sqlite import SqliteStore
from tests.test_steps_close import VOLUME_ID, creating_volume


def test_reads_queued_around_a_statistics_refresh_all_succeed(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = SqliteStore(tmp_path / "db.sqlite3")
        await store.open()
        try:
            await store.insert_volume(creating_volume())

            async def reader() -> None:
                for _ in range(40):
                    volume = await store.get_volume(VOLUME_ID)
                    assert volume is not None and volume.id == VOLUME_ID

            async def refresher() -> None:
                for _ in range(10):
                    await store.refresh_statistics()

            await asyncio.gather(refresher(), *(reader() for _ in range(8)))
        finally:
            await store.close()

    asyncio.run(scenario())
