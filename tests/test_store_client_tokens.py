"""One read answers what CreateVolume needs to know of a ClientToken: the owner's volume it
created, or else the purged volume it created while the token is remembered; a volume is
not inserted with a token whose volume was purged."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import pytest

from ebsemu.model import VolumeState
from ebsemu.store.base import ClientTokenRetired
from ebsemu.store.sqlite import SqliteStore
from tests.test_steps_close import VOLUME_ID, creating_volume

OWNER = "000000000000"


def test_a_token_names_its_volume_then_its_purged_volume_and_no_other_owner_sees_it(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        store = SqliteStore(tmp_path / "db.sqlite3")
        await store.open()
        try:
            assert await store.client_token_use(OWNER, "token-1") == (None, None)
            volume = dataclasses.replace(creating_volume(), client_token="token-1")
            await store.insert_volume(volume)
            found, retired = await store.client_token_use(OWNER, "token-1")
            assert found is not None and found.id == VOLUME_ID and retired is None
            assert await store.client_token_use("111111111111", "token-1") == (None, None)
            assert await store.client_token_use(OWNER, "token-2") == (None, None)

            assert await store.transition_volume(
                VOLUME_ID, {VolumeState.CREATING}, VolumeState.DELETED
            )
            assert await store.purge_deleted_volumes(time.time() + 1) == [VOLUME_ID]
            assert await store.client_token_use(OWNER, "token-1") == (None, VOLUME_ID)
            # The token stays spent: a new volume is not inserted with it.
            again = dataclasses.replace(volume, id="vol-0fedcba9876543210")
            with pytest.raises(ClientTokenRetired):
                await store.insert_volume_with_job(again, "create_volume")
            assert await store.get_volume(again.id) is None
            assert await store.unfinished_jobs() == []
        finally:
            await store.close()

    asyncio.run(scenario())
