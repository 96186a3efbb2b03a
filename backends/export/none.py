"""The ``none`` export: storage and VMM share a host, so the VMM opens the volume's file or
block device directly and nothing is exported."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from backends.base import ExportInfo, Initiator, LocalSource
from backends.export.records import check_volume_id
from backends.options import Options
from hostcmds import CommandRunner, CommandTemplates


class NoExport:
    """ExportBackend that hands the VMM the local path (a LocalSource)."""

    @classmethod
    def from_options(
        cls, options: Mapping[str, str], *, runner: CommandRunner, templates: CommandTemplates
    ) -> NoExport:
        Options("export none", options).refuse_unknown(())
        return cls()

    async def check_setup(self) -> None:
        return None

    async def export(self, volume_id: str, device_path: str, initiator: Initiator) -> ExportInfo:
        check_volume_id(volume_id)
        return ExportInfo(volume_id, device_path, initiator, LocalSource(device_path))

    async def unexport(self, volume_id: str) -> None:
        check_volume_id(volume_id)

    async def list_exports(self) -> list[str]:
        return []

    async def refresh_size(self, volume_id: str) -> None:
        check_volume_id(volume_id)  # the VMM opens the file or device itself: nothing to do

    async def restore(self, exports: Iterable[ExportInfo]) -> list[str]:
        return []

    async def health(self, volume_ids: Sequence[str]) -> dict[str, str]:
        return {}
