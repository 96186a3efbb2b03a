"""Explicit registries of the backends a configuration can name."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from backends.base import BlockStore, StorageBackend
from backends.blockstore import LocalBlockStore
from backends.file import FileStorage

STORAGE: dict[str, Callable[[Path], StorageBackend]] = {"file": FileStorage}
BLOCK_STORES: dict[str, Callable[[Path], BlockStore]] = {"local": LocalBlockStore}
