"""Where a volume's job waits for work on the volume that another server instance does.

On one instance, the volume's lock keeps a deletion or an attach apart from a snapshot's
freeze, a copy and a grow: each begins under the lock, and the others wait for it. Instances
sharing a store hold only their own locks, so there a job that would undo such work midway
(remove the bytes a freeze or a copy is about to read, export a volume that is about to gain a
segment) first waits, as long as the store shows that work under way. An instance that dies
midway leaves it to the one that takes its job over, which ends the wait too; past
WAIT_SECONDS the job goes on regardless.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial

from backends.base import StorageBackend
from ebsemu.modification import ModificationState
from ebsemu.service.core import Core

log = logging.getLogger(__name__)

WAIT_SECONDS = 300.0
POLL_SECONDS = 0.1


async def after_freezes(core: Core, storage: StorageBackend, volume_id: str) -> None:
    """Return once no snapshot of the volume is being frozen. A snapshot being frozen is
    pending with no view yet: CreateSnapshot inserts it while the volume is available or in
    use (``Store.insert_snapshot_with_job``), then freezes the volume. Removing the volume's
    bytes in between would fail a snapshot that AWS completes."""

    async def freezing() -> list[str]:
        pending = await core.store.pending_snapshots(volume_id)
        if not pending:
            return []
        return sorted(set(pending) - set(await storage.list_views()))

    await _until_done(core, volume_id, "the freeze of snapshot(s)", freezing)


async def after_copies(core: Core, volume_id: str) -> None:
    """Return once no copy of the volume (CopyVolumes) is being made. CopyVolumes inserts the
    copy while its source is available or in use (``Store.insert_volume_with_job``), then
    copies the source's bytes, and its job then brings the copy to its size: removing the
    source's bytes meanwhile would leave the copy in `error`."""

    await _until_done(
        core, volume_id, "the copies", partial(core.store.copies_in_progress, volume_id)
    )


async def after_grow(core: Core, volume_id: str) -> None:
    """Return once the volume's modification, if any, has grown it (it is past `modifying`):
    an attach then exports, and a deletion removes, the storage at its new size."""

    async def growing() -> list[str]:
        modification = await core.store.get_modification(volume_id)
        modifying = modification is not None and modification.state is ModificationState.MODIFYING
        return [volume_id] if modifying else []

    await _until_done(core, volume_id, "the modification of", growing)


async def _until_done(
    core: Core, volume_id: str, what: str, under_way: Callable[[], Awaitable[list[str]]]
) -> None:
    if not core.store.shared:
        return
    deadline = time.monotonic() + WAIT_SECONDS
    while busy := await under_way():
        if time.monotonic() > deadline:
            log.warning(
                "volume %s: going on after %.0f s without waiting further for %s %s",
                volume_id,
                WAIT_SECONDS,
                what,
                ", ".join(busy),
            )
            return
        await asyncio.sleep(POLL_SECONDS)
