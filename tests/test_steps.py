"""The step runner: steps run in order and are logged in the store; a failure undoes the failed
step and those before it, last first; a resumed job skips what it had done and finishes an
undo a crash interrupted."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from backends.errors import BackendError
from ebsemu.service.jobs import CURRENT_JOB
from ebsemu.service.steps import Step, run_steps
from ebsemu.store.sqlite import SqliteStore


class Trace:
    def __init__(self, fail_at: str | None = None) -> None:
        self.events: list[str] = []
        self.failures: list[str | None] = []
        self._fail_at = fail_at

    def action(self, name: str) -> Callable[[], Awaitable[None]]:
        async def act() -> None:
            self.events.append(name)
            if name == self._fail_at:
                raise BackendError(f"{name} broke")

        return act

    def steps(self) -> list[Step]:
        return [Step(n, self.action(n), undo=self.action(f"undo-{n}")) for n in ("a", "b", "c")]

    async def failed(self, exc: Exception | None) -> None:
        self.failures.append(None if exc is None else str(exc))


async def in_job(store: SqliteStore, trace: Trace, job_id: int | None = None) -> tuple[int, bool]:
    if job_id is None:
        job_id = await store.start_job("test", "res-1")

    async def body() -> bool:
        CURRENT_JOB.set(job_id)
        return await run_steps(store, "test", trace.steps(), trace.failed)

    return job_id, await asyncio.create_task(body())


def with_store(
    tmp_path: Path,
    scenario: Callable[[SqliteStore], Awaitable[None]],
    kind: type[SqliteStore] = SqliteStore,
) -> None:
    async def main() -> None:
        store = kind(tmp_path / "db.sqlite3")
        await store.open()
        try:
            await scenario(store)
        finally:
            await store.close()

    asyncio.run(main())


def test_steps_run_in_order_and_each_is_logged_done(tmp_path: Path) -> None:
    async def scenario(store: SqliteStore) -> None:
        trace = Trace()
        job_id, ok = await in_job(store, trace)
        assert ok and trace.events == ["a", "b", "c"] and trace.failures == []
        assert await store.job_steps(job_id) == [("a", "done"), ("b", "done"), ("c", "done")]

    with_store(tmp_path, scenario)


def test_a_failing_step_is_undone_with_those_before_it_last_first(tmp_path: Path) -> None:
    async def scenario(store: SqliteStore) -> None:
        trace = Trace(fail_at="b")
        job_id, ok = await in_job(store, trace)
        assert not ok
        assert trace.events == ["a", "b", "undo-b", "undo-a"]
        assert trace.failures == ["b broke"]
        assert await store.job_steps(job_id) == [
            ("a", "done"), ("b", "failed"), ("b", "undone"), ("a", "undone"),
        ]  # fmt: skip

    with_store(tmp_path, scenario)


def test_a_resumed_job_skips_the_steps_it_had_done(tmp_path: Path) -> None:
    async def scenario(store: SqliteStore) -> None:
        job_id = await store.start_job("test", "res-1")
        await store.record_step(job_id, "a", "done")
        trace = Trace()
        _, ok = await in_job(store, trace, job_id)
        assert ok and trace.events == ["b", "c"]

    with_store(tmp_path, scenario)


def test_a_resumed_job_finishes_the_undo_a_crash_interrupted(tmp_path: Path) -> None:
    async def scenario(store: SqliteStore) -> None:
        job_id = await store.start_job("test", "res-1")
        for step, outcome in [("a", "done"), ("b", "done"), ("c", "failed"), ("c", "undone")]:
            await store.record_step(job_id, step, outcome)
        trace = Trace()
        _, ok = await in_job(store, trace, job_id)
        assert not ok
        assert trace.events == ["undo-b", "undo-a"]
        assert trace.failures == [None]

    with_store(tmp_path, scenario)


def test_an_undo_that_fails_is_logged_and_the_rest_are_still_undone(tmp_path: Path) -> None:
    async def scenario(store: SqliteStore) -> None:
        trace = Trace(fail_at="c")
        broken_undo = trace.action("undo-b")

        async def undo_b() -> None:
            await broken_undo()
            raise BackendError("undo-b broke")

        steps = trace.steps()
        steps[1] = Step("b", trace.action("b"), undo=undo_b)
        job_id = await store.start_job("test", "res-1")

        async def body() -> bool:
            CURRENT_JOB.set(job_id)
            return await run_steps(store, "test", steps, trace.failed)

        assert not await asyncio.create_task(body())
        assert trace.events == ["a", "b", "c", "undo-c", "undo-b", "undo-a"]
        assert trace.failures == ["c broke"]

    with_store(tmp_path, scenario)
