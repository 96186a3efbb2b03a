"""Test-only fault points: named places in a job where a crash can be injected.

``EBSEMU_FAULT=step[:count][:action]`` (read once, at import) makes the process act when it
reaches the named step for the count-th time (1 by default): ``kill`` (the default) ends the
process at once with ``os._exit(137)``, as SIGKILL would (no cleanup, no flush, no finally);
``hang`` waits there forever, as a slow host command would, until the job is cancelled.
With the variable unset, ``reach`` is one comparison against None.

Every step name is listed in ``STEPS``, so a crash harness can visit each one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from dataclasses import dataclass

log = logging.getLogger(__name__)

ENV = "EBSEMU_FAULT"
KILLED_EXIT = 137  # what a shell reports for a SIGKILLed process

# Step names, in the order a job reaches them.
STEPS: tuple[str, ...] = (
    "create_volume.allocated",  # storage exists, data not restored, state still creating
    "create_volume.restored",  # data restored from the snapshot, state still creating
    "copy_volume.recorded",  # CopyVolumes: the copy and its create job recorded, nothing copied
    "snapshot.recorded",  # snapshot and capture intent recorded, volume not frozen yet
    "snapshot.paused",  # guests paused (and recorded) for views, no view taken yet
    "snapshot.frozen",  # view frozen and intent recorded, capture job not started
    "snapshot.batch",  # one batch of manifest rows and blocks stored, more to come
    "snapshot.captured",  # every block stored and flushed, state still pending
    "snapshot.completed",  # state completed, frozen view not dropped yet
    "modify_volume.growing",  # volume checked under its lock, storage not grown yet
    "delete_volume.removed",  # storage removed, state still deleting
    "delete_snapshot.swept",  # blocks swept, record not removed yet
    "attach.exported",  # volume exported, not yet attached in the VMM
    "attach.attached",  # attached in the VMM, attachment still attaching
    "detach.detached",  # detached in the VMM, export and record still there
)


@dataclass(frozen=True)
class Fault:
    step: str
    count: int
    action: str


def parse(spec: str) -> Fault:
    """``step[:count][:action]`` -> Fault; ValueError for anything else."""
    parts = spec.split(":")
    step = parts[0]
    if step not in STEPS:
        raise ValueError(f"{ENV}: unknown step {step!r}; known: {', '.join(STEPS)}")
    count = int(parts[1]) if len(parts) > 1 and parts[1] else 1
    action = parts[2] if len(parts) > 2 else "kill"
    if count < 1 or action not in ("kill", "hang") or len(parts) > 3:
        raise ValueError(f"{ENV}={spec!r}: use step[:count>=1][:kill|hang]")
    return Fault(step, count, action)


_armed: Fault | None = parse(os.environ[ENV]) if os.environ.get(ENV) else None
_reached = 0


async def reach(step: str) -> None:
    """Mark that a job reached ``step``: a no-op unless a fault is armed for it."""
    if _armed is None or _armed.step != step:
        return
    global _reached
    _reached += 1
    if _reached != _armed.count:
        return
    if _armed.action == "hang":
        log.warning("fault injected: hanging at %s", step)
        await asyncio.Event().wait()
    sys.stderr.write(f"ebsemu: fault injected: killed at {step}\n")
    sys.stderr.flush()
    os._exit(KILLED_EXIT)
