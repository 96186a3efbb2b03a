"""Sparse-file primitives: data extents (SEEK_DATA/SEEK_HOLE), reflink clones of files and of
ranges, hole punching, extent copies, atomic small files. Blocking; callers run them in worker
threads."""

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


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
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


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
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
