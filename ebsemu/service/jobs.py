"""Background jobs with an intent record: written to the store before they run, marked done
after, and resumed from the store at start-up if the process died in between.

On a store shared by several server instances each job is leased to one instance: ``keep``
renews the leases of the jobs this instance runs (cancelling any it lost) and takes over the
jobs of instances that died (their leases ran out).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from ebsemu.store.base import Store

log = logging.getLogger(__name__)

# A job's handler; it returns True when it marked its job done itself, in its last store
# write (see ``run_steps``' ``close``), and None or False to have the job marked done after it.
Handler = Callable[[str, dict[str, Any]], Awaitable[bool | None]]

# The id of the job whose handler is running (in the job's task), for its step log.
CURRENT_JOB: ContextVar[int | None] = ContextVar("CURRENT_JOB", default=None)
# Whether that job was recorded by this process just now (so it has no step log to read yet),
# rather than resumed from the store at start-up.
NEW_JOB: ContextVar[bool] = ContextVar("NEW_JOB", default=False)

# On a shared store, a transitional resource counts as stranded only if it still is after
# this long: another instance may be between the state change and the job's record.
STRANDED_RECHECK_SECONDS = 2.0


class Jobs:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._handlers: dict[str, Handler] = {}
        # (kind, resource id) -> its running jobs: more than one where a resource takes several
        # at once (a Multi-Attach volume attaching to two instances).
        self._running: dict[tuple[str, str], set[asyncio.Task[None]]] = {}
        self._job_tasks: dict[int, asyncio.Task[None]] = {}
        self._recorded: set[int] = set()  # recorded here, to be started or failed here
        self._closing = False

    def register(self, kind: str, handler: Handler) -> None:
        self._handlers[kind] = handler

    async def submit(self, kind: str, resource_id: str, **payload: Any) -> None:
        """Record the intent, then run it in the background."""
        job_id = await self.record(kind, resource_id, **payload)
        self.start(job_id, kind, resource_id, **payload)

    async def record(self, kind: str, resource_id: str, **payload: Any) -> int:
        """Write the intent to the store (for work that begins in the request itself)."""
        job_id = await self._store.start_job(kind, resource_id, json.dumps(payload))
        self._recorded.add(job_id)
        return job_id

    def recorded(self, job_id: int) -> None:
        """Hold a job whose intent record the caller wrote with its resource, in one
        transaction (where ``record`` writes it alone), until it is started or failed here."""
        self._recorded.add(job_id)

    def start(self, job_id: int, kind: str, resource_id: str, **payload: Any) -> None:
        """Run a job recorded by this process in the background."""
        self._recorded.discard(job_id)
        self._spawn(job_id, kind, resource_id, payload, new=True)

    def closed(self, job_id: int) -> None:
        """Stop holding a recorded job that its caller closed in its own write (nothing was
        left for it to do). Were that write to fail, the job stays open in the store and is
        resumed as one a crash left open: at the next start (or by another instance sharing
        the store)."""
        self._recorded.discard(job_id)

    async def fail(self, job_id: int, error: str) -> None:
        """Close a recorded job that could not start."""
        self._recorded.discard(job_id)
        await self._store.finish_job(job_id, error)

    async def resume(self) -> int:
        """Run again every job the store says was started and never finished (on a shared
        store: that no live instance holds)."""
        pending = await self._store.claim_jobs(self._held())
        for job_id, kind, resource_id, payload in pending:
            log.info("resuming job %d: %s %s", job_id, kind, resource_id)
            self._spawn(job_id, kind, resource_id, json.loads(payload), new=False)
        return len(pending)

    async def keep(self, interval: float) -> None:
        """Every ``interval`` seconds: renew this instance's leases, cancel the jobs whose
        lease was lost (another instance took them over), take over the jobs of instances
        that died. Runs until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                running = self._held()
                held = await self._store.renew_job_leases(running)
                for job_id in set(running) - held:
                    task = self._job_tasks.get(job_id)
                    if task is not None:
                        log.warning("job %d: lease lost to another instance; stopping", job_id)
                        task.cancel()
                await self.resume()
            except Exception:
                log.exception("renewing or claiming job leases failed")

    async def settle_stranded(self) -> int:
        """Start the job that finishes each resource a crash left in a transitional state
        before its job was recorded."""
        stranded = await self._store.stranded()
        if stranded and self._store.shared:
            await asyncio.sleep(STRANDED_RECHECK_SECONDS)
            again = set(await self._store.stranded())
            stranded = [entry for entry in stranded if entry in again]
        for kind, resource_id, payload in stranded:
            log.warning("%s %s was left without its job; starting it", kind, resource_id)
            await self.submit(kind, resource_id, **json.loads(payload))
        return len(stranded)

    def _held(self) -> list[int]:
        """The jobs this instance runs or is about to start."""
        return sorted(self._recorded | set(self._job_tasks))

    def is_running(self, kind: str, resource_id: str) -> bool:
        return (kind, resource_id) in self._running

    def busy(self, resource_id: str) -> bool:
        """Whether a job of any kind runs for the resource now."""
        return any(running == resource_id for _, running in self._running)

    async def cancel(self, kind: str, resource_id: str) -> None:
        """Cancel the jobs of ``kind`` running for a resource, if any, and wait for them to end."""
        tasks = self._running.get((kind, resource_id))
        if tasks:
            for task in tasks:
                task.cancel()
            await asyncio.wait(set(tasks))

    async def close(self, timeout: float = 10.0) -> None:
        """Let running jobs finish for ``timeout`` seconds, then cancel the rest (they resume
        at the next start, from their intent records)."""
        self._closing = True
        tasks = self._tasks()
        if not tasks:
            return
        _, still = await asyncio.wait(tasks, timeout=timeout)
        for task in still:
            task.cancel()
        if still:
            await asyncio.wait(still)

    async def idle(self) -> None:
        """Wait until no job runs (tests and orderly shutdown)."""
        while self._running:
            await asyncio.wait(self._tasks())

    def _tasks(self) -> set[asyncio.Task[None]]:
        return {task for tasks in self._running.values() for task in tasks}

    def _spawn(
        self, job_id: int, kind: str, resource_id: str, payload: dict[str, Any], *, new: bool
    ) -> None:
        handler = self._handlers[kind]
        task = asyncio.create_task(
            self._run(job_id, kind, resource_id, handler, payload, new),
            name=f"{kind}:{resource_id}",
        )
        key = (kind, resource_id)
        self._running.setdefault(key, set()).add(task)
        self._job_tasks[job_id] = task
        task.add_done_callback(lambda t: self._forget(key, job_id, t))

    def _forget(self, key: tuple[str, str], job_id: int, task: asyncio.Task[None]) -> None:
        tasks = self._running.get(key, set())
        tasks.discard(task)
        if not tasks:
            self._running.pop(key, None)
        if self._job_tasks.get(job_id) is task:
            del self._job_tasks[job_id]

    async def _run(
        self,
        job_id: int,
        kind: str,
        resource_id: str,
        handler: Handler,
        payload: dict[str, Any],
        new: bool,
    ) -> None:
        CURRENT_JOB.set(job_id)
        NEW_JOB.set(new)
        try:
            closed = await handler(resource_id, payload)
        except asyncio.CancelledError:
            if self._closing:
                log.info("job %d (%s %s) interrupted by shutdown", job_id, kind, resource_id)
                raise
            await self._store.finish_job(job_id, "cancelled")
            raise
        except Exception as exc:
            log.exception("job %d (%s %s) failed", job_id, kind, resource_id)
            await self._store.finish_job(job_id, f"{type(exc).__name__}: {exc}")
            return
        if not closed:
            await self._store.finish_job(job_id)
