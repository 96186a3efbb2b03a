"""The local snapshot block store: each 512 KiB block is a file named by its SHA-256.

Layout: ``root/ab/cd/abcd…`` (64 hex digits), fanned out by the digest's first two bytes so no
directory grows past a few thousand entries. A block is written to a temp file in its final
directory and renamed into place, so a reader never sees a partial block. Puts are not fsync'ed
one by one (that would cap a snapshot at a few hundred blocks a second); ``flush`` makes
everything put so far durable with a single syncfs(2) of the store's filesystem. Temp files a
crash leaves behind are never taken for blocks and are removed by ``remove_temp_files``.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import logging
import os
import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

from backends.errors import (
    BackendError,
    CapacityError,
    CorruptBlockError,
    MissingBlockError,
    SetupError,
)

logger = logging.getLogger(__name__)

DIGEST_BYTES = 32
TEMP_PREFIX = ".tmp-"
_FANOUT = re.compile(r"[0-9a-f]{2}")
_BLOCK_NAME = re.compile(r"[0-9a-f]{64}")
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


@functools.cache
def _syncfs() -> Callable[[int], int] | None:
    """libc's syncfs(fd), or None where the C library lacks it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        func = libc.syncfs
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int]
    func.restype = ctypes.c_int
    return func


class LocalBlockStore:
    """Snapshot blocks as files under ``root``, addressed and verified by SHA-256."""

    def __init__(self, root: Path) -> None:
        self._root = root

    def path_of(self, digest: bytes) -> Path:
        """Where the block with this digest lives (whether or not it is stored)."""
        if len(digest) != DIGEST_BYTES:
            raise ValueError(f"a SHA-256 digest has {DIGEST_BYTES} bytes, not {len(digest)}")
        name = digest.hex()
        return self._root / name[0:2] / name[2:4] / name

    def put(self, digest: bytes, data: bytes) -> bool:
        """Store ``data`` under ``digest`` (trusted to be its SHA-256; ``get`` verifies).
        Returns False, writing nothing, when the block is already stored."""
        path = self.path_of(digest)
        if path.exists():
            return False
        temp = path.with_name(f"{TEMP_PREFIX}{path.name}-{secrets.token_hex(4)}")
        try:
            fd = self._create_temp(temp)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            os.replace(temp, path)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            if exc.errno in _NO_SPACE:
                raise CapacityError(f"no space left for block {path.name} in {self._root}") from exc
            raise BackendError(f"cannot store block {path.name} in {self._root}: {exc}") from exc
        return True

    @staticmethod
    def _create_temp(temp: Path) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            return os.open(temp, flags, 0o600)
        except FileNotFoundError:
            temp.parent.mkdir(parents=True, exist_ok=True)
            return os.open(temp, flags, 0o600)

    def get(self, digest: bytes) -> bytes:
        path = self.path_of(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise MissingBlockError(f"block {digest.hex()} is not in {self._root}") from None
        except OSError as exc:
            raise BackendError(f"cannot read block {digest.hex()}: {exc}") from exc
        actual = hashlib.sha256(data).digest()
        if actual != digest:
            raise CorruptBlockError(
                f"block {digest.hex()} at {path} is corrupt: its bytes hash to {actual.hex()}"
            )
        return data

    def contains(self, digest: bytes) -> bool:
        return self.path_of(digest).exists()

    def delete(self, digest: bytes) -> None:
        self.path_of(digest).unlink(missing_ok=True)

    def flush(self) -> None:
        """Make every block put so far durable: one syncfs(2) of the store's filesystem
        (os.sync() where syncfs is unavailable)."""
        try:
            fd = os.open(self._root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            return  # nothing was ever put
        try:
            syncfs = _syncfs()
            if syncfs is None:
                os.sync()
            elif syncfs(fd) != 0:
                code = ctypes.get_errno()
                raise BackendError(f"syncfs of {self._root} failed: {os.strerror(code)}")
        finally:
            os.close(fd)

    def iter_digests(self) -> Iterator[bytes]:
        for entry in self._block_entries():
            yield bytes.fromhex(entry.name)

    def stored_bytes(self) -> int:
        """Sum of the stored blocks' sizes."""
        return sum(entry.stat().st_size for entry in self._block_entries())

    def remove_temp_files(self) -> int:
        """Delete temp files left by interrupted puts; returns how many. Call it when no put
        is running (at start-up), or it may remove a block being written."""
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

    def check_setup(self) -> None:
        """The root exists (created if need be) and this process may write to it."""
        try:
            self._root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SetupError(f"cannot create the block store {self._root}: {exc}") from exc
        if not os.access(self._root, os.W_OK | os.X_OK):
            raise SetupError(f"the block store {self._root} is not writable by this user")

    def _leaf_dirs(self) -> Iterator[tuple[str, str]]:
        """(``abcd``, path) of each ``ab/cd`` fan-out directory."""
        for top in self._fanout_entries(str(self._root)):
            for leaf in self._fanout_entries(top.path):
                yield top.name + leaf.name, leaf.path

    @staticmethod
    def _fanout_entries(directory: str) -> list[os.DirEntry[str]]:
        try:
            with os.scandir(directory) as entries:
                return [e for e in entries if _FANOUT.fullmatch(e.name) and e.is_dir()]
        except FileNotFoundError:
            return []

    def _block_entries(self) -> Iterator[os.DirEntry[str]]:
        """Every stored block file: a 64-hex-digit name in the directory its prefix names."""
        for prefix, directory in self._leaf_dirs():
            with os.scandir(directory) as entries:
                for entry in entries:
                    if (
                        _BLOCK_NAME.fullmatch(entry.name)
                        and entry.name.startswith(prefix)
                        and entry.is_file()
                    ):
                        yield entry
