"""Snapshot lineages: two snapshots are related (ListChangedBlocks may compare them) when they
descend from one root — a volume created empty, a snapshot StartSnapshot began without a
parent, or a snapshot copy — through volumes created from snapshots, snapshots of volumes and
ParentSnapshotIds.

Each volume and snapshot records its lineage, the root's id, when it is made (from the record
it descends from), so relating two snapshots does not depend on the records between them still
existing: AWS keeps every snapshot comparable with its lineage whatever was deleted. A record
from before lineages were recorded has none: its lineage is then the root its ancestry reaches
through the records that exist now (a missing record's id, where the ancestry breaks) — the
relation ListChangedBlocks computed before.
"""

from __future__ import annotations

from ebsemu.model import COPY_VOLUME_ID, Snapshot, Volume
from ebsemu.store.base import Store

MAX_DEPTH = 1000  # records walked up from one without a lineage


async def of(store: Store, record: Snapshot | Volume) -> str:
    """The lineage of a volume or snapshot: the one recorded with it, else the one reached."""
    node = record
    for _ in range(MAX_DEPTH):
        if node.lineage is not None:
            return node.lineage
        found: Snapshot | Volume | None
        if isinstance(node, Volume):
            if node.snapshot_id is None:
                return node.id
            parent_id = node.snapshot_id
            found = await store.get_snapshot(parent_id)
        else:
            meta = await store.direct_meta(node.id)
            if meta is not None:  # written through the EBS direct API
                if meta.parent_snapshot_id is None:
                    return node.id
                parent_id = meta.parent_snapshot_id
                found = await store.get_snapshot(parent_id)
            elif node.volume_id == COPY_VOLUME_ID:  # a copy: a lineage of its own
                return node.id
            else:
                parent_id = node.volume_id
                found = await store.get_volume(parent_id)
        if found is None:
            return parent_id
        node = found
    return node.id
