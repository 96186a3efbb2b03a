"""Sparse-file primitives: data extents (SEEK_DATA/SEEK_HOLE), physical extents (FIEMAP), reflink
clones of files and of ranges, hole punching, extent copies, whole-filesystem syncs, atomic small
files. Blocking; callers run them in worker threads."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import json
import os
import secrets
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backends.errors import BackendError

_FICLONE = 0x40049409  # _IOW(0x94, 9, int): clone a whole file by reference
_FICLONERANGE = 0x4020940D  # _IOW(0x94, 13, struct file_clone_range): clone a byte range
_FILE_CLONE_RANGE = struct.Struct("=qQQQ")  # src_fd, src_offset, src_length, dest_offset
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_COPY_CHUNK = 8 * 1024 * 1024
NO_REFLINK = frozenset({errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.ENOSYS})
_NO_COPY_FILE_RANGE = frozenset({errno.EXDEV, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS})

# FIEMAP (linux/fiemap.h): struct fiemap, then fm_extent_count struct fiemap_extent.
_FS_IOC_FIEMAP = 0xC020660B  # _IOWR('f', 11, struct fiemap)
_FIEMAP_HEADER = struct.Struct("=QQIIII")  # fm_start, fm_length, fm_flags, mapped, count, reserved
_FIEMAP_EXTENT = struct.Struct(
    "=QQQQQIIII"
)  # logical, physical, length, 2 reserved, flags, 3 reserved
_FIEMAP_BATCH = 512  # extents asked for per ioctl
FIEMAP_FLAG_SYNC = 0x1  # write the file's dirty pages back before mapping it
FIEMAP_EXTENT_LAST = 0x1
# Flags under which an extent's physical address says nothing reliable about its bytes: not
# known, not allocated yet (delayed allocation), encoded (compressed), encrypted, not block
# aligned, inline in metadata, packed into a shared tail.
FIEMAP_EXTENT_UNSURE = 0x2 | 0x4 | 0x8 | 0x80 | 0x100 | 0x200 | 0x400


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@functools.cache
def _libc_syncfs() -> Callable[[int], int] | None:
    """libc's syncfs(fd), or None where the C library lacks it."""
    try:
        func = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int]
    func.restype = ctypes.c_int
    return func


def sync_filesystem(path: Path) -> None:
    """Make everything written to the filesystem holding ``path`` durable: one syncfs(2), which
    costs one journal commit and one cache flush however many files were written (os.sync()
    where the C library has no syncfs). OSError if the filesystem reports a write error."""
    syncfs = _libc_syncfs()
    if syncfs is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"syncfs of {path}: {os.strerror(code)}")
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new file."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def make_sparse(path: Path, size: int) -> None:
    """Create or grow ``path`` to ``size`` bytes without allocating space, durably."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def next_data(fd: int, offset: int) -> int | None:
    """Offset of the first data byte at or after ``offset``, or None if only holes follow."""
    try:
        return os.lseek(fd, offset, os.SEEK_DATA)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return None
        raise


def is_hole(fd: int, offset: int, length: int) -> bool:
    """True if bytes [offset, offset + length) of ``fd`` hold no data extent."""
    start = next_data(fd, offset)
    return start is None or start >= offset + length


def data_extents(fd: int, offset: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) of each run of data in bytes [offset, size) of ``fd``."""
    while offset < size:
        start = next_data(fd, offset)
        if start is None or start >= size:
            return
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end
        offset = end


@dataclass(frozen=True)
class Extent:
    """One FIEMAP extent: ``length`` bytes at file offset ``logical`` live at ``physical`` on
    the device (meaningless when ``unsure``)."""

    logical: int
    physical: int
    length: int
    flags: int

    @property
    def unsure(self) -> bool:
        return bool(self.flags & FIEMAP_EXTENT_UNSURE)


def physical_extents(fd: int, offset: int, length: int) -> Iterator[Extent]:
    """The extents mapping bytes [offset, offset + length) of ``fd``, in file order (holes have
    none). The file's dirty pages are written back first (FIEMAP_FLAG_SYNC), so no extent is
    left in delayed allocation by writes made before the call. OSError (EOPNOTSUPP) where the
    filesystem cannot map files."""
    end = offset + length
    flags = FIEMAP_FLAG_SYNC
    buffer = bytearray(_FIEMAP_HEADER.size + _FIEMAP_BATCH * _FIEMAP_EXTENT.size)
    while offset < end:
        _FIEMAP_HEADER.pack_into(buffer, 0, offset, end - offset, flags, 0, _FIEMAP_BATCH, 0)
        fcntl.ioctl(fd, _FS_IOC_FIEMAP, buffer)
        mapped = _FIEMAP_HEADER.unpack_from(buffer, 0)[3]
        if not mapped:
            return
        for position in range(mapped):
            fields = _FIEMAP_EXTENT.unpack_from(
                buffer, _FIEMAP_HEADER.size + position * _FIEMAP_EXTENT.size
            )
            extent = Extent(
                logical=fields[0], physical=fields[1], length=fields[2], flags=fields[5]
            )
            yield extent
            if extent.flags & FIEMAP_EXTENT_LAST:
                return
        offset = max(offset, extent.logical + extent.length)
        flags = 0  # written back once is enough: nothing writes a frozen view


def copy_range(src: int, dst: int, offset: int, length: int) -> None:
    """Copy bytes [offset, offset + length) from src to the same place in dst."""
    end = offset + length
    try:
        while offset < end:
            copied = os.copy_file_range(src, dst, end - offset, offset, offset)
            if copied == 0:
                raise BackendError(f"source ended at {offset}, before {end}")
            offset += copied
        return
    except OSError as exc:
        if exc.errno not in _NO_COPY_FILE_RANGE:
            raise
    while offset < end:
        chunk = os.pread(src, min(_COPY_CHUNK, end - offset), offset)
        if not chunk:
            raise BackendError(f"source ended at {offset}, before {end}")
        pwrite_all(dst, chunk, offset)
        offset += len(chunk)


def clone_file(src_path: Path, dst_path: Path, size: int) -> str:
    """Make ``dst_path`` a durable copy of ``src_path``: a reflink where the filesystem can
    share extents, else a copy of the data extents (holes stay holes). Returns the method."""
    src = os.open(src_path, os.O_RDONLY)
    try:
        dst = os.open(dst_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                fcntl.ioctl(dst, _FICLONE, src)
                method = "reflink"
            except OSError as exc:
                if exc.errno not in NO_REFLINK:
                    raise
                os.ftruncate(dst, size)
                for start, end in data_extents(src, 0, size):
                    copy_range(src, dst, start, end - start)
                method = "copy"
            os.fsync(dst)
        finally:
            os.close(dst)
    finally:
        os.close(src)
    return method


def reflinks(directory: Path) -> bool:
    """True when files in ``directory`` can share extents (FICLONE of a small probe file)."""
    probe = directory / f".probe-{secrets.token_hex(4)}"
    src = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        pwrite_all(src, bytes(4096), 0)
        dst = os.open(f"{probe}-clone", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            fcntl.ioctl(dst, _FICLONE, src)
        except OSError as exc:
            if exc.errno not in NO_REFLINK:
                raise
            return False
        finally:
            os.close(dst)
            os.unlink(f"{probe}-clone")
        return True
    finally:
        os.close(src)
        os.unlink(probe)


def clone_range(src: int, src_offset: int, length: int, dst: int, dst_offset: int) -> None:
    """Make bytes [dst_offset, dst_offset + length) of ``dst`` share the extents of the same
    range of ``src`` (FICLONERANGE: offsets and length aligned to the filesystem's block size,
    or the length reaching the end of ``src``). OSError with an errno in NO_REFLINK means the
    filesystems cannot share extents (different filesystems, no reflink, unaligned range)."""
    arg = _FILE_CLONE_RANGE.pack(src, src_offset, length, dst_offset)
    fcntl.ioctl(dst, _FICLONERANGE, arg)


@functools.cache
def _fallocate() -> Callable[[int, int, int, int], int]:
    libc = ctypes.CDLL(None, use_errno=True)
    func = libc.fallocate
    func.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    func.restype = ctypes.c_int
    return func


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Free bytes [offset, offset + length) of ``fd``: they read as zeros, the file keeps its
    size (fallocate PUNCH_HOLE | KEEP_SIZE). Only whole filesystem blocks are freed."""
    if _fallocate()(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"fallocate(PUNCH_HOLE) failed: {os.strerror(code)}")
