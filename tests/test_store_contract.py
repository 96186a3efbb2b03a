"""The Store contract, on each store (SQLite and PostgreSQL): compare-and-set transitions,
ClientTokens, keyset pagination, filters with wildcards and escapes, tags, attachments, jobs
and their leases, snapshot lineages, block public access for snapshots, and the
migrations."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TypeVar

import asyncpg
import pytest

from ebsemu.fast_restore import FastRestore, FastRestoreState
from ebsemu.model import (
    COPY_VOLUME_ID,
    Attachment,
    AttachmentState,
    Instance,
    Snapshot,
    SnapshotBlockPublicAccessState,
    SnapshotState,
    Volume,
    VolumeState,
    VolumeType,
    utcnow,
)
from ebsemu.service import lineage
from ebsemu.snapshot_lock import LockMode, SnapshotLock
from ebsemu.store.base import (
    Filter,
    ListQuery,
    Page,
    QuotaReached,
    Reach,
    RestoreSourceGone,
    SnapshotDeletion,
    Store,
    VolumeIo,
    VolumeNotSnapshottable,
)
from ebsemu.store.direct import DirectMeta
from ebsemu.store.pg_dialect import glob_to_like, translate
from ebsemu.store.pg_schema import PG_MIGRATIONS
from ebsemu.store.postgres import PostgresStore
from ebsemu.store.postgres_base import redact_dsn
from ebsemu.store.schema import MIGRATIONS
from ebsemu.store.sql_base import COUNT_SNAPSHOTS_SQL, COUNT_VOLUMES_SQL
from ebsemu.store.sql_filters import glob_pattern
from ebsemu.store.sqlite import SqliteStore
from ebsemu.store.sqlite_steps import JobNotHeld
from tests.pg_fixtures import PostgresServer
from tests.store_fixtures import STORES, NewStore, migrated_database, postgres_store_factory

T = TypeVar("T")
OWNER = "000000000000"
OTHER_OWNER = "111111111111"
REGION = "us-east-1"
OTHER_REGION = "eu-west-1"


def run(new_store: NewStore, scenario: Callable[[Store], Awaitable[T]]) -> T:
    async def opened() -> T:
        store = new_store()
        await store.open()
        try:
            return await scenario(store)
        finally:
            await store.close()

    return asyncio.run(opened())


def volume(volume_id: str, **fields: object) -> Volume:
    values: dict[str, object] = {
        "id": volume_id,
        "owner_id": OWNER,
        "region": REGION,
        "zone": "us-east-1a",
        "size_gib": 1,
        "volume_type": VolumeType.GP3,
        "state": VolumeState.AVAILABLE,
        "create_time": utcnow(),
    }
    values.update(fields)
    return Volume(**values)  # type: ignore[arg-type]


def snapshot(snapshot_id: str, **fields: object) -> Snapshot:
    values: dict[str, object] = {
        "id": snapshot_id,
        "owner_id": OWNER,
        "region": REGION,
        "volume_id": "vol-1",
        "volume_size_gib": 1,
        "state": SnapshotState.PENDING,
        "start_time": utcnow(),
    }
    values.update(fields)
    return Snapshot(**values)  # type: ignore[arg-type]


def query(**fields: object) -> ListQuery:
    return ListQuery(owner_ids=frozenset({OWNER}), region=REGION, **fields)  # type: ignore[arg-type]


def test_the_postgresql_migrations_match_the_sqlite_ones_one_for_one(
    postgres_server: PostgresServer,
) -> None:
    dsn = postgres_server.create_database(f"schema_{uuid.uuid4().hex[:12]}")

    async def versions() -> list[int]:
        found = []
        for _ in range(2):  # the second opening finds the schema current
            store = PostgresStore(dsn, "test")
            await store.open()
            found.append(await store.schema_version())
            await store.close()
        return found

    assert len(PG_MIGRATIONS) == len(MIGRATIONS)
    assert asyncio.run(versions()) == [len(MIGRATIONS)] * 2


def test_a_state_change_applies_only_from_an_expected_state(new_store: NewStore) -> None:
    async def scenario(store: Store) -> tuple[object, ...]:
        await store.insert_volume(volume("vol-1", state=VolumeState.CREATING))
        first = await store.transition_volume(
            "vol-1", {VolumeState.CREATING}, VolumeState.AVAILABLE
        )
        second = await store.transition_volume(
            "vol-1", {VolumeState.CREATING}, VolumeState.ERROR, "late"
        )
        racing = await asyncio.gather(
            *(
                store.transition_volume("vol-1", {VolumeState.AVAILABLE}, VolumeState.DELETING)
                for _ in range(8)
            )
        )
        stored = await store.get_volume("vol-1")
        assert stored is not None
        return first, second, sorted(racing), stored.state

    first, second, racing, state = run(new_store, scenario)
    assert (first, second) == (True, False)
    assert racing == [False] * 7 + [True]
    assert state == VolumeState.DELETING


def test_a_volume_copy_keeps_the_id_of_its_source(new_store: NewStore) -> None:
    async def scenario(store: Store) -> tuple[object, object, object]:
        await store.insert_volume(volume("vol-1"))
        await store.insert_volume(volume("vol-2", source_volume_id="vol-1"))
        one, two = await store.get_volume("vol-1"), await store.get_volume("vol-2")
        assert one is not None and two is not None
        listed = await store.list_volumes(query())
        return (
            one.source_volume_id,
            two.source_volume_id,
            [v.source_volume_id for v in listed.items],
        )

    assert run(new_store, scenario) == (None, "vol-1", [None, "vol-1"])


def test_a_client_token_names_one_volume_even_under_concurrent_inserts(
    new_store: NewStore,
) -> None:
    async def scenario(store: Store) -> tuple[set[str], int, str | None]:
        inserted = await asyncio.gather(
            *(store.insert_volume(volume(f"vol-{n}", client_token="tok")) for n in range(6))
        )
        count = await store.count_volumes(OWNER, REGION)
        await store.transition_volume(inserted[0].id, {VolumeState.AVAILABLE}, VolumeState.DELETED)
        await store.purge_deleted_volumes(time.time() + 1)
        return {v.id for v in inserted}, count, await store.retired_token_volume(OWNER, "tok")

    ids, count, retired = run(new_store, scenario)
    assert len(ids) == 1 and count == 1
    assert retired == next(iter(ids))


def test_the_quota_counts_are_per_owner_and_region_without_deleted_records(
    new_store: NewStore,
) -> None:
    async def scenario(store: Store) -> list[int]:
        for n, (owner, region) in enumerate(
            [(OWNER, REGION)] * 3 + [(OWNER, OTHER_REGION), (OTHER_OWNER, REGION)]
        ):
            await store.insert_volume(volume(f"vol-{n}", owner_id=owner, region=region))
            await store.insert_snapshot(snapshot(f"snap-{n}", owner_id=owner, region=region))
        # Counted once before the deletion (SQLite keeps the volume count from then on).
        before = await store.count_volumes(OWNER, REGION)
        await store.transition_volume("vol-0", {VolumeState.AVAILABLE}, VolumeState.DELETED)
        assert (await store.mark_snapshot_deleted("snap-0", datetime.now(UTC))).marked
        return [
            before,
            await store.count_volumes(OWNER, REGION),
            await store.count_volumes(OWNER, OTHER_REGION),
            await store.count_volumes(OTHER_OWNER, REGION),
            await store.count_volumes(OTHER_OWNER, OTHER_REGION),
            await store.count_snapshots(OWNER, REGION),
            await store.count_snapshots(OWNER, OTHER_REGION),
            await store.count_snapshots(OTHER_OWNER, REGION),
            await store.count_snapshots(OTHER_OWNER, OTHER_REGION),
        ]

    assert run(new_store, scenario) == [3, 2, 1, 1, 0, 2, 1, 1, 0]


def test_block_public_access_is_per_account_and_region_and_only_block_all_hides_public_grants(
    new_store: NewStore,
) -> None:
    state = SnapshotBlockPublicAccessState
    public = "snap-public"  # shared with everyone and OTHER_OWNER, in REGION
    private = "snap-private"  # shared with OTHER_OWNER only, in REGION
    elsewhere = "snap-elsewhere"  # shared like ``public``, in OTHER_REGION

    async def seen(store: Store, region: str, snapshot_id: str) -> list[object]:
        """The owner's setting, what RestorableBy=all lists, the grants in force."""
        listed = await store.list_snapshots(
            ListQuery(
                owner_ids=frozenset({OTHER_OWNER}),
                region=region,
                reach=(Reach(None, frozenset({"all"})),),
            )
        )
        return [
            await store.snapshot_block_public_access(OWNER, region),
            [s.id for s in listed.items],
            await store.effective_snapshot_grantees(snapshot_id),
        ]

    async def scenario(store: Store) -> list[object]:
        for snapshot_id, region in ((public, REGION), (private, REGION), (elsewhere, OTHER_REGION)):
            await store.insert_snapshot(snapshot(snapshot_id, region=region))
            await store.change_snapshot_grantees(snapshot_id, ["all", OTHER_OWNER], [])
        await store.change_snapshot_grantees(private, [], ["all"])
        found: list[object] = [await seen(store, REGION, public)]
        for blocked in (state.BLOCK_NEW_SHARING, state.BLOCK_ALL_SHARING):
            await store.set_snapshot_block_public_access(OWNER, REGION, blocked)
            found.append(await seen(store, REGION, public))
        found.append(await seen(store, OTHER_REGION, elsewhere))
        found.append(await store.snapshot_block_public_access(OTHER_OWNER, REGION))
        found.append(await store.snapshot_grantees(public))  # the grant itself is kept
        found.append(await store.effective_snapshot_grantees(private))
        await store.set_snapshot_block_public_access(OWNER, REGION, state.UNBLOCKED)
        found.append(await seen(store, REGION, public))
        return found

    both = [OTHER_OWNER, "all"]
    assert run(new_store, scenario) == [
        [state.UNBLOCKED, [public], both],
        [state.BLOCK_NEW_SHARING, [public], both],
        [state.BLOCK_ALL_SHARING, [], [OTHER_OWNER]],
        [state.UNBLOCKED, [elsewhere], both],
        state.UNBLOCKED,
        both,
        [OTHER_OWNER],
        [state.UNBLOCKED, [public], both],
    ]


async def _opened(store: Store) -> None:
    """Nothing more: opening the store migrated its database."""


def _query_plan(kind: str, request: pytest.FixtureRequest, sql: str) -> str:
    """How each store's engine answers ``sql`` (SQLite's dialect) for OWNER in REGION, on a
    database with the current schema (PostgreSQL told not to scan tables whole, as it would
    on a table as small as an empty one)."""
    params = (OWNER, REGION)
    if kind == "sqlite":
        path = request.getfixturevalue("tmp_path") / "db.sqlite3"
        run(lambda: SqliteStore(path), _opened)
        with contextlib.closing(sqlite3.connect(path)) as db:
            return "\n".join(row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", params))
    server: PostgresServer = request.getfixturevalue("postgres_server")
    dsn = migrated_database(server, "plans")

    async def explain() -> str:
        connection = await asyncpg.connect(dsn)
        try:
            await connection.execute("SET enable_seqscan = off")
            rows = await connection.fetch(f"EXPLAIN {translate(sql).sql}", *params)
            return "\n".join(row[0] for row in rows)
        finally:
            await connection.close()

    return asyncio.run(explain())


@pytest.mark.parametrize("kind", STORES)
def test_the_quota_counts_are_answered_from_an_index_alone(
    kind: str, request: pytest.FixtureRequest
) -> None:
    volumes = _query_plan(kind, request, COUNT_VOLUMES_SQL)
    snapshots = _query_plan(kind, request, COUNT_SNAPSHOTS_SQL)
    if kind == "sqlite":
        assert "COVERING INDEX volumes_owner_state (owner_id=? AND region=?)" in volumes
        deleted_too = "(owner_id=? AND region=? AND deleted=?)"
        assert f"COVERING INDEX snapshots_owner_deleted {deleted_too}" in snapshots
    else:
        assert "Index Only Scan using volumes_owner_state" in volumes
        assert "Index Only Scan using snapshots_owner_deleted" in snapshots


def test_pages_follow_insertion_order_and_resume_after_the_last_one(new_store: NewStore) -> None:
    async def scenario(store: Store) -> list[list[str]]:
        for n in range(7):
            await store.insert_volume(volume(f"vol-{n}"))
        pages: list[list[str]] = []
        after = 0
        while True:
            page = await store.list_volumes(query(after_seq=after, limit=3))
            pages.append([v.id for v in page.items])
            if page.last_seq is None:
                return pages
            after = page.last_seq

    assert run(new_store, scenario) == [
        ["vol-0", "vol-1", "vol-2"],
        ["vol-3", "vol-4", "vol-5"],
        ["vol-6"],
    ]


def test_filters_match_wildcards_and_escaped_literals_case_sensitively(
    new_store: NewStore,
) -> None:
    names = ["web-1", "web-2", "db_1", "a*b", "a%b", "Web-3", "x\\y"]

    async def scenario(store: Store) -> dict[str, list[str]]:
        for n, name in enumerate(names):
            await store.insert_volume(
                volume(f"vol-{n}", tags={"Name": name}, encrypted=n % 2 == 0, size_gib=n + 1)
            )

        async def ids(*filters: tuple[str, tuple[str, ...]]) -> list[str]:
            page = await store.list_volumes(
                query(filters=tuple(Filter(name, values) for name, values in filters))
            )
            return [str(v.tags["Name"]) for v in page.items]

        return {
            "star": await ids(("tag:Name", ("web-*",))),
            "question": await ids(("tag:Name", ("db?1",))),
            "literal star": await ids(("tag:Name", ("a\\*b",))),
            "percent is no wildcard": await ids(("tag:Name", ("a%*",))),
            "underscore is no wildcard": await ids(("tag:Name", ("db_*",)), ("size", ("3",))),
            "backslash": await ids(("tag:Name", ("x\\\\y",))),
            "boolean": await ids(("encrypted", ("true",)), ("tag-key", ("Na*",))),
            "no values": await ids(("tag:Name", ())),
        }

    found = run(new_store, scenario)
    assert found["star"] == ["web-1", "web-2"]
    assert found["question"] == ["db_1"]
    assert found["literal star"] == ["a*b"]
    assert found["percent is no wildcard"] == ["a%b"]
    assert found["underscore is no wildcard"] == ["db_1"]
    assert found["backslash"] == ["x\\y"]
    assert found["boolean"] == ["web-1", "db_1", "a%b", "x\\y"]
    assert found["no values"] == names


def test_tags_are_set_replaced_deleted_and_listed_in_pages(new_store: NewStore) -> None:
    async def scenario(store: Store) -> tuple[object, ...]:
        await store.insert_volume(volume("vol-1"))
        await store.insert_snapshot(snapshot("snap-1", tags={"a": "1"}))
        await store.set_tags([("vol-1", "volume"), ("snap-1", "snapshot")], OWNER, {"k": "v"})
        await store.set_tags([("vol-1", "volume")], OWNER, {"k": "w", "z": "9"})
        await store.delete_tags(["snap-1"], [("a", "other"), ("k", None)])
        first = await store.list_tags(query(limit=2))
        assert first.last_seq is not None
        rest = await store.list_tags(query(limit=2, after_seq=first.last_seq))
        by_key = await store.list_tags(query(filters=(Filter("key", ("k",)),)))
        return (
            [(t.resource_id, t.key, t.value) for t in first.items + rest.items],
            [(t.resource_id, t.value) for t in by_key.items],
            await store.tag_count("vol-1"),
        )

    listed, by_key, count = run(new_store, scenario)
    assert sorted(listed) == [("snap-1", "a", "1"), ("vol-1", "k", "w"), ("vol-1", "z", "9")]
    assert by_key == [("vol-1", "w")]
    assert count == 2


def test_a_volumes_latest_completed_snapshot_skips_pending_deleted_and_other_ones(
    new_store: NewStore,
) -> None:
    async def scenario(store: Store) -> list[str | None]:
        for snapshot_id, volume_id in (
            ("snap-1", "vol-1"),
            ("snap-2", "vol-1"),
            ("snap-4", "vol-2"),
        ):
            await store.insert_snapshot(snapshot(snapshot_id, volume_id=volume_id))
            assert await store.complete_snapshot(snapshot_id, 0)
        await store.insert_snapshot(snapshot("snap-3"))  # newer, still pending
        newest = await store.latest_completed_snapshot("vol-1")
        assert (await store.mark_snapshot_deleted("snap-2", datetime.now(UTC))).marked
        return [
            newest,
            await store.latest_completed_snapshot("vol-1"),
            await store.latest_completed_snapshot("vol-2"),
            await store.latest_completed_snapshot("vol-3"),
        ]

    assert run(new_store, scenario) == ["snap-2", "snap-1", "snap-4", None]


def test_one_volume_gets_one_attachment_however_many_try_at_once(new_store: NewStore) -> None:
    async def scenario(store: Store) -> tuple[list[bool], object, object]:
        await store.insert_volume(volume("vol-1"))
        tries = [
            Attachment("vol-1", f"i-{n}", "/dev/sdf", AttachmentState.ATTACHING, utcnow())
            for n in range(6)
        ]
        won = await asyncio.gather(*(store.begin_attach(a) for a in tries))
        stored = await store.get_volume("vol-1")
        assert stored is not None
        winner = stored.attachments[0].instance_id
        await store.finish_detach("vol-1", winner)
        after = await store.get_volume("vol-1")
        assert after is not None
        return won, (stored.state, len(stored.attachments)), (after.state, after.attachments)

    won, during, after = run(new_store, scenario)
    assert sorted(won) == [False] * 5 + [True]
    assert during == (VolumeState.IN_USE, 1)
    assert after == (VolumeState.AVAILABLE, [])


def test_a_multi_attach_volume_takes_attachments_up_to_its_most_one_per_instance(
    new_store: NewStore,
) -> None:
    async def scenario(store: Store) -> tuple[list[bool], bool, bool, object, object]:
        await store.insert_volume(volume("vol-1", volume_type=VolumeType.IO2, multi_attach=True))
        await store.insert_volume(volume("vol-2"))  # not Multi-Attach: one only, as before
        tries = [
            Attachment("vol-1", f"i-{n}", "/dev/sdf", AttachmentState.ATTACHING, utcnow())
            for n in range(6)
        ]
        won = await asyncio.gather(*(store.begin_attach(a, most=4) for a in tries))
        winner = next(a for a, ok in zip(tries, won, strict=True) if ok)
        again = await store.begin_attach(winner, most=4)  # the same instance twice
        plain = [
            await store.begin_attach(
                Attachment("vol-2", f"i-{n}", "/dev/sdg", AttachmentState.ATTACHING, utcnow()),
                most=4,
            )
            for n in range(2)
        ]
        during = await store.get_volume("vol-1")
        assert during is not None
        for attachment in during.attachments[:-1]:
            await store.finish_detach("vol-1", attachment.instance_id)
        last = await store.get_volume("vol-1")
        assert last is not None
        await store.finish_detach("vol-1", last.attachments[0].instance_id)
        after = await store.get_volume("vol-1")
        assert after is not None
        states = (during.state, len(during.attachments), last.state, len(last.attachments))
        return won, again, plain == [True, False], states, (after.state, after.attachments)

    won, again, plain, states, after = run(new_store, scenario)
    assert sorted(won) == [False] * 2 + [True] * 4
    assert not again
    assert plain
    assert states == (VolumeState.IN_USE, 4, VolumeState.IN_USE, 1)
    assert after == (VolumeState.AVAILABLE, [])


def test_one_device_of_an_instance_gets_one_volume_however_many_try_at_once(
    postgres_server: PostgresServer,
) -> None:
    # On PostgreSQL, where servers sharing the database do not share their in-process locks
    # (one SQLite server serializes attaches to an instance in the attach service).
    new_store = postgres_store_factory(postgres_server)

    async def scenario(store: Store) -> tuple[list[bool], list[str]]:
        for n in range(4):
            await store.insert_volume(volume(f"vol-{n}"))
        tries = [
            Attachment(f"vol-{n}", "i-1", "/dev/sdf", AttachmentState.ATTACHING, utcnow())
            for n in range(4)
        ]
        won = await asyncio.gather(*(store.begin_attach(a) for a in tries))
        states = [(await store.get_volume(f"vol-{n}")).state.value for n in range(4)]  # type: ignore[union-attr]
        return won, states

    won, states = run(new_store, scenario)
    assert sorted(won) == [False] * 3 + [True]
    assert sorted(states) == ["available"] * 3 + ["in-use"]  # the losers rolled back


def test_instances_sync_and_stranded_attachments_are_found(new_store: NewStore) -> None:
    async def scenario(store: Store) -> tuple[object, ...]:
        seen = [
            Instance("i-1", OWNER, REGION, "us-east-1a", "local", "dom1", "running", utcnow()),
            Instance("i-2", OWNER, REGION, "us-east-1a", "local", "dom2", "running", utcnow()),
        ]
        await store.sync_instances("local", seen)
        gone = await store.sync_instances("local", seen[:1])
        await store.insert_volume(volume("vol-1"))
        await store.begin_attach(
            Attachment("vol-1", "i-1", "/dev/sdf", AttachmentState.ATTACHING, utcnow())
        )
        instances = await store.list_instances(query())
        return gone, [(i.id, i.state) for i in instances.items], await store.stranded()

    gone, instances, stranded = run(new_store, scenario)
    assert gone == ["i-2"]
    assert instances == [("i-1", "running"), ("i-2", "terminated")]
    assert [(kind, rid) for kind, rid, _ in stranded] == [("attach_volume", "vol-1")]
    assert '"instance_id"' in stranded[0][2] and '"i-1"' in stranded[0][2]


def test_a_stranded_attachment_of_a_multi_attach_volume_is_found_beside_a_running_attach(
    new_store: NewStore,
) -> None:
    """Its volume's other attachment has its attach job running: the job was matched by
    volume only, so the stranded attachment stayed `attaching` for good."""

    async def scenario(store: Store) -> list[tuple[str, str, str]]:
        await store.insert_volume(volume("vol-1", volume_type=VolumeType.IO2, multi_attach=True))
        for instance in ("i-1", "i-2"):
            attachment = Attachment(
                "vol-1", instance, "/dev/sdf", AttachmentState.ATTACHING, utcnow()
            )
            assert await store.begin_attach(attachment, most=16)
        await store.start_job("attach_volume", "vol-1", '{"instance_id": "i-1"}')
        await store.start_job("detach_volume", "vol-1", '{"instance_id": "i-2"}')  # another kind
        return await store.stranded()

    stranded = run(new_store, scenario)
    assert [(kind, rid) for kind, rid, _ in stranded] == [("attach_volume", "vol-1")]
    assert '"i-2"' in stranded[0][2]


def test_jobs_left_running_are_claimed_after_a_restart_and_finished(new_store: NewStore) -> None:
    async def record(store: Store) -> list[int]:
        return [
            await store.start_job("create_volume", "vol-1", '{"a": 1}'),
            await store.start_job("delete_volume", "vol-2"),
        ]

    async def restart(store: Store) -> tuple[object, ...]:
        claimed = await store.claim_jobs([second])  # `second` runs here already
        rest = await store.claim_jobs()
        none_left = await store.claim_jobs()
        held = await store.renew_job_leases([first, second])
        await store.finish_job(first)
        await store.finish_job(second, "boom")
        inventory = await store.inventory()
        return claimed + rest, none_left, held, await store.unfinished_jobs(), inventory.jobs

    first, second = run(new_store, record)
    claimed, none_left, held, unfinished, counts = run(new_store, restart)
    assert claimed == [
        (first, "create_volume", "vol-1", '{"a": 1}'),
        (second, "delete_volume", "vol-2", "{}"),
    ]
    assert none_left == []
    assert held == {first, second}
    assert unfinished == []
    assert counts == {("create_volume", "done"): 1, ("delete_volume", "failed"): 1}


def test_a_snapshot_is_recorded_with_its_job_and_completed_as_its_job_closes(
    new_store: NewStore,
) -> None:
    async def scenario(store: Store) -> tuple[object, ...]:
        await store.insert_volume(volume("vol-1"))
        job = await store.insert_snapshot_with_job(
            snapshot("snap-1", tags={"a": "1"}), "capture_snapshot"
        )
        recorded = await store.get_snapshot("snap-1")
        running = await store.unfinished_jobs()
        completed = await store.complete_snapshot_closing_job("snap-1", 1024, job, ["capture"])
        again = await store.complete_snapshot_closing_job("snap-1", 2048, None, [])
        done = await store.get_snapshot("snap-1")
        steps = await store.job_steps(job)
        await store.finish_job(job, "cancelled")  # a job closed stays closed as it was
        return job, recorded, running, completed, again, done, steps, await store.inventory()

    job, recorded, running, completed, again, done, steps, inventory = run(new_store, scenario)
    assert isinstance(recorded, Snapshot) and isinstance(done, Snapshot)
    assert (recorded.state, recorded.tags) == (SnapshotState.PENDING, {"a": "1"})
    assert running == [(job, "capture_snapshot", "snap-1", "{}")]
    assert (completed, again) == (True, False)  # the second call finds it completed already
    assert (done.state, done.progress, done.full_size_bytes) == (SnapshotState.COMPLETED, 100, 1024)
    assert steps == [("capture", "done")]
    assert inventory.jobs == {("capture_snapshot", "done"): 1}


def test_a_snapshot_or_a_copy_is_inserted_only_of_a_volume_available_or_in_use(
    new_store: NewStore,
) -> None:
    async def scenario(store: Store) -> list[str]:
        await store.insert_volume(volume("vol-1", state=VolumeState.IN_USE))
        await store.insert_volume(volume("vol-2", state=VolumeState.DELETING))
        refused = []
        for insert in (
            store.insert_snapshot_with_job(snapshot("snap-1", volume_id="vol-2"), "capture"),
            store.insert_snapshot_with_job(snapshot("snap-2", volume_id="vol-9"), "capture"),
            store.insert_snapshots(
                [snapshot("snap-3", volume_id="vol-1"), snapshot("snap-4", volume_id="vol-2")]
            ),
        ):
            with pytest.raises(VolumeNotSnapshottable) as caught:
                await insert
            refused.append(caught.value.volume_id)
        for number in range(1, 5):
            assert await store.get_snapshot(f"snap-{number}") is None
        assert await store.unfinished_jobs() == []
        await store.insert_snapshot_with_job(snapshot("snap-5", volume_id="vol-1"), "capture")
        await store.insert_snapshots([snapshot("snap-6", volume_id="vol-1")])
        assert await store.pending_snapshots("vol-1") == ["snap-5", "snap-6"]
        assert await store.pending_snapshots("vol-2") == []
        # A copy (CopyVolumes) likewise, of its source.
        creating = VolumeState.CREATING
        with pytest.raises(VolumeNotSnapshottable) as caught:
            await store.insert_volume_with_job(
                volume("vol-3", state=creating, source_volume_id="vol-2"), "create_volume"
            )
        refused.append(caught.value.volume_id)
        assert await store.get_volume("vol-3") is None
        copy, _ = await store.insert_volume_with_job(
            volume("vol-4", state=creating, source_volume_id="vol-1"), "create_volume"
        )
        assert await store.copies_in_progress("vol-1") == [copy.id]
        assert await store.transition_volume("vol-4", {creating}, VolumeState.AVAILABLE)
        assert await store.copies_in_progress("vol-1") == []
        return refused

    assert run(new_store, scenario) == ["vol-2", "vol-9", "vol-2", "vol-2"]


def test_a_live_instances_jobs_are_claimed_only_once_its_lease_runs_out(
    postgres_server: PostgresServer,
) -> None:
    dsn = migrated_database(postgres_server, "lease")

    async def scenario() -> tuple[object, ...]:
        alive, other = PostgresStore(dsn, "one", 1.0), PostgresStore(dsn, "two", 1.0)
        await alive.open()
        await other.open()
        try:
            job = await alive.start_job("create_volume", "vol-1")
            early = await other.claim_jobs()
            mine = await alive.claim_jobs()  # recorded by this very run: it starts it itself
            await asyncio.sleep(1.5)
            late, again = await asyncio.gather(other.claim_jobs(), other.claim_jobs())
            lost = await alive.renew_job_leases([job])
            await alive.finish_job(job)  # no longer its job: changes nothing
            unfinished = await other.unfinished_jobs()
            await other.finish_job(job)
            return early, mine, late + again, lost, unfinished, await other.unfinished_jobs()
        finally:
            await alive.close()
            await other.close()

    early, mine, late, lost, unfinished, after = asyncio.run(scenario())
    assert (early, mine) == ([], [])
    assert late == [(1, "create_volume", "vol-1", "{}")]  # one of two concurrent claims
    assert lost == set()
    assert unfinished == [(1, "create_volume", "vol-1", "{}")]
    assert after == []


def test_a_job_taken_over_is_not_closed_by_its_old_instance_with_its_volume(
    postgres_server: PostgresServer,
) -> None:
    """CreateVolume's job ends in one write with its volume's `available`: an instance whose
    lease ran out (another took the job over) must change neither."""
    dsn = migrated_database(postgres_server, "takeover")

    async def scenario() -> tuple[object, ...]:
        late, other = PostgresStore(dsn, "one", 1.0), PostgresStore(dsn, "two", 1.0)
        await late.open()
        await other.open()
        try:
            await late.insert_volume(volume("vol-1", state=VolumeState.CREATING))
            job = await late.start_job("create_volume", "vol-1")
            await asyncio.sleep(1.5)
            taken = await other.claim_jobs()
            with pytest.raises(JobNotHeld):
                await late.transition_volume_closing_job(
                    "vol-1", {VolumeState.CREATING}, VolumeState.AVAILABLE, job, ["allocate"]
                )
            untouched = (await other.get_volume("vol-1"), await other.job_steps(job))
            closed = await other.transition_volume_closing_job(
                "vol-1", {VolumeState.CREATING}, VolumeState.AVAILABLE, job, ["allocate"]
            )
            return taken, untouched, closed, await other.unfinished_jobs()
        finally:
            await late.close()
            await other.close()

    taken, (stored, steps), closed, unfinished = asyncio.run(scenario())
    assert taken == [(1, "create_volume", "vol-1", "{}")]
    assert stored is not None and stored.state is VolumeState.CREATING and steps == []
    assert closed is True and unfinished == []


def test_an_insert_given_a_limit_is_refused_at_it_and_inserts_nothing(
    new_store: NewStore,
) -> None:
    async def scenario(store: Store) -> None:
        await store.insert_volume(volume("vol-1"))
        await store.insert_volume_with_job(volume("vol-2"), "create_volume", limit=2)
        with pytest.raises(QuotaReached):
            await store.insert_volume_with_job(volume("vol-3"), "create_volume", limit=2)
        assert await store.get_volume("vol-3") is None
        # Another region, and a deleted volume, do not count.
        await store.insert_volume_with_job(volume("vol-4", region=OTHER_REGION), None, limit=1)
        assert await store.transition_volume("vol-1", {VolumeState.AVAILABLE}, VolumeState.DELETED)
        await store.insert_volume_with_job(volume("vol-5"), None, limit=2)

        await store.insert_snapshot(snapshot("snap-1", state=SnapshotState.COMPLETED))
        of_5 = partial(snapshot, volume_id="vol-5")  # vol-1 is deleted: it takes no snapshot
        with pytest.raises(QuotaReached):  # two more where one fits: neither is inserted
            await store.insert_snapshots([of_5("snap-2"), of_5("snap-3")], limit=2)
        await store.insert_snapshot_with_job(of_5("snap-2"), "capture_snapshot", limit=2)
        with pytest.raises(QuotaReached):
            await store.insert_snapshot_with_job(of_5("snap-3"), "capture_snapshot", limit=2)
        with pytest.raises(QuotaReached):
            await store.insert_snapshot_copy(snapshot("snap-4"), "snap-1", limit=2)
        meta = DirectMeta("snap-5", OWNER, None, None, "digest", 60, time.time())
        with pytest.raises(QuotaReached):
            await store.start_direct_snapshot(snapshot("snap-5"), meta, limit=2)
        assert [await store.get_snapshot(f"snap-{n}") for n in (3, 4, 5)] == [None] * 3
        assert await store.direct_meta("snap-5") is None
        assert await store.count_snapshots(OWNER, REGION) == 2
        assert await store.insert_snapshot_copy(snapshot("snap-4"), "snap-1", limit=3)

    run(new_store, scenario)


def test_on_postgresql_what_needs_a_snapshot_waits_for_its_deletion_under_way_then_sees_it(
    postgres_server: PostgresServer,
) -> None:
    """A deletion by another instance, begun as ``mark_snapshot_deleted`` begins it (the
    snapshot's row written unchanged) and not yet committed, holds back a copy of the
    snapshot, a volume restored from it and a change of its lock; once it commits, each
    finds the snapshot deleted and changes nothing."""
    dsn = migrated_database(postgres_server, "hold")
    now = datetime(2026, 1, 1, tzinfo=UTC)
    lock = SnapshotLock("snap-1", OWNER, REGION, LockMode.GOVERNANCE, now, duration_days=1)

    async def scenario() -> list[object]:
        store = PostgresStore(dsn, "one")
        await store.open()
        other = await asyncpg.connect(dsn)
        try:
            await store.insert_snapshot(snapshot("snap-1", state=SnapshotState.COMPLETED))
            deleting = other.transaction()
            await deleting.start()
            await other.execute(
                "UPDATE snapshots SET deleted = deleted WHERE id = 'snap-1' AND deleted = 0"
            )
            waiting = [
                asyncio.ensure_future(attempt)
                for attempt in (
                    store.insert_snapshot_copy(snapshot("snap-2"), "snap-1"),
                    store.insert_volume(
                        volume("vol-1", snapshot_id="snap-1", state=VolumeState.CREATING)
                    ),
                    store.change_snapshot_lock("snap-1", lambda current: lock),
                )
            ]
            done, _ = await asyncio.wait(waiting, timeout=1.0)
            assert not done  # each waits for the deletion to end
            await other.execute("UPDATE snapshots SET deleted = 1 WHERE id = 'snap-1'")
            await deleting.commit()
            outcomes = await asyncio.gather(*waiting, return_exceptions=True)
            assert await store.get_snapshot("snap-2") is None
            assert await store.get_volume("vol-1") is None
            assert await store.get_snapshot_lock("snap-1") is None
            return outcomes
        finally:
            await other.close()
            await store.close()

    copied, restored, locked = asyncio.run(scenario())
    assert copied is False and locked is False
    assert isinstance(restored, RestoreSourceGone)


def test_the_fast_restore_limit_holds_when_two_instances_enable_at_once(
    postgres_server: PostgresServer,
) -> None:
    dsn = migrated_database(postgres_server, "fsr_limit")

    def record(snapshot_id: str) -> FastRestore:
        return FastRestore(
            account_id=OWNER,
            snapshot_id=snapshot_id,
            zone="us-east-1a",
            zone_id="use1-az1",
            region=REGION,
            state=FastRestoreState.ENABLING,
            reason="Client.UserInitiated",
            snapshot_owner_id=OWNER,
            enabling_time=utcnow(),
        )

    async def scenario() -> list[FastRestore]:
        stores = [PostgresStore(dsn, "one"), PostgresStore(dsn, "two")]
        for store in stores:
            await store.open()
        try:
            await asyncio.gather(
                *(
                    stores[i % 2].begin_fast_restore(record(f"snap-{i:017x}"), limit=3)
                    for i in range(12)
                )
            )
            listed: list[FastRestore] = []
            for i in range(12):
                listed += await stores[0].fast_restores_of(f"snap-{i:017x}")
            return listed
        finally:
            for store in stores:
                await store.close()

    assert len({r.snapshot_id for r in asyncio.run(scenario())}) == 3


def test_a_snapshot_lock_is_replaced_in_place_listed_by_state_and_removed_with_its_snapshot(
    new_store: NewStore,
) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)

    def lock(snapshot_id: str, mode: LockMode, **fields: object) -> SnapshotLock:
        return SnapshotLock(snapshot_id, OWNER, REGION, mode, now, **fields)  # type: ignore[arg-type]

    def ids(page: Page[SnapshotLock]) -> list[str]:
        return [item.snapshot_id for item in page.items]

    async def put(store: Store, new: SnapshotLock) -> None:
        assert await store.change_snapshot_lock(new.snapshot_id, lambda current: new)

    async def scenario(store: Store) -> None:
        for snapshot_id in ("snap-1", "snap-2", "snap-3"):
            await store.insert_snapshot(snapshot(snapshot_id))
        await put(store, lock("snap-1", LockMode.GOVERNANCE, duration_days=1))
        await put(
            store,
            lock("snap-2", LockMode.COMPLIANCE, cool_off_expires_on=now + timedelta(hours=1)),
        )
        await put(store, lock("snap-3", LockMode.GOVERNANCE, expires_on=now + timedelta(seconds=1)))
        # A lock given a duration while its snapshot was pending starts when it completes.
        waiting = await store.get_snapshot_lock("snap-1")
        assert waiting is not None and waiting.expires_on is None
        assert await store.complete_snapshot("snap-1", 0)
        started = await store.get_snapshot_lock("snap-1")
        assert started is not None and started.duration_start is not None
        assert started.expires_on == started.duration_start + timedelta(days=1)
        # Replaced in place: it keeps its position in the listing.
        await put(store, lock("snap-1", LockMode.COMPLIANCE, duration_days=2))
        assert ids(await store.list_snapshot_locks(query(), now)) == ["snap-1", "snap-2", "snap-3"]
        later = now + timedelta(hours=2)
        by_state = {
            state: ids(
                await store.list_snapshot_locks(
                    query(filters=(Filter("lock-state", (state,)),)), later
                )
            )
            for state in ("governance", "compliance", "compliance-cooloff", "expired")
        }
        assert by_state == {
            "governance": [],
            "compliance": ["snap-1", "snap-2"],
            "compliance-cooloff": [],
            "expired": ["snap-3"],
        }
        cooling = Filter("lock-state", ("compliance-cooloff",))
        assert ids(await store.list_snapshot_locks(query(filters=(cooling,)), now)) == ["snap-2"]
        first = await store.list_snapshot_locks(query(limit=2), now)
        assert ids(first) == ["snap-1", "snap-2"] and first.last_seq is not None
        rest = await store.list_snapshot_locks(query(limit=2, after_seq=first.last_seq), now)
        assert ids(rest) == ["snap-3"] and rest.last_seq is None
        other = ListQuery(owner_ids=frozenset({OTHER_OWNER}), region=REGION)
        assert ids(await store.list_snapshot_locks(other, now)) == []
        assert await store.change_snapshot_lock("snap-2", lambda current: None)
        assert await store.get_snapshot_lock("snap-2") is None
        assert (await store.mark_snapshot_deleted("snap-3", later)).marked  # its lock expired
        assert ids(await store.list_snapshot_locks(query(), now)) == ["snap-1"]
        await store.remove_snapshot("snap-3")
        assert await store.get_snapshot_lock("snap-3") is None

    run(new_store, scenario)


def test_a_lock_keeps_its_snapshot_from_deletion_and_no_lock_changes_on_a_deleted_one(
    new_store: NewStore,
) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    expiry = now + timedelta(hours=1)
    held = SnapshotLock("snap-1", OWNER, REGION, LockMode.GOVERNANCE, now, expires_on=expiry)
    asked: list[SnapshotLock | None] = []

    def ask(current: SnapshotLock | None) -> SnapshotLock | None:
        asked.append(current)
        return current

    def refuse(current: SnapshotLock | None) -> SnapshotLock | None:
        raise ValueError("refused")

    async def scenario(store: Store) -> None:
        for snapshot_id in ("snap-1", "snap-2"):
            await store.insert_snapshot(snapshot(snapshot_id))
        assert await store.change_snapshot_lock("snap-1", lambda current: held)
        kept = await store.mark_snapshot_deleted("snap-1", now)
        assert not kept.marked and kept.kept_by == await store.get_snapshot_lock("snap-1")
        assert kept.kept_by is not None and kept.kept_by.expires_on == expiry
        assert await store.deleted_snapshots() == []
        with pytest.raises(ValueError):  # a change that fails changes nothing
            await store.change_snapshot_lock("snap-1", refuse)
        assert await store.get_snapshot_lock("snap-1") == kept.kept_by

        assert await store.mark_snapshot_deleted("snap-1", expiry) == SnapshotDeletion(True)
        assert await store.mark_snapshot_deleted("snap-1", expiry) == SnapshotDeletion(False)
        assert not await store.change_snapshot_lock("snap-1", ask)  # deleted: not even asked
        assert not await store.change_snapshot_lock("snap-9", ask)  # never there
        assert asked == []
        assert await store.mark_snapshot_deleted("snap-2", now) == SnapshotDeletion(True)
        assert sorted(await store.deleted_snapshots()) == ["snap-1", "snap-2"]

    run(new_store, scenario)


def test_a_snapshot_being_restored_is_not_deleted_and_a_deleted_one_is_not_restored(
    new_store: NewStore,
) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)

    def restore(volume_id: str, snapshot_id: str) -> Volume:
        return volume(volume_id, snapshot_id=snapshot_id, state=VolumeState.CREATING)

    async def scenario(store: Store) -> None:
        await store.insert_snapshot(snapshot("snap-1", state=SnapshotState.COMPLETED))
        await store.insert_volume(restore("vol-1", "snap-1"))
        refused = await store.mark_snapshot_deleted("snap-1", now)
        assert refused == SnapshotDeletion(marked=False, in_use_by="vol-1")
        assert await store.transition_volume("vol-1", {VolumeState.CREATING}, VolumeState.AVAILABLE)
        assert await store.mark_snapshot_deleted("snap-1", now) == SnapshotDeletion(True)
        with pytest.raises(RestoreSourceGone):
            await store.insert_volume_with_job(restore("vol-2", "snap-1"), "create_volume")
        assert await store.get_volume("vol-2") is None
        with pytest.raises(RestoreSourceGone):  # never recorded
            await store.insert_volume(restore("vol-3", "snap-9"))
        # A volume recorded as made from it earlier (not restoring now) is still taken.
        await store.insert_volume(volume("vol-4", snapshot_id="snap-1"))
        assert (await store.get_volume("vol-4")) is not None

    run(new_store, scenario)


def test_an_io_incident_disables_io_unless_auto_enable_io_is_set(new_store: NewStore) -> None:
    async def scenario(store: Store) -> tuple[VolumeIo, ...]:
        since = utcnow()
        await store.set_auto_enable_io("vol-auto", True)
        first = await store.open_io_incident("vol-1", "evt-1", "data gone", since)
        second = await store.open_io_incident("vol-1", "evt-2", "again", since)
        auto = await store.open_io_incident("vol-auto", "evt-3", "data gone", since)
        await store.close_io_incident("vol-1")  # I/O still disabled: the incident stays
        kept = (await store.volume_io(["vol-1"]))["vol-1"]
        await store.enable_volume_io("vol-1")
        await store.close_io_incident("vol-1")
        return first, second, auto, kept, (await store.volume_io(["vol-1"]))["vol-1"]

    first, second, auto, kept, closed = run(new_store, scenario)
    assert (first.io_disabled, first.event_id) == (True, "evt-1")
    assert second == first  # one incident at a time
    assert (auto.io_disabled, auto.event_id) == (False, "evt-3")
    assert kept == first
    assert (closed.io_disabled, closed.event_id) == (False, None)


def test_an_access_key_belongs_to_one_account_even_when_two_claim_it_at_once(
    new_store: NewStore,
) -> None:
    async def scenario(store: Store) -> tuple[list[bool], bool, tuple[str, str] | None]:
        for account in ("111111111111", "222222222222"):
            await store.insert_account(account, account)
        won = await asyncio.gather(
            store.put_access_key("111111111111", "AKID1", "one"),
            store.put_access_key("222222222222", "AKID1", "two"),
        )
        again = await store.put_access_key("111111111111", "AKID1", "new")
        return won, again, await store.access_key("AKID1")

    won, again, key = run(new_store, scenario)
    assert sorted(won) == [False, True]
    assert again is won[0]  # the first account may change its key's secret, if it holds it
    assert key == (("111111111111", "new") if won[0] else ("222222222222", "two"))


def test_a_reopened_store_keeps_what_was_written(new_store: NewStore) -> None:
    async def write(store: Store) -> None:
        await store.insert_volume(volume("vol-1", tags={"k": "v"}))
        await store.insert_account("111111111111", "other")
        await store.put_access_key("111111111111", "AKID1", "secret")

    async def read(store: Store) -> tuple[object, ...]:
        stored = await store.get_volume("vol-1")
        assert stored is not None
        return stored.tags, await store.access_key("AKID1")

    run(new_store, write)
    assert run(new_store, read) == ({"k": "v"}, ("111111111111", "secret"))


def test_a_glob_pattern_becomes_the_like_pattern_matching_the_same_strings() -> None:
    assert glob_to_like(glob_pattern("web-*")[0]) == "web-%"
    assert glob_to_like(glob_pattern("a\\*b?")[0]) == "a*b_"
    assert glob_to_like(glob_pattern("50%_[x]*")[0]) == "50\\%\\_[x]%"
    assert glob_to_like(glob_pattern("x\\\\*")[0]) == "x\\\\%"


def test_placeholders_are_numbered_outside_string_literals() -> None:
    translated = translate("SELECT '?', a FROM t WHERE b = ? AND c GLOB ? AND d IN (?, ?)")
    assert translated.sql == (
        "SELECT '?', a FROM t WHERE b = $1 AND c LIKE $2 ESCAPE '\\' AND d IN ($3, $4)"
    )
    assert translated.glob_params == frozenset({1})
    upsert = translate("INSERT OR REPLACE INTO snapshot_blocks (snapshot_id, block_index, digest) "
                       "VALUES (?, ?, ?)")  # fmt: skip
    assert upsert.sql.endswith(
        "ON CONFLICT (snapshot_id, block_index) DO UPDATE SET digest = EXCLUDED.digest"
    )


def test_a_dsn_is_shown_without_its_password() -> None:
    assert redact_dsn("postgresql://ebs:s3cret@db.example:5433/ebsemu") == (
        "postgresql://ebs:***@db.example:5433/ebsemu"
    )
    assert redact_dsn("postgresql://ebs@db/ebsemu") == "postgresql://ebs@db/ebsemu"


def test_an_exclusive_section_is_held_by_one_instance_at_a_time(
    postgres_server: PostgresServer,
) -> None:
    dsn = migrated_database(postgres_server, "exclusive")

    async def scenario() -> list[str]:
        first, second = PostgresStore(dsn, "one"), PostgresStore(dsn, "two")
        await first.open()
        await second.open()
        order: list[str] = []
        inside, other_taken = asyncio.Event(), asyncio.Event()

        async def hold() -> None:
            async with first.exclusive("reconcile"):
                order.append("first in")
                inside.set()
                await other_taken.wait()
                await asyncio.sleep(0.3)  # room for the second to get in, were it not held
                order.append("first out")

        async def wait_turn() -> None:
            await inside.wait()
            async with second.exclusive("other"):  # another name: not held
                order.append("other")
            other_taken.set()
            async with second.exclusive("reconcile"):
                order.append("second in")

        try:
            await asyncio.gather(hold(), wait_turn())
            return order
        finally:
            await first.close()
            await second.close()

    assert asyncio.run(scenario()) == ["first in", "other", "first out", "second in"]


def test_a_closed_instances_unfinished_jobs_are_claimed_at_once(
    postgres_server: PostgresServer,
) -> None:
    dsn = migrated_database(postgres_server, "release")

    async def scenario() -> tuple[object, ...]:
        leaving, staying = PostgresStore(dsn, "one", 600.0), PostgresStore(dsn, "two", 600.0)
        await leaving.open()
        await staying.open()
        try:
            job = await leaving.start_job("create_volume", "vol-1")
            before = await staying.claim_jobs()  # leased for ten minutes
            await leaving.close()  # a shutdown interrupted the job
            return job, before, await staying.claim_jobs()
        finally:
            await staying.close()

    job, before, after = asyncio.run(scenario())
    assert before == []
    assert after == [(job, "create_volume", "vol-1", "{}")]


def test_every_insert_records_the_lineage_of_its_volume_or_snapshot(new_store: NewStore) -> None:
    async def scenario(store: Store) -> list[str | None]:
        await store.insert_volume(volume("vol-1", lineage="vol-1"))
        await store.insert_volume_with_job(
            volume("vol-2", snapshot_id="snap-1", lineage="vol-1"), "create_volume"
        )
        await store.insert_snapshot_with_job(snapshot("snap-1", lineage="vol-1"), "capture")
        await store.insert_snapshots([snapshot("snap-2", volume_id="vol-2", lineage="vol-1")])
        await store.complete_snapshot("snap-1", 0)
        copied = snapshot("snap-3", volume_id=COPY_VOLUME_ID, lineage="snap-3")
        assert await store.insert_snapshot_copy(copied, "snap-1")
        direct = snapshot("snap-4", volume_id=COPY_VOLUME_ID, lineage="vol-1")
        meta = DirectMeta("snap-4", OWNER, "snap-1", None, "digest", 60, time.time())
        assert await store.start_direct_snapshot(direct, meta) == "snap-4"
        volumes = [await store.get_volume(f"vol-{n}") for n in (1, 2)]
        snapshots = [await store.get_snapshot(f"snap-{n}") for n in (1, 2, 3, 4)]
        return [record.lineage if record else None for record in (*volumes, *snapshots)]

    assert run(new_store, scenario) == ["vol-1", "vol-1", "vol-1", "vol-1", "snap-3", "vol-1"]


# A deployment's records from before lineages were recorded (schema 12): vol-a made empty,
# snap-1 of it, vol-b from snap-1, snap-2 of vol-b, snap-3 written through the EBS direct API
# on snap-2.
_BEFORE_LINEAGES = [
    "INSERT INTO volumes (id, owner_id, region, zone, size_gib, volume_type, state, "
    "create_time, updated_at, snapshot_id) VALUES "
    f"('vol-a', '{OWNER}', '{REGION}', 'us-east-1a', 1, 'gp3', 'available', "
    "'2026-01-01T00:00:00.000Z', 0, NULL), "
    f"('vol-b', '{OWNER}', '{REGION}', 'us-east-1a', 1, 'gp3', 'available', "
    "'2026-01-01T00:00:00.000Z', 0, 'snap-1')",
    "INSERT INTO snapshots (id, owner_id, region, volume_id, volume_size_gib, state, "
    "start_time) VALUES "
    f"('snap-1', '{OWNER}', '{REGION}', 'vol-a', 1, 'completed', '2026-01-01T00:00:00.000Z'), "
    f"('snap-2', '{OWNER}', '{REGION}', 'vol-b', 1, 'completed', '2026-01-01T00:00:00.000Z'), "
    f"('snap-3', '{OWNER}', '{REGION}', '{COPY_VOLUME_ID}', 1, 'completed', "
    "'2026-01-01T00:00:00.000Z')",
    "INSERT INTO direct_snapshots (snapshot_id, owner_id, parent_snapshot_id, request_digest, "
    f"timeout_minutes, last_activity) VALUES ('snap-3', '{OWNER}', 'snap-2', 'digest', 60, 0)",
]


def _database_before_lineages(kind: str, request: pytest.FixtureRequest) -> NewStore:
    """A database of each store at schema 12 holding ``_BEFORE_LINEAGES``."""
    if kind == "sqlite":
        path = request.getfixturevalue("tmp_path") / "db.sqlite3"
        with sqlite3.connect(path) as db:
            db.executescript(
                "".join(
                    f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;"
                    for number, script in enumerate(MIGRATIONS[:12], start=1)
                )
                + "".join(f"{statement};" for statement in _BEFORE_LINEAGES)
            )
        return lambda: SqliteStore(path)
    server: PostgresServer = request.getfixturevalue("postgres_server")
    dsn = server.create_database(f"lineage_{uuid.uuid4().hex[:12]}")

    async def build() -> None:
        connection = await asyncpg.connect(dsn)
        try:
            await connection.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            for number, script in enumerate(PG_MIGRATIONS[:12], start=1):
                await connection.execute(script)
                await connection.execute("INSERT INTO schema_version VALUES ($1)", number)
            for statement in _BEFORE_LINEAGES:
                await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(build())
    return lambda: PostgresStore(dsn, "test")


@pytest.mark.parametrize("kind", STORES)
def test_records_from_before_lineages_are_kept_and_reach_their_lineage_through_their_records(
    kind: str, request: pytest.FixtureRequest
) -> None:
    new_store = _database_before_lineages(kind, request)

    async def scenario(store: Store) -> tuple[object, ...]:
        records: list[Snapshot | Volume] = []
        for found in (
            await store.get_volume("vol-a"),
            await store.get_volume("vol-b"),
            await store.get_snapshot("snap-1"),
            await store.get_snapshot("snap-2"),
            await store.get_snapshot("snap-3"),
        ):
            assert found is not None
            records.append(found)
        await store.insert_volume(volume("vol-c", snapshot_id="snap-3", lineage="vol-a"))
        new = await store.get_volume("vol-c")
        return (
            [record.lineage for record in records],
            [await lineage.of(store, record) for record in records],
            new.lineage if new else None,
        )

    stored, reached, new = run(new_store, scenario)
    assert stored == [None] * 5
    assert reached == ["vol-a"] * 5
    assert new == "vol-a"
