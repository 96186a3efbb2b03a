"""The local block store's earlier layout, one file per block, kept readable and deletable.

Layout: ``root/ab/cd/abcd…`` (64 hex digits), fanned out by the digest's first two bytes. A
block was written to a temp file (``.tmp-…``) in its final directory and renamed into place.
No block is written this way any more (new blocks go to pack files, see backends/blockpack.py);
a store made by an earlier version keeps its blocks here until they are deleted.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

TEMP_PREFIX = ".tmp-"
_FANOUT = re.compile(r"[0-9a-f]{2}")
_BLOCK_NAME = re.compile(r"[0-9a-f]{64}")


class BlockFiles:
    """Blocks stored as files under ``root``, by digest."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._any: bool | None = None  # whether a fan-out directory exists; None: not looked

    def _none_here(self) -> bool:
        """True when the store has no fan-out directory, hence no block of this layout. Looked
        at once: no block is written in this layout any more, so none can appear later."""
        if self._any is None:
            try:
                with os.scandir(self._root) as entries:
                    self._any = any(
                        _FANOUT.fullmatch(entry.name) and entry.is_dir() for entry in entries
                    )
            except FileNotFoundError:
                self._any = False
        return not self._any

    def path_of(self, digest: bytes) -> Path:
        name = digest.hex()
        return self._root / name[0:2] / name[2:4] / name

    def contains(self, digest: bytes) -> bool:
        return not self._none_here() and self.path_of(digest).exists()

    def read(self, digest: bytes) -> bytes | None:
        """The file's bytes, or None when there is no such block file."""
        try:
            return self.path_of(digest).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, digest: bytes) -> None:
        self.path_of(digest).unlink(missing_ok=True)

    def entries(self) -> Iterator[os.DirEntry[str]]:
        """Every block file: a 64-hex-digit name in the directory its prefix names."""
        for prefix, directory in self._leaf_dirs():
            with os.scandir(directory) as entries:
                for entry in entries:
                    if (
                        _BLOCK_NAME.fullmatch(entry.name)
                        and entry.name.startswith(prefix)
                        and entry.is_file()
                    ):
                        yield entry

    def remove_temp_files(self) -> int:
        """Delete temp files left by puts a crash interrupted; returns how many."""
        removed = 0
        for _, directory in self._leaf_dirs():
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.name.startswith(TEMP_PREFIX):
                        Path(entry.path).unlink(missing_ok=True)
                        removed += 1
        if removed:
            logger.warning("removed %d temp file(s) from %s", removed, self._root)
        return removed

    def _leaf_dirs(self) -> Iterator[tuple[str, str]]:
        """(``abcd``, path) of each ``ab/cd`` fan-out directory."""
        for top in _fanout_entries(str(self._root)):
            for leaf in _fanout_entries(top.path):
                yield top.name + leaf.name, leaf.path


def _fanout_entries(directory: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as entries:
            return [e for e in entries if _FANOUT.fullmatch(e.name) and e.is_dir()]
    except FileNotFoundError:
        return []
