"""The store's volume modifications: one active modification per volume, whatever the
interleaving of requests; the volume takes the target settings with the move to optimizing."""

from __future__ import annotations

import asyncio

from ebsemu.model import Volume, VolumeState, VolumeType, utcnow
from ebsemu.modification import ModificationState, VolumeModification, VolumeSettings
from tests.store_fixtures import NewStore

ORIGINAL = VolumeSettings(1, VolumeType.GP3, 3000, 125, False)
TARGET = VolumeSettings(4, VolumeType.IO2, 4000, None, False)


def modification(volume_id: str) -> VolumeModification:
    return VolumeModification(
        volume_id=volume_id,
        owner_id="000000000000",
        region="us-east-1",
        state=ModificationState.MODIFYING,
        original=ORIGINAL,
        target=TARGET,
        start_time=utcnow(),
    )


def volume(volume_id: str) -> Volume:
    return Volume(
        id=volume_id,
        owner_id="000000000000",
        region="us-east-1",
        zone="us-east-1a",
        size_gib=1,
        volume_type=VolumeType.GP3,
        state=VolumeState.AVAILABLE,
        create_time=utcnow(),
        iops=3000,
        throughput=125,
    )


def test_only_one_of_concurrent_modifications_begins_and_the_next_waits_for_the_end(
    new_store: NewStore,
) -> None:
    async def scenario() -> None:
        store = new_store()
        await store.open()
        try:
            vid = "vol-0123456789abcdef0"
            await store.insert_volume(volume(vid))
            began = await asyncio.gather(*(store.begin_modification(modification(vid))
                                           for _ in range(8)))  # fmt: skip
            assert sorted(began) == [False] * 7 + [True]

            assert await store.apply_modification(vid, TARGET, 50)
            assert not await store.apply_modification(vid, TARGET, 50)  # optimizing already
            stored = await store.get_volume(vid)
            assert stored is not None
            assert (stored.size_gib, stored.volume_type, stored.iops, stored.throughput) == (
                4, VolumeType.IO2, 4000, None,
            )  # fmt: skip
            assert not await store.begin_modification(modification(vid))  # still optimizing

            assert await store.finish_modification(vid, ModificationState.COMPLETED, utcnow(), None)
            assert not await store.finish_modification(
                vid, ModificationState.FAILED, utcnow(), "late"
            )
            done = await store.get_modification(vid)
            assert done is not None and done.state is ModificationState.COMPLETED
            assert (done.progress, done.status_message) == (100, None)
            assert done.end_time is not None

            assert await store.begin_modification(modification(vid))  # the next one
            again = await store.get_modification(vid)
            assert again is not None and again.seq > done.seq
            assert again.state is ModificationState.MODIFYING and again.end_time is None
        finally:
            await store.close()

    asyncio.run(scenario())
