"""The composed service: store, backends and job runner, as one object the API layer holds."""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

from backends.base import BlockStore, ExportBackend, Initiator, StorageBackend, VmmBackend
from ebsemu import errors
from ebsemu.config import Config, Zone
from ebsemu.locks import ResourceLocks
from ebsemu.model import Snapshot, Volume
from ebsemu.service.guest_pause import GuestPauses
from ebsemu.service.jobs import Jobs
from ebsemu.service.storage_hosts import StorageHosts
from ebsemu.store.base import Store


@dataclass
class Core:
    config: Config
    store: Store
    storage_hosts: StorageHosts
    blocks: BlockStore
    jobs: Jobs
    vmms: dict[str, VmmBackend] = field(default_factory=dict)  # by configured VMM host name
    # The [export] of the one [storage] section (None with named storage hosts or no export);
    # the service exports each volume with its storage host's (storage_hosts entries).
    export: ExportBackend | None = None
    initiators: dict[str, Initiator] = field(default_factory=dict)  # by VMM host name
    locks: ResourceLocks = field(default_factory=ResourceLocks)
    # Held while manifest rows are added with their blocks, and while unreferenced blocks are
    # swept, so a sweep never deletes a block a running snapshot has just counted on (across
    # the server instances sharing a PostgreSQL store: ebsemu.store.locks.StoreLock).
    block_gc_lock: AbstractAsyncContextManager[None] = field(default_factory=asyncio.Lock)
    pauses: GuestPauses = field(default_factory=GuestPauses)  # guests paused for views
    # Quota places taken by requests whose inserts are not done yet (ebsemu.service.quotas),
    # by (kind, account id, region).
    quota_holds: dict[tuple[str, str, str], int] = field(default_factory=dict)

    def storage_for(self, resource: Volume | Snapshot) -> StorageBackend:
        """The backend of the storage host holding the volume (or the snapshot's frozen view)."""
        return self.storage_hosts.backend(resource.storage_host)

    def zone(self, region: str, name: str | None, zone_id: str | None) -> Zone:
        for zone in self.config.zones_in(region):
            if zone.name == name or zone.zone_id == zone_id:
                return zone
        wanted = (name if name is not None else zone_id) or ""
        raise errors.InvalidZoneNotFound(f"The zone '{wanted[:64]}' does not exist.")
