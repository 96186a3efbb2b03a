"""Export backends: how a volume's device reaches the host its VMM runs on. Each implements
backends.base.ExportBackend and is built with ``from_options(options, runner=..., templates=...)``
from its configuration section."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from backends.base import ExportBackend
from backends.export.errors import ExportConflict, ExportError
from backends.export.none import NoExport
from backends.export.records import export_from_dict, export_to_dict
from backends.export.tgt import TgtConfig, TgtExport
from hostcmds import CommandRunner, CommandTemplates


class ExportFactory(Protocol):
    """How the service builds an export backend from its configuration section."""

    def from_options(
        self, options: Mapping[str, str], *, runner: CommandRunner, templates: CommandTemplates
    ) -> ExportBackend: ...


EXPORTS: Mapping[str, ExportFactory] = {"tgt": TgtExport, "none": NoExport}

__all__ = [
    "EXPORTS",
    "ExportConflict",
    "ExportError",
    "ExportFactory",
    "NoExport",
    "TgtConfig",
    "TgtExport",
    "export_from_dict",
    "export_to_dict",
]
