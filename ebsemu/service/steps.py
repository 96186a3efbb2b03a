"""A job as a list of named steps, each with an undo, its progress logged in the store.

``run_steps`` runs the steps in order and logs each one `done` as it ends. When a step fails
(a backend error), the failed step and every step done before it are undone in reverse order,
each logged `undone`, and the job's ``failed`` callback leaves the resource in a state EC2
allows (`error` with a message). A job resumed after a crash reads its log: the steps logged
`done` are skipped, and a job that had begun undoing finishes undoing. Undos must be
idempotent (a crash may come between an undo and its log entry), and so must each step (a crash
may come between a step and its log entry, and the step runs again).

A job may write its `done` entries with its last store write instead (``close``): one commit
where each step would cost one. A crash before it runs the steps again, which their
idempotence allows; a failure first logs them, so the undo knows what was begun.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from backends.errors import BackendError
from ebsemu.service.jobs import CURRENT_JOB, NEW_JOB
from ebsemu.store.base import StepStore

log = logging.getLogger(__name__)

DONE = "done"
FAILED = "failed"
UNDONE = "undone"

Action = Callable[[], Awaitable[None]]
# The job's last write, given the steps done and not logged yet: it logs them done, makes its
# own change and marks the job done, in one transaction.
Close = Callable[[Sequence[str]], Awaitable[None]]


@dataclass(frozen=True)
class Step:
    name: str
    do: Action
    undo: Action | None = None


async def run_steps(
    store: StepStore,
    label: str,
    steps: Sequence[Step],
    failed: Callable[[Exception | None], Awaitable[None]],
    *,
    close: Close | None = None,
) -> bool:
    """Run (or resume) ``steps`` for the current job; True if they all got done (and then
    ``close``, if given, ran). ``failed`` gets the error, or None when a resumed job finishes
    the undo a crash interrupted. A job this process has just recorded has no log to read."""
    job_id = CURRENT_JOB.get()
    fresh = job_id is None or NEW_JOB.get()
    history = [] if fresh or job_id is None else await store.job_steps(job_id)
    done = [step for step, outcome in history if outcome == DONE]
    if any(outcome in (FAILED, UNDONE) for _, outcome in history):
        log.warning("%s: resuming the undo a crash interrupted", label)
        await _undo(store, job_id, label, steps, history)
        await failed(None)
        return False
    unlogged: list[str] = []
    for step in steps:
        if step.name in done:
            log.info("%s: step %s was done before the restart; skipped", label, step.name)
            continue
        try:
            await step.do()
        except (BackendError, OSError) as exc:
            log.error("%s: step %s failed, undoing: %s", label, step.name, exc)
            for name in unlogged:
                await _record(store, job_id, name, DONE)
            await _record(store, job_id, step.name, FAILED)
            history = [*history, (step.name, FAILED)]
            await _undo(store, job_id, label, steps, history)
            await failed(exc)
            return False
        if close is None:
            await _record(store, job_id, step.name, DONE)
        else:
            unlogged.append(step.name)
        history.append((step.name, DONE))
    if close is not None:
        await close(unlogged)
    return True


async def _undo(
    store: StepStore,
    job_id: int | None,
    label: str,
    steps: Sequence[Step],
    history: list[tuple[str, str]],
) -> None:
    """Undo, last first, every step done or failed and not yet undone."""
    begun = {step for step, outcome in history if outcome in (DONE, FAILED)}
    undone = {step for step, outcome in history if outcome == UNDONE}
    for step in reversed(steps):
        if step.name not in begun or step.name in undone:
            continue
        if step.undo is not None:
            try:
                await step.undo()
            except (BackendError, OSError) as exc:
                # Left for reconciliation and the resource's own delete; the undo goes on.
                log.error("%s: undoing step %s failed: %s", label, step.name, exc)
            else:
                log.info("%s: step %s undone", label, step.name)
        await _record(store, job_id, step.name, UNDONE)


async def _record(store: StepStore, job_id: int | None, step: str, outcome: str) -> None:
    if job_id is not None:
        await store.record_step(job_id, step, outcome)
