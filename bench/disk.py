"""The machine's own limits, measured on the data directory's filesystem: sequential write and
read of the same bytes the benchmark stores, and creating a large sparse file.

Reads start cold: the file's pages are dropped from the page cache (posix_fadvise DONTNEED,
after an fsync) rather than dropping every cache on the machine.
"""

from __future__ import annotations

import errno
import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MIB = 1024 * 1024
GIB = 1024 * MIB
BLOCK = 512 * 1024  # the snapshot block size
CHUNK = 64 * MIB
READ_BUFFER = 8 * MIB


def evict(path: Path) -> None:
    """Write back and drop the file's cached pages, so the next read comes from the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def fill_random(path: Path, total: int) -> float:
    """Overwrite ``path`` with ``total`` bytes of random data, every 512 KiB block distinct,
    then fsync: seconds taken (the machine's sequential write, durable, as a restore is)."""
    base = os.urandom(CHUNK)
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY)
    try:
        for number, offset in enumerate(range(0, total, CHUNK)):
            chunk = bytearray(base[: min(CHUNK, total - offset)])
            for block in range(0, len(chunk), BLOCK):  # a unique stamp per block: no dedup
                chunk[block : block + 16] = (number * CHUNK + block).to_bytes(16, "little")
            view = memoryview(chunk)
            while view:
                written = os.pwrite(fd, view, offset)
                view, offset = view[written:], offset + written
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - start


def rewrite_blocks(path: Path, indexes: list[int]) -> None:
    """Give each listed 512 KiB block new random bytes, then fsync."""
    fd = os.open(path, os.O_WRONLY)
    try:
        for index in indexes:
            data = os.urandom(BLOCK)
            view, offset = memoryview(data), index * BLOCK
            while view:
                written = os.pwrite(fd, view, offset)
                view, offset = view[written:], offset + written
        os.fsync(fd)
    finally:
        os.close(fd)


def read_all(path: Path, limit: int | None = None) -> tuple[float, str]:
    """Read the file (or its first ``limit`` bytes) sequentially: (seconds, SHA-256 hex)."""
    digest = hashlib.sha256()
    buffer = bytearray(READ_BUFFER)
    view = memoryview(buffer)
    start = time.perf_counter()
    remaining = limit if limit is not None else os.path.getsize(path)
    with path.open("rb", buffering=0) as handle:
        while remaining > 0:
            got = handle.readinto(view[: min(READ_BUFFER, remaining)])
            if not got:
                break
            digest.update(view[:got])
            remaining -= got
    return time.perf_counter() - start, digest.hexdigest()


def read_speed(path: Path) -> float:
    """Seconds to read the file sequentially from a cold cache, without hashing it."""
    evict(path)
    buffer = bytearray(READ_BUFFER)
    start = time.perf_counter()
    with path.open("rb", buffering=0) as handle:
        while handle.readinto(buffer):
            pass
    elapsed = time.perf_counter() - start
    evict(path)
    return elapsed


def hash_speed(total: int, threads: int = 2) -> float:
    """Seconds for ``threads`` threads to SHA-256 ``total`` bytes held in memory, 512 KiB at a
    time: the digest every snapshot block needs, without any reading or storing."""
    data = os.urandom(CHUNK)
    pieces = [memoryview(data)[offset : offset + BLOCK] for offset in range(0, CHUNK, BLOCK)]
    count = total // BLOCK

    def digest(number: int) -> bytes:
        return hashlib.sha256(pieces[number % len(pieces)]).digest()

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(digest, range(count), chunksize=64):
            pass
    return time.perf_counter() - start


def sparse_create(directory: Path, size: int) -> float:
    """Seconds to create ``size`` bytes of sparse file(s) durably: as many files as the
    filesystem needs (each as large as it allows), fsynced, and their directory fsynced."""
    directory.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    remaining, index, piece = size, 0, size
    while remaining > 0:
        path = directory / f"seg-{index:04d}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, min(piece, remaining))
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EFBIG, errno.EINVAL) or piece <= GIB:
                raise
            piece //= 2  # the file is too large for this filesystem: halve the pieces
            continue
        os.fsync(fd)
        os.close(fd)
        remaining -= min(piece, remaining)
        index += 1
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - start
    for path in directory.iterdir():
        path.unlink()
    directory.rmdir()
    return elapsed


def allocated(path: Path) -> int:
    """Bytes the file occupies on disk (holes take none)."""
    return os.stat(path).st_blocks * 512


def data_after(path: Path, offset: int) -> bool:
    """Whether the file holds any data (not a hole) at or after ``offset``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, offset, os.SEEK_DATA)
        return True
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return False
        raise
    finally:
        os.close(fd)


def tree_bytes(root: Path) -> tuple[int, int]:
    """(files, bytes) of the regular files under ``root``."""
    files = total = 0
    for directory, _, names in os.walk(root):
        for name in names:
            try:
                total += os.stat(os.path.join(directory, name)).st_size
                files += 1
            except FileNotFoundError:
                continue
    return files, total
