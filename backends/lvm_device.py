"""The lvm backend's data path: reading a frozen view's block device and writing restored blocks
into a volume's block device (blocking; the service runs these in worker threads).

A block device has no holes to seek over, so a view is read whole, block by block, and all-zero
blocks are skipped after reading. For a thin snapshot that is still cheap where nothing was ever
written: device-mapper answers reads of unprovisioned thin blocks with zeros without touching
the pool's data device. (Asking the pool which blocks are provisioned needs ``thin_dump`` on a
metadata snapshot of a live pool; reading keeps the backend to plain LVM commands.)
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

from backends import sparse
from backends.errors import BackendError, CapacityError
from ebsemu.model import BLOCK_SIZE, ZERO_BLOCK

_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def _open_device(path: Path, flags: int, what: str) -> tuple[int, int]:
    """Open ``path``; return (fd, size in bytes). The size must be whole blocks."""
    try:
        fd = os.open(path, flags | os.O_CLOEXEC)
    except OSError as exc:
        raise BackendError(f"cannot open {what} device {path}: {exc.strerror or exc}") from exc
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        if size <= 0 or size % BLOCK_SIZE:
            raise BackendError(f"{what} device {path} has {size} bytes, not whole {BLOCK_SIZE}")
    except BaseException:
        os.close(fd)
        raise
    return fd, size


class DeviceView:
    """A frozen view's block device opened for reading; yields its blocks that are not all
    zeros."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None
        self._fd, self._size = _open_device(path, os.O_RDONLY, "view")
        os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)

    @property
    def size_bytes(self) -> int:
        return self._size

    def iter_blocks(self, start_index: int = 0) -> Iterator[tuple[int, bytes]]:
        if start_index < 0:
            raise ValueError(f"negative block index {start_index}")
        for index in range(start_index, self._size // BLOCK_SIZE):
            if self._fd is None:
                raise BackendError(f"view {self._path} is closed")
            try:
                data = os.pread(self._fd, BLOCK_SIZE, index * BLOCK_SIZE)
            except OSError as exc:
                raise BackendError(f"reading view {self._path}: {exc.strerror or exc}") from exc
            if len(data) != BLOCK_SIZE:
                raise BackendError(f"view {self._path} ended early, at block {index}")
            if data != ZERO_BLOCK:
                yield index, data

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def write_device_blocks(path: Path, blocks: Iterable[tuple[int, bytes]], volume_id: str) -> int:
    """Write (block index, data) pairs into the device at ``path`` and fsync it. An all-zero
    block is written only where the device does not read as zeros already, so a thin LV stays
    unprovisioned there. Returns the number of blocks written."""
    fd, size = _open_device(path, os.O_RDWR, "volume")
    written = 0
    try:
        for index, data in blocks:
            offset = index * BLOCK_SIZE
            if len(data) != BLOCK_SIZE or not 0 <= offset < size:
                raise BackendError(
                    f"block {index} ({len(data)} bytes) does not fit volume {volume_id} "
                    f"of {size // BLOCK_SIZE} blocks of {BLOCK_SIZE} bytes"
                )
            if data == ZERO_BLOCK and os.pread(fd, BLOCK_SIZE, offset) == ZERO_BLOCK:
                continue
            sparse.pwrite_all(fd, data, offset)
            written += 1
        os.fsync(fd)
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            raise CapacityError(f"no space left writing volume {volume_id}") from exc
        raise BackendError(f"writing volume {volume_id}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    return written
