"""Errors the export backends raise. All are BackendErrors: messages are for logs, not
clients, and never hold a CHAP secret."""

from __future__ import annotations

from backends.errors import BackendError


class ExportError(BackendError):
    """Exporting or unexporting a volume failed."""


class ExportConflict(ExportError):
    """The volume is already exported differently (to another initiator or from another
    device); unexport it first."""
