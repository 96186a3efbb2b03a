"""How CreateSnapshot freezes a volume's bytes before it answers.

Most backends freeze by sharing the volume's data (a reflink clone, an RBD or LVM snapshot): the
freeze is instant, and what changed since the last snapshot is found when the view is read. A
file backend without reflink would copy the whole volume instead. There, when the volume has a
completed snapshot, the new snapshot's manifest starts as a copy of that one's (under the GC
lock: its blocks are then referenced by the new snapshot too, whatever happens to the old), and
the freeze reads and hashes the volume against those digests, copying only the blocks that
differ (``DigestFreezer``); the capture lays them over the copied manifest. Where no block
differs, no view is made at all: the copied manifest is the whole snapshot, which completes
without a capture.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from backends.base import BlockDigests, DigestFreezer, StorageBackend
from backends.errors import BackendError
from ebsemu.service import snapshot_data
from ebsemu.service.core import Core

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Frozen:
    """What a freeze left for the snapshot: a view for its capture to read, or no view at all
    where nothing changed since the snapshot its manifest was seeded with."""

    seeded: bool  # the manifest holds an earlier snapshot's rows: sweep them if given up
    unchanged_blocks: int | None = None  # no view: the seeded manifest's blocks are the whole

    @property
    def has_view(self) -> bool:
        return self.unchanged_blocks is None


async def freeze(core: Core, storage: StorageBackend, volume_id: str, snapshot_id: str) -> Frozen:
    """Freeze the volume as the view of ``snapshot_id`` (its capture is not started). Whoever
    gives up the snapshot before its capture runs must sweep a seeded manifest
    (snapshot_data.sweep). Without a view the snapshot is to be completed as it is, with no
    capture. BackendError or OSError if it cannot be frozen; the manifest is then empty."""
    copies = isinstance(storage, DigestFreezer) and await storage.freezes_by_copy()
    base_id = await core.store.latest_completed_snapshot(volume_id) if copies else None
    if base_id is None or not isinstance(storage, DigestFreezer):
        await storage.freeze(volume_id, snapshot_id)
        return Frozen(seeded=False)
    digests = await snapshot_data.seed_manifest(core, base_id, snapshot_id)
    log.info(
        "snapshot %s of %s: freezing the blocks that differ from snapshot %s (%d blocks)",
        snapshot_id,
        volume_id,
        base_id,
        len(digests),
    )
    try:
        viewed = await storage.freeze_changes(
            volume_id, snapshot_id, BlockDigests(base_id, digests)
        )
    except (BackendError, OSError):
        await snapshot_data.sweep(core, snapshot_id)
        raise
    return Frozen(seeded=True, unchanged_blocks=None if viewed else len(digests))
