"""Making a volume reachable from the VMM host it attaches to.

With no export backend configured, storage and VMM share a host and the VMM opens the volume's
file or device directly. With one (tgt), each attach exports the volume to the VMM host's
initiator only, with fresh per-volume CHAP credentials; the export record (secret included) is
kept in the metadata store, which only the service can read, and re-applied at start-up so a
restarted target daemon serves the same targets again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection

from backends.base import DiskSource, DiskSourceProvider, ExportBackend, LocalSource
from backends.errors import BackendError
from backends.export.records import export_from_dict, export_to_dict
from ebsemu.service.core import Core
from ebsemu.service.storage_hosts import StorageHostEntry

log = logging.getLogger(__name__)


class ExportService:
    def __init__(self, core: Core) -> None:
        self._core = core

    async def source_for(self, volume_id: str, vmm_host: str) -> DiskSource:
        """Where the VMM host finds the volume's bytes, exporting it first if needed (from the
        volume's storage host)."""
        entry = await self._entry(volume_id)
        if entry is None:
            raise BackendError(f"volume {volume_id} is not in the store")
        device = entry.backend.device_path(volume_id)
        export = entry.export
        if export is None:
            if isinstance(entry.backend, DiskSourceProvider):
                return entry.backend.disk_source(volume_id)
            return LocalSource(device)
        initiator = self._core.initiators[vmm_host]
        info = await export.export(volume_id, device, initiator)
        await self._core.store.save_export(volume_id, json.dumps(export_to_dict(info)))
        log.info("volume %s: exported from %s to %s", volume_id, entry.name, initiator)
        return info.source

    async def reaches_at_once(self, volume_id: str, vmm_hosts: Collection[str]) -> bool:
        """Whether VMMs on all of ``vmm_hosts`` can reach the volume at the same time
        (Multi-Attach): with an export, only when they are one initiator, as an export admits
        a single one."""
        entry = await self._entry(volume_id)
        if entry is None or entry.export is None:
            return True
        return len({self._core.initiators[host] for host in vmm_hosts}) <= 1

    async def release(self, volume_id: str) -> None:
        """Remove the volume's export and its credentials (idempotent). A volume the store no
        longer has is unexported from every storage host."""
        entry = await self._entry(volume_id)
        exports = self._exports() if entry is None else [entry.export]
        if not any(exports):
            return
        for export in exports:
            if export is not None:
                await export.unexport(volume_id)
        await self._core.store.drop_export(volume_id)

    async def reconcile(self) -> list[str]:
        """At start-up: re-apply the export of every attached volume exactly as recorded, and
        remove exports (and records) of volumes no longer attached, on every storage host. Returns
        the ids of the exports that had to be re-applied."""
        exports = self._exports()
        if not exports:
            return []
        store = self._core.store
        attached = await store.attached_volume_ids()
        records = [export_from_dict(json.loads(text)) for text in await store.exports()]
        for info in records:
            if info.volume_id not in attached:
                await self.release(info.volume_id)
        for export in exports:
            for volume_id in await export.list_exports():
                if volume_id not in attached:
                    log.warning("volume %s: export without an attachment; removing it", volume_id)
                    await export.unexport(volume_id)
                    await store.drop_export(volume_id)
        all_reapplied: list[str] = []
        for entry in self._core.storage_hosts.entries:
            if entry.export is None:
                continue
            mine = [
                r for r in records
                if r.volume_id in attached and await self._host_of(r.volume_id) == entry.name
            ]  # fmt: skip
            reapplied = await entry.export.restore(mine)
            if reapplied:
                log.info(
                    "re-applied %d exports on %s: %s",
                    len(reapplied),
                    entry.name,
                    ", ".join(reapplied),
                )
            all_reapplied += reapplied
        return all_reapplied

    def _exports(self) -> list[ExportBackend]:
        """Each storage host's export backend, once."""
        found: dict[int, ExportBackend] = {}
        for entry in self._core.storage_hosts.entries:
            if entry.export is not None:
                found.setdefault(id(entry.export), entry.export)
        return list(found.values())

    async def _host_of(self, volume_id: str) -> str | None:
        volume = await self._core.store.get_volume(volume_id)
        return None if volume is None else volume.storage_host

    async def _entry(self, volume_id: str) -> StorageHostEntry | None:
        host = await self._host_of(volume_id)
        return None if host is None else self._core.storage_hosts.entry(host)
