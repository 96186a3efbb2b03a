"""A job that closes with its last write: the steps' `done` entries, its own change and the
job's end commit together; a failure still logs what was begun before undoing it; a job this
process has just recorded does not read a step log it cannot have."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from ebsemu.model import Volume, VolumeState, VolumeType, utcnow
from ebsemu.service.jobs import CURRENT_JOB, NEW_JOB, Jobs
from ebsemu.service.steps import run_steps
from ebsemu.store.sqlite import SqliteStore
from tests.test_steps import Trace, with_store

VOLUME_ID = "vol-0123456789abcdef0"


def creating_volume() -> Volume:
    return Volume(
        id=VOLUME_ID,
        owner_id="000000000000",
        region="us-east-1",
        zone="us-east-1a",
        size_gib=1,
        volume_type=VolumeType.GP3,
        state=VolumeState.CREATING,
        create_time=utcnow(),
        iops=3000,
        throughput=125,
    )


def job_row(path: Path, job_id: int) -> tuple[str, str | None]:
    with sqlite3.connect(path) as db:
        row = db.execute("SELECT state, error FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return row[0], row[1]


async def closing_run(
    store: SqliteStore, trace: Trace, job_id: int, *, new: bool, closed: list[Sequence[str]]
) -> bool:
    async def close(done: Sequence[str]) -> None:
        closed.append(list(done))
        await store.transition_volume_closing_job(
            VOLUME_ID, {VolumeState.CREATING}, VolumeState.AVAILABLE, job_id, [*done, "end"]
        )

    async def body() -> bool:
        CURRENT_JOB.set(job_id)
        NEW_JOB.set(new)
        return await run_steps(store, "test", trace.steps(), trace.failed, close=close)

    return await asyncio.create_task(body())


def test_the_closing_write_logs_every_step_changes_the_volume_and_ends_the_job(
    tmp_path: Path,
) -> None:
    async def scenario(store: SqliteStore) -> None:
        await store.insert_volume(creating_volume())
        job_id = await store.start_job("create_volume", VOLUME_ID)
        closed: list[Sequence[str]] = []
        trace = Trace()
        assert await closing_run(store, trace, job_id, new=True, closed=closed)
        assert trace.events == ["a", "b", "c"] and closed == [["a", "b", "c"]]
        assert await store.job_steps(job_id) == [
            ("a", "done"), ("b", "done"), ("c", "done"), ("end", "done"),
        ]  # fmt: skip
        stored = await store.get_volume(VOLUME_ID)
        assert stored is not None and stored.state is VolumeState.AVAILABLE
        assert await store.unfinished_jobs() == []
        assert job_row(tmp_path / "db.sqlite3", job_id) == ("done", None)

    with_store(tmp_path, scenario)


def test_a_failure_logs_the_steps_done_before_it_and_undoes_them(tmp_path: Path) -> None:
    async def scenario(store: SqliteStore) -> None:
        await store.insert_volume(creating_volume())
        job_id = await store.start_job("create_volume", VOLUME_ID)
        closed: list[Sequence[str]] = []
        trace = Trace(fail_at="c")
        assert not await closing_run(store, trace, job_id, new=True, closed=closed)
        assert closed == []
        assert trace.events == ["a", "b", "c", "undo-c", "undo-b", "undo-a"]
        assert await store.job_steps(job_id) == [
            ("a", "done"), ("b", "done"), ("c", "failed"),
            ("c", "undone"), ("b", "undone"), ("a", "undone"),
        ]  # fmt: skip
        assert [job[0] for job in await store.unfinished_jobs()] == [job_id]  # Jobs ends it

    with_store(tmp_path, scenario)


def test_a_resumed_job_reads_its_log_and_a_new_one_does_not(tmp_path: Path) -> None:
    async def scenario(store: SqliteStore) -> None:
        for new, expected in ((False, ["b", "c"]), (True, ["a", "b", "c"])):
            job_id = await store.start_job("test", "res-1")
            # Only a job resumed after a crash can have a log; this one stands for it.
            await store.record_step(job_id, "a", "done")
            trace = Trace()
            assert await closing_run(store, trace, job_id, new=new, closed=[])
            assert trace.events == expected

    with_store(tmp_path, scenario)


def test_a_handler_that_closed_its_job_is_not_closed_again(tmp_path: Path) -> None:
    async def scenario(store: SqliteStore) -> None:
        assert isinstance(store, ClosesWatched)
        jobs = Jobs(store)

        async def closing(resource_id: str, payload: dict[str, object]) -> bool:
            job_id = CURRENT_JOB.get()
            assert job_id is not None and NEW_JOB.get()
            await store.finish_job(job_id, "closed by its handler")
            return True

        jobs.register("closing", closing)
        await jobs.submit("closing", "res-1")
        await jobs.idle()
        # Jobs did not write an end of its own after the handler's.
        assert store.closes == [(1, "closed by its handler")]
        assert job_row(tmp_path / "db.sqlite3", 1) == ("failed", "closed by its handler")

    with_store(tmp_path, scenario, ClosesWatched)


def test_two_jobs_of_one_kind_for_one_resource_are_both_waited_for_and_keep_it_busy(
    tmp_path: Path,
) -> None:
    """A Multi-Attach volume attaches to two instances at once: two attach_volume jobs of one
    volume. The second one started hid the first: once it ended, the volume was no longer
    busy, and idle() and close() (at shutdown) no longer waited for the first."""

    async def scenario(store: SqliteStore) -> None:
        jobs = Jobs(store)
        release = {"i-1": asyncio.Event(), "i-2": asyncio.Event()}
        ended: list[str] = []

        async def attach(resource_id: str, payload: dict[str, object]) -> None:
            instance = str(payload["instance_id"])
            await release[instance].wait()
            ended.append(instance)

        jobs.register("attach_volume", attach)
        await jobs.submit("attach_volume", "vol-1", instance_id="i-1")
        await jobs.submit("attach_volume", "vol-1", instance_id="i-2")
        release["i-2"].set()
        await asyncio.sleep(0.05)  # i-2's attach ends, and its task is done with
        assert ended == ["i-2"]
        assert jobs.busy("vol-1")  # i-1's attach still runs
        waited = asyncio.create_task(jobs.idle())
        await asyncio.sleep(0.05)
        assert not waited.done()
        release["i-1"].set()
        await asyncio.wait_for(waited, 5)
        assert ended == ["i-2", "i-1"] and not jobs.busy("vol-1")

    with_store(tmp_path, scenario)


class ClosesWatched(SqliteStore):
    """Records every job end written through ``finish_job``."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.closes: list[tuple[int, str | None]] = []

    async def finish_job(self, job_id: int, error: str | None = None) -> None:
        self.closes.append((job_id, error))
        await super().finish_job(job_id, error)
