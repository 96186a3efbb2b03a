"""The roles a backend can play, as Protocols. The service composes them; none inherits another.

Control-path methods are coroutines. Data-path methods (reading a frozen view, writing restored
blocks, putting and getting snapshot blocks) are plain functions that do blocking file I/O: the
service runs them in worker threads, never on the event loop.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol, runtime_checkable


@runtime_checkable
class SnapshotSource(Protocol):
    """A point-in-time view of a volume's bytes, read block by block (512 KiB blocks)."""

    @property
    def size_bytes(self) -> int: ...

    def iter_blocks(self, start_index: int = 0) -> Iterator[tuple[int, bytes]]:
        """Yield (block index, 512 KiB of data) in index order from ``start_index`` on,
        skipping blocks that are holes or all zeros."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class StorageBackend(Protocol):
    """Where volumes' bytes live (file, lvm, rbd)."""

    async def check_setup(self) -> None:
        """Raise SetupError with a clear message if this host cannot serve the backend."""
        ...

    async def create(self, volume_id: str, size_bytes: int) -> None:
        """Create an empty (all-zero) volume. Idempotent: an existing volume of that size is kept."""
        ...

    async def delete(self, volume_id: str) -> None:
        """Remove the volume and free its space. Idempotent: an absent volume is not an error."""
        ...

    async def extend(self, volume_id: str, size_bytes: int) -> None:
        """Grow the volume to ``size_bytes``; the new space reads as zeros."""
        ...

    async def list_volumes(self) -> list[str]:
        """Ids of every volume this backend holds (for reconciliation)."""
        ...

    async def freeze(self, volume_id: str, view_id: str) -> None:
        """Make a durable point-in-time view of the volume, named ``view_id``. Must be fast enough
        to run inside the API call (reflink clone, LVM/RBD snapshot, sparse copy)."""
        ...

    def open_view(self, view_id: str) -> SnapshotSource:
        """Open a frozen view for reading (blocking)."""
        ...

    async def drop_view(self, view_id: str) -> None:
        """Remove a frozen view. Idempotent."""
        ...

    async def list_views(self) -> list[str]:
        """Ids of every frozen view that exists (for reconciliation)."""
        ...

    def write_blocks(self, volume_id: str, blocks: Iterable[tuple[int, bytes]]) -> None:
        """Write (block index, data) pairs into an existing volume and make them durable
        (blocking). Blocks not written stay holes."""
        ...

    def free_bytes(self) -> int:
        """Bytes the backend can still store (for capacity checks before a restore)."""
        ...

    def device_path(self, volume_id: str) -> str:
        """Path of the volume as one block device or raw file, for export and attach."""
        ...


@runtime_checkable
class BlockStore(Protocol):
    """Snapshot blocks addressed by SHA-256, stored once (blocking methods)."""

    def put(self, digest: bytes, data: bytes) -> bool:
        """Store a block under its digest. Returns True if it was written, False if present."""
        ...

    def get(self, digest: bytes) -> bytes:
        """Return the block; raise CorruptBlockError if its bytes do not hash to ``digest``,
        MissingBlockError if absent."""
        ...

    def contains(self, digest: bytes) -> bool: ...

    def delete(self, digest: bytes) -> None:
        """Remove a block. Idempotent."""
        ...

    def flush(self) -> None:
        """Make every block put so far durable (fsync / syncfs)."""
        ...

    def iter_digests(self) -> Iterator[bytes]:
        """Every digest stored (for garbage collection and reconciliation)."""
        ...

    def stored_bytes(self) -> int:
        """Bytes the stored blocks take."""
        ...
