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

from backends.base import DiskSource, LocalSource
from backends.export.records import export_from_dict, export_to_dict
from ebsemu.service.core import Core

log = logging.getLogger(__name__)


class ExportService:
    def __init__(self, core: Core) -> None:
        self._core = core

    async def source_for(self, volume_id: str, vmm_host: str) -> DiskSource:
        """Where the VMM host finds the volume's bytes, exporting it first if needed."""
        device = self._core.storage.device_path(volume_id)
        export = self._core.export
        if export is None:
            return LocalSource(device)
        initiator = self._core.initiators[vmm_host]
        info = await export.export(volume_id, device, initiator)
        await self._core.store.save_export(volume_id, json.dumps(export_to_dict(info)))
        log.info("volume %s: exported to %s", volume_id, initiator)
        return info.source

    async def release(self, volume_id: str) -> None:
        """Remove the volume's export and its credentials (idempotent)."""
        if self._core.export is None:
            return
        await self._core.export.unexport(volume_id)
        await self._core.store.drop_export(volume_id)

    async def reconcile(self) -> list[str]:
        """At start-up: re-apply the export of every attached volume exactly as recorded, and
        remove exports (and records) of volumes no longer attached. Returns the ids of the
        exports that had to be re-applied."""
        export = self._core.export
        if export is None:
            return []
        store = self._core.store
        attached = await store.attached_volume_ids()
        records = [export_from_dict(json.loads(text)) for text in await store.exports()]
        for info in records:
            if info.volume_id not in attached:
                await self.release(info.volume_id)
        for volume_id in await export.list_exports():
            if volume_id not in attached:
                log.warning("volume %s: export without an attachment; removing it", volume_id)
                await self.release(volume_id)
        reapplied = await export.restore([r for r in records if r.volume_id in attached])
        if reapplied:
            log.info("re-applied %d exports: %s", len(reapplied), ", ".join(reapplied))
        return reapplied
