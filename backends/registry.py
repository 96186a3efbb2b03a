"""Explicit registries of the backends a configuration can name (classes, for the compliance
test and for wiring; ebsemu.hosts builds them from the configuration)."""

from __future__ import annotations

from backends.blockstore import LocalBlockStore
from backends.blockstore_rados import RadosBlockStore
from backends.file import FileStorage
from backends.lvm import LvmStorage
from backends.rbd import RbdStorage
from backends.remote_file import RemoteFileStorage

STORAGE: dict[
    str, type[FileStorage] | type[LvmStorage] | type[RbdStorage] | type[RemoteFileStorage]
] = {
    "file": FileStorage,
    "lvm": LvmStorage,
    "rbd": RbdStorage,
    "remote-file": RemoteFileStorage,
}
BLOCK_STORES: dict[str, type[LocalBlockStore] | type[RadosBlockStore]] = {
    "local": LocalBlockStore,
    "rados": RadosBlockStore,
}
