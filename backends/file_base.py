"""Captured views of the file backend kept as the bases of their volumes' next views.

Layout under the data directory::

    bases/<volume_id>@<view_id>/…    a view whose snapshot completed, same layout as views/…

On a filesystem with reflink a view is a clone of the volume: it shares the volume's extents
and costs only the blocks the volume changes afterwards. Once its snapshot has completed the
view is kept (``keep``: moved from ``views/`` to ``bases/``), and the volume's next view reads
only the blocks whose extents differ from it (backends/file_changes.py). One base per volume:
keeping a newer view removes the older base; a view older than the volume's base is dropped
instead. A view that was copied (no reflink: ext4, tmpfs) is never kept, as it holds a full
copy of the volume's data; nor is the view of a volume deleted meanwhile.

A base goes with its snapshot (``drop``) or its volume (``drop_volume``). A view being read
against a base holds the base's files open, so removing the base then frees its space only
once that reader closes. ``collect`` (start-up) removes bases of volumes that are gone and all
but the newest of a volume (a crash between keeping a view and removing the older base).

Bases are not views: ``list_views`` (and so reconciliation) never sees them.

``lock`` is held (briefly: renames, never a file's data) while a base is chosen and its files
opened, kept, or removed, so that a reader never opens a base half removed.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from backends import sparse

logger = logging.getLogger(__name__)

SEPARATOR = "@"
REFLINK = "reflink"


@dataclass(frozen=True)
class ViewInfo:
    """What a view's description says about where it came from."""

    volume_id: str
    reflinked: bool  # every segment is a reflink clone of the volume's
    frozen_ns: int  # when it was frozen (orders the views of one volume)

    @classmethod
    def read(cls, meta: Path) -> ViewInfo | None:
        """The view's info from its description file; None if there is none (or it predates
        the keys: such a view is never kept)."""
        try:
            data = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict):
            return None
        volume_id, frozen_by, frozen_ns = (
            data.get("volume_id"),
            data.get("frozen_by"),
            data.get("frozen_ns"),
        )
        if not (isinstance(volume_id, str) and isinstance(frozen_ns, str) and frozen_ns.isdigit()):
            return None
        return cls(volume_id, frozen_by == REFLINK, int(frozen_ns))


@dataclass(frozen=True)
class Base:
    """One kept base: ``bases/<volume_id>@<view_id>``."""

    volume_id: str
    view_id: str
    path: Path


class FileBases:
    """The ``bases/`` directory next to ``views/`` and ``volumes/`` (blocking methods)."""

    def __init__(self, views: Path, bases: Path, volumes: Path, meta_name: str) -> None:
        self._views = views
        self._bases = bases
        self._volumes = volumes
        self._meta_name = meta_name
        self.lock = threading.Lock()

    @property
    def directory(self) -> Path:
        return self._bases

    def view_info(self, directory: Path) -> ViewInfo | None:
        return ViewInfo.read(directory / self._meta_name)

    def newest(self, volume_id: str, exclude: str = "") -> Base | None:
        """The volume's newest base other than view ``exclude``. Call with ``lock`` held."""
        best: tuple[int, Base] | None = None
        for base in self._of_volume(volume_id):
            if base.view_id == exclude:
                continue
            info = self.view_info(base.path)
            frozen = -1 if info is None else info.frozen_ns
            if best is None or frozen > best[0]:
                best = (frozen, base)
        return None if best is None else best[1]

    def keep(self, view_id: str) -> None:
        """The view's snapshot has completed: make it its volume's base, replacing an older
        one; drop it instead when it cannot serve as one (copied, not reflinked; its volume
        deleted; a newer base kept already). Idempotent."""
        graves: list[Path] = []
        with self.lock:
            info = self.view_info(self._views / view_id)
            if info is None:
                if any(base.view_id == view_id for base in self._entries()):
                    logger.info("view %s: kept as a base already", view_id)
                else:
                    graves += self._bury(self._views, view_id)
                    logger.info("view %s: gone or undescribed; not kept as a base", view_id)
                return self._fill(graves)
            why = self._why_not(info)
            if why is not None:
                graves += self._bury(self._views, view_id)
                logger.info("view %s: not kept as a base (%s); dropped", view_id, why)
                return self._fill(graves)
            self._bases.mkdir(exist_ok=True)
            os.rename(self._views / view_id, self._bases / base_name(info.volume_id, view_id))
            sparse.fsync_dir(self._bases)
            sparse.fsync_dir(self._views)
            for older in self._of_volume(info.volume_id):
                if older.view_id != view_id:
                    graves += self._bury(self._bases, older.path.name)
        logger.info("view %s: kept as the base of volume %s's next view", view_id, info.volume_id)
        self._fill(graves)

    def _why_not(self, info: ViewInfo) -> str | None:
        if not info.reflinked:
            return "a copy: the filesystem has no reflink"
        if not (self._volumes / info.volume_id).exists():
            return f"volume {info.volume_id} is deleted"
        newest = self.newest(info.volume_id)
        if newest is not None:
            other = self.view_info(newest.path)
            if other is not None and other.frozen_ns > info.frozen_ns:
                return f"the newer view {newest.view_id} is the base"
        return None

    def drop(self, view_id: str) -> None:
        """Remove the view's base, if it is one (its snapshot is deleted). Idempotent."""
        with self.lock:
            graves = [
                grave
                for base in self._entries()
                if base.view_id == view_id
                for grave in self._bury(self._bases, base.path.name)
            ]
        self._fill(graves)

    def drop_volume(self, volume_id: str) -> None:
        """Remove the volume's base (the volume is deleted). Idempotent."""
        with self.lock:
            graves = [
                grave
                for base in self._of_volume(volume_id)
                for grave in self._bury(self._bases, base.path.name)
            ]
        self._fill(graves)

    def collect(self) -> int:
        """Remove the bases of volumes that are gone, and all but the newest base of each
        volume (start-up). Returns how many went."""
        graves: list[Path] = []
        with self.lock:
            for volume_id in sorted({base.volume_id for base in self._entries()}):
                kept = None
                if (self._volumes / volume_id).exists():
                    kept = self.newest(volume_id)
                for base in self._of_volume(volume_id):
                    if kept is None or base.view_id != kept.view_id:
                        why = "a newer one is kept" if kept else "the volume is gone"
                        logger.warning("removing base %s (%s)", base.path, why)
                        graves += self._bury(self._bases, base.path.name)
        self._fill(graves)
        return len(graves)

    # -- implementation --

    def _entries(self) -> list[Base]:
        try:
            names = sorted(os.listdir(self._bases))
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            volume_id, separator, view_id = name.partition(SEPARATOR)
            if separator and volume_id and view_id and not name.startswith("."):
                found.append(Base(volume_id, view_id, self._bases / name))
        return found

    def _of_volume(self, volume_id: str) -> list[Base]:
        return [base for base in self._entries() if base.volume_id == volume_id]

    @staticmethod
    def _bury(parent: Path, name: str) -> list[Path]:
        """Rename the entry to a hidden name, so that it vanishes at once: the new path, to
        delete with ``_fill`` once the lock is released; nothing if there was no entry."""
        grave = parent / f".del-{name}-{secrets.token_hex(4)}"
        try:
            os.rename(parent / name, grave)
        except FileNotFoundError:
            return []
        sparse.fsync_dir(parent)
        return [grave]

    @staticmethod
    def _fill(graves: list[Path]) -> None:
        for grave in graves:
            shutil.rmtree(grave)
            logger.info("removed %s", grave)


def base_name(volume_id: str, view_id: str) -> str:
    return f"{volume_id}{SEPARATOR}{view_id}"
