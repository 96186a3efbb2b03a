"""Group commit in the SQLite store: concurrent writes share one durable transaction, each in
its own savepoint, and every caller hears back only after that transaction committed."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from ebsemu.model import Volume, VolumeState, VolumeType, new_id, utcnow
from ebsemu.store import sqlite_base
from ebsemu.store.sqlite import SqliteStore

OWNER = "111122223333"
REGION = "us-east-1"
OTHER_REGION = "eu-west-1"


def _volume(volume_id: str | None = None, token: str | None = None, region: str = REGION) -> Volume:
    return Volume(
        id=volume_id or new_id("vol"),
        owner_id=OWNER,
        region=region,
        zone=f"{region}a",
        size_gib=1,
        volume_type=VolumeType.GP3,
        state=VolumeState.CREATING,
        create_time=utcnow(),
        client_token=token,
        tags={"group": "g1", "Name": "v"},
    )


def _run(tmp_path: Path, scenario: Callable[[SqliteStore], Awaitable[Any]]) -> Any:
    async def go() -> Any:
        store = SqliteStore(tmp_path / "db.sqlite3")
        await store.open()
        try:
            return await scenario(store)
        finally:
            await store.close()

    return asyncio.run(go())


def _committed_ids(tmp_path: Path) -> set[str]:
    """What another connection (another process, after a crash) sees."""
    with sqlite3.connect(tmp_path / "db.sqlite3") as conn:
        return {row[0] for row in conn.execute("SELECT id FROM volumes")}


def test_concurrent_writes_share_one_transaction_and_are_committed_when_they_return(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches: list[int] = []
    real = sqlite_base.run_batch

    def counting(conn: sqlite3.Connection, works: Sequence[Any]) -> Any:
        batches.append(len(works))
        return real(conn, works)

    monkeypatch.setattr(sqlite_base, "run_batch", counting)
    volumes = [_volume() for _ in range(20)]
    seen_on_return: list[bool] = []

    async def scenario(store: SqliteStore) -> None:
        async def insert(volume: Volume) -> None:
            await store.insert_volume_with_job(volume, "create_volume")
            seen_on_return.append(volume.id in _committed_ids(tmp_path))

        await asyncio.gather(*(insert(v) for v in volumes))

    _run(tmp_path, scenario)
    assert batches == [20]
    assert seen_on_return == [True] * 20


def test_a_failing_write_undoes_only_its_own_statements(tmp_path: Path) -> None:
    first, second = _volume(), _volume()
    clash = _volume(first.id)  # same id, no ClientToken: an integrity error

    async def scenario(store: SqliteStore) -> tuple[list[Any], list[tuple[int, str, str, str]]]:
        outcomes = await asyncio.gather(
            store.insert_volume_with_job(first, "create_volume"),
            store.insert_volume_with_job(clash, "create_volume"),
            store.insert_volume_with_job(second, "create_volume"),
            return_exceptions=True,
        )
        return list(outcomes), await store.unfinished_jobs()

    outcomes, jobs = _run(tmp_path, scenario)
    assert isinstance(outcomes[1], sqlite3.IntegrityError)
    assert [o[0].id for o in (outcomes[0], outcomes[2])] == [first.id, second.id]
    assert sorted(resource for _, _, resource, _ in jobs) == sorted([first.id, second.id])
    assert _committed_ids(tmp_path) == {first.id, second.id}


def test_one_client_token_in_one_batch_creates_one_volume_and_one_job(tmp_path: Path) -> None:
    a, b = _volume(token="tok-1"), _volume(token="tok-1")

    async def scenario(store: SqliteStore) -> Any:
        results = await asyncio.gather(
            store.insert_volume_with_job(a, "create_volume"),
            store.insert_volume_with_job(b, "create_volume"),
        )
        return results, await store.unfinished_jobs()

    ((stored_a, job_a), (stored_b, job_b)), jobs = _run(tmp_path, scenario)
    assert job_a is not None and job_b is None
    assert stored_b.id == stored_a.id == a.id
    assert stored_b.tags == a.tags
    assert [(job_id, resource) for job_id, _, resource, _ in jobs] == [(job_a, a.id)]


def test_the_inserted_volume_is_what_a_read_returns(tmp_path: Path) -> None:
    volume = _volume(token="tok-2")

    async def scenario(store: SqliteStore) -> tuple[Volume, Volume | None]:
        stored, _ = await store.insert_volume_with_job(volume, "create_volume")
        return stored, await store.get_volume(volume.id)

    stored, read = _run(tmp_path, scenario)
    assert read == stored


def test_the_volume_count_of_each_region_follows_inserts_and_deletions(tmp_path: Path) -> None:
    async def scenario(store: SqliteStore) -> list[tuple[int, int, int, int]]:
        async def both() -> tuple[int, int, int, int]:
            found: list[int] = []
            for region in (REGION, OTHER_REGION):
                rows = await store._rows(
                    "SELECT COUNT(*) FROM volumes "
                    "WHERE owner_id = ? AND region = ? AND state != 'deleted'",
                    (OWNER, region),
                )
                found += [await store.count_volumes(OWNER, region), int(rows[0][0])]
            return found[0], found[1], found[2], found[3]

        await store.insert_volume(_volume())
        volumes = [_volume() for _ in range(5)]
        elsewhere = [_volume(region=OTHER_REGION) for _ in range(2)]
        # The first counts are taken in the same batch as inserts before and after them.
        await asyncio.gather(
            *(store.insert_volume(v) for v in volumes[:3]),
            store.insert_volume(elsewhere[0]),
            store.count_volumes(OWNER, REGION),
            store.count_volumes(OWNER, OTHER_REGION),
            *(store.insert_volume(v) for v in volumes[3:]),
            store.insert_volume(elsewhere[1]),
        )
        counts = [await both()]
        for volume in [*volumes[:2], elsewhere[0]]:
            await store.transition_volume(volume.id, {VolumeState.CREATING}, VolumeState.DELETING)
            await store.transition_volume(volume.id, {VolumeState.DELETING}, VolumeState.DELETED)
        await store.transition_volume(volumes[0].id, {VolumeState.DELETING}, VolumeState.DELETED)
        counts.append(await both())
        return counts

    assert _run(tmp_path, scenario) == [(6, 6, 2, 2), (4, 4, 1, 1)]
