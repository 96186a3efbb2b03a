"""Reading a frozen file's blocks in place, through a memory map, instead of copying them out.

``pread`` copies each block from the page cache into a new buffer. On the two-CPU hosts this
was measured on, that copy took nearly as much CPU as hashing the block while a second thread
hashed beside it (bench/RESULTS.md, 2026-11-28 12:30-13:31). A block read through a memory map
is hashed straight from the page cache, with no copy.

One hazard comes with a map: touching a mapped page that the disk fails to read raises SIGBUS,
which would end the whole server. So each block's pages are faulted in first, with
madvise(MADV_POPULATE_READ) (Linux 5.14 and later). That call reports a read error as an
error, and the block is then read from pages already in memory. The call goes through ctypes,
which lets other threads run while it waits for the disk. Where the map or that call is not
available, blocks are read with ``pread`` as before.

Only for files that nothing writes or truncates while they are open (a frozen view's
segments): a page taken back by the kernel under memory pressure is read again when hashed,
without that check. While a window is mapped, the pages read from it count in the server's RSS
(clean page cache, which the kernel can take back).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import mmap
import os
from collections.abc import Callable

from backends.base import BlockBytes
from ebsemu.model import BLOCK_SIZE, ZERO_BLOCK

WINDOW_BYTES = 64 * 1024 * 1024  # mapped at a time; a block's memoryview keeps its window mapped
_MADV_POPULATE_READ = 22  # <linux/mman.h>
_EHWPOISON = 133  # <asm-generic/errno.h>; not in Python's errno
# What the call or the map answers where it cannot be used (an older kernel, a filesystem that
# cannot be mapped): read with pread from then on.
_UNSUPPORTED = {errno.EINVAL, errno.ENODEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EACCES}


@functools.cache
def _libc_madvise() -> Callable[[int, int, int], int] | None:
    """libc's madvise(addr, length, advice), or None where the C library lacks it."""
    try:
        func = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    func.restype = ctypes.c_int
    return func


class _Window:
    """``length`` bytes of the file from ``start``, mapped."""

    def __init__(self, fd: int, start: int, length: int) -> None:
        self.start = start
        self.length = length
        # A private map, never written: its pages are the page cache's. Writable only so that
        # ctypes can give its address (a read-only buffer has none to give).
        self.map = mmap.mmap(fd, length, access=mmap.ACCESS_COPY, offset=start)
        self.map.madvise(mmap.MADV_SEQUENTIAL)
        self.view = memoryview(self.map)
        self.address = ctypes.addressof(ctypes.c_char.from_buffer(self.map))

    def covers(self, offset: int) -> bool:
        return self.start <= offset and offset + BLOCK_SIZE <= self.start + self.length


class BlockReader:
    """Blocks of the file open as ``fd`` (``size`` bytes), each read in place where it can be.

    Not thread-safe: one reader per consumer. A block it returns stays valid while referenced,
    after the reader has moved on and after ``fd`` is closed."""

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self._size = min(size, os.fstat(fd).st_size)  # past the end of the file: pread, short
        self._window: _Window | None = None
        self._mapped = _libc_madvise() is not None

    @property
    def mapped(self) -> bool:
        """False once blocks are read with pread (no map or no MADV_POPULATE_READ here)."""
        return self._mapped

    def read(self, offset: int) -> BlockBytes:
        """The BLOCK_SIZE bytes at ``offset`` (fewer at the end of the file). OSError if the
        disk cannot read them."""
        if self._mapped and offset + BLOCK_SIZE <= self._size:
            try:
                return self._read_in_place(offset)
            except OSError as exc:
                if exc.errno not in _UNSUPPORTED:
                    raise
                self._mapped = False
                self._window = None
        return os.pread(self._fd, BLOCK_SIZE, offset)

    def _read_in_place(self, offset: int) -> memoryview:
        window = self._window
        if window is None or not window.covers(offset):
            start = offset - offset % WINDOW_BYTES
            window = self._window = _Window(self._fd, start, min(WINDOW_BYTES, self._size - start))
        at = offset - window.start
        populate = _libc_madvise()
        assert populate is not None  # else not mapped
        while populate(window.address + at, BLOCK_SIZE, _MADV_POPULATE_READ) != 0:
            code = ctypes.get_errno()
            if code == errno.EINTR:
                continue
            if code in (errno.EFAULT, _EHWPOISON):  # where touching the page would SIGBUS
                raise OSError(errno.EIO, f"cannot read the block at {offset}: read error")
            raise OSError(code, f"cannot read the block at {offset}: {os.strerror(code)}")
        return window.view[at : at + BLOCK_SIZE]


_HEAD = 64
_ZERO_HEAD = bytes(_HEAD)


def is_zero_block(data: BlockBytes) -> bool:
    """``data == ZERO_BLOCK``, at the speed of bytes: a memoryview compared with bytes goes
    byte by byte (0.9 ms for a block), so its head is compared first, and only a block that
    starts with zeros is copied out to be compared whole."""
    if isinstance(data, memoryview):
        if data[:_HEAD].tobytes() != _ZERO_HEAD:
            return False
        data = data.tobytes()
    return data == ZERO_BLOCK
