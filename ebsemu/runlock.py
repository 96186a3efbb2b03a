"""One server per data directory: an exclusive flock(2) on ``<data_dir>/ebsemu.lock``, held
for the server's lifetime. The kernel releases it when the process ends, however it ends
(SIGKILL included), so a crashed server never leaves a stale lock behind. Offline tools
(`ebsemu reconcile`) take the same lock to know that no server is at work on the data.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = "ebsemu.lock"


class DataDirBusy(Exception):
    """Another process (a running server) holds the data directory."""


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock now or raise DataDirBusy."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataDirBusy(f"another ebsemu process holds {self.path}") from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def held_elsewhere(self) -> bool:
        """True if another process holds the lock (it is not taken by this call)."""
        try:
            self.acquire()
        except DataDirBusy:
            return True
        self.release()
        return False
