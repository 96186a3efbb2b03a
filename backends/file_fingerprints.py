"""BLAKE3 fingerprints of the blocks a file-backend freeze read, kept for the volume's next one.

On a filesystem without reflink a later snapshot's freeze must read the whole volume to find the
blocks that changed since the last completed snapshot (backends/file_digests.py). Comparing each
block's SHA-256 with that snapshot's digests bounds the freeze by SHA-256, which runs at about
1.7 GB/s a CPU here, below what a disk reads. BLAKE3 is a cryptographic hash too and runs at
about 2.8 GB/s a CPU, so a freeze records the BLAKE3 of every non-zero block it read, by block
index, for the snapshot it froze; the next freeze of the volume against that snapshot compares
BLAKE3 fingerprints instead, and SHA-256 is left to the capture, which hashes only the blocks
that changed.

The fingerprints are a cache, never the only record: a file that is missing, damaged or does not
name the same non-zero blocks as the snapshot's manifest is ignored, and the freeze compares
SHA-256 digests as before. Layout::

    fingerprints/<volume_id>/<snapshot_id>    "EBSFP1\\n", then (index: u64 LE, BLAKE3: 32 B)…

A volume keeps the files of the snapshot its last freeze compared with and of the one it froze;
deleting the volume removes them. Blocking; run in a worker thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
from collections.abc import Mapping
from pathlib import Path

import blake3

from backends import sparse
from ebsemu.model import BLOCK_SIZE

logger = logging.getLogger(__name__)

FINGERPRINT_BYTES = 32
ZERO_FINGERPRINT = blake3.blake3(bytes(BLOCK_SIZE)).digest()
_MAGIC = b"EBSFP1\n"
_RECORD = struct.Struct(f"<Q{FINGERPRINT_BYTES}s")


def fingerprint(block: bytes | bytearray) -> bytes:
    """The BLAKE3 of one block (the hash releases the GIL, so two threads hash at once)."""
    return blake3.blake3(block).digest()


class Fingerprints:
    """The ``fingerprints`` directory of a file backend's data directory."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def save(self, volume_id: str, snapshot_id: str, fingerprints: Mapping[int, bytes]) -> None:
        """Record the fingerprints of the non-zero blocks of ``snapshot_id``'s freeze, durably
        and whole (a new file renamed over an older one). A failure is logged, not raised: the
        next freeze then compares by SHA-256."""
        folder = self._directory / volume_id
        staging = folder / f".{snapshot_id}.tmp"
        body = b"".join(_RECORD.pack(i, fingerprints[i]) for i in sorted(fingerprints))
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                sparse.pwrite_all(fd, _MAGIC + body, 0)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(staging, folder / snapshot_id)
            sparse.fsync_dir(folder)
        except OSError as exc:
            logger.warning(
                "cannot record the block fingerprints of %s (its next snapshot compares by "
                "SHA-256): %s", snapshot_id, exc,
            )  # fmt: skip
            with contextlib.suppress(OSError):
                os.unlink(staging)

    def load(self, volume_id: str, snapshot_id: str) -> dict[int, bytes] | None:
        """The fingerprints recorded for ``snapshot_id``'s freeze, or None where there are none
        to trust (never recorded, or a file that does not parse)."""
        path = self._directory / volume_id / snapshot_id
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            logger.warning("cannot read the fingerprints in %s: %s", path, exc)
            return None
        body = memoryview(data)[len(_MAGIC) :]
        if not data.startswith(_MAGIC) or len(body) % _RECORD.size:
            logger.warning("ignoring %s: not a list of block fingerprints", path)
            return None
        return {index: digest for index, digest in _RECORD.iter_unpack(body)}

    def keep_only(self, volume_id: str, keep: set[str]) -> None:
        """Remove the volume's fingerprints of snapshots other than ``keep`` (as best it can:
        one left behind is never read for another snapshot)."""
        folder = self._directory / volume_id
        try:
            for entry in list(os.scandir(folder)):
                if entry.name not in keep:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
        except FileNotFoundError:
            return
        except OSError as exc:
            logger.warning("cannot remove old block fingerprints in %s: %s", folder, exc)

    def drop_volume(self, volume_id: str) -> None:
        self.keep_only(volume_id, set())
        try:
            os.rmdir(self._directory / volume_id)
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.warning("cannot remove the block fingerprints of %s: %s", volume_id, exc)
