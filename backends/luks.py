"""LUKS images made by qemu-img: how a volume is kept encrypted at rest, and opened by QEMU.

An encrypted volume's file is a LUKS1 image as ``qemu-img create -f luks`` writes it: a header
with its key slots (``PAYLOAD_BYTES``), then the ciphertext of the volume's bytes (AES-256-XTS,
plain64 IVs). The passphrase of key slot 0 is the volume's data key (32 random bytes) written in
base64 (QEMU wants a passphrase that is text); the key that encrypts the sectors is LUKS's own
master key, kept in that slot.

The header is not a whole number of 512 KiB snapshot blocks, so the file is padded with zeros to
the next block: ``file_bytes(size)`` is the size plus 2 MiB. A reader must open only the first
``image_bytes(size)`` bytes as the LUKS image (QEMU: a ``raw`` node with ``size`` under the
``luks`` node), or the guest would see the padding as extra sectors.

The passphrase is 256 random bits, so stretching it with PBKDF2 protects nothing: key slots use
a short iteration time (``iter_time_ms``), which keeps opening the image fast.

What qemu-img's LUKS does not give: a sector never written reads back as the decryption of
zeros (noise), not as zeros, as on a fresh dm-crypt device. A file system made on the volume
does not notice.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path

from backends.errors import BackendError
from hostcmds import CommandRunner, CommandTemplates, HostCommandError
from hostcmds.errors import CommandError

log = logging.getLogger(__name__)

TOOL = "qemu-img"
MAGIC = b"LUKS\xba\xbe"
SECTOR = 512
# 4 KiB header + 8 key slots of 4000 stripes x 64 bytes (rounded to 4 KiB): QEMU's layout for
# aes-256-xts, checked against every image made.
PAYLOAD_BYTES = 4096 + 8 * 258048
PADDED_HEADER_BYTES = 2 * 1024 * 1024  # PAYLOAD_BYTES rounded up to whole 512 KiB blocks
SECRET_ID = "ebs-key"
# Each attempt misses the clock's ticks on its own (seen 3 times in a row on a fast host, where
# the first timing round takes less than one tick): 20 attempts of about 10 ms each.
CREATE_ATTEMPTS = 20
NO_CPU_TIME = "Unable to get accurate CPU usage"


def image_bytes(size_bytes: int) -> int:
    """Length of the LUKS image of a volume of ``size_bytes``: header + ciphertext."""
    return PAYLOAD_BYTES + size_bytes


def file_bytes(size_bytes: int) -> int:
    """Length of the file holding it, padded to whole 512 KiB blocks."""
    return PADDED_HEADER_BYTES + size_bytes


def payload_offset(header: bytes) -> int:
    """Where the ciphertext starts, from a LUKS1 header; BackendError if it is not one."""
    if len(header) < 108 or not header.startswith(MAGIC):
        raise BackendError("not a LUKS image")
    (version,) = struct.unpack(">H", header[6:8])
    if version != 1:
        raise BackendError(f"LUKS version {version}, expected 1")
    (sectors,) = struct.unpack(">I", header[104:108])
    return int(sectors) * SECTOR


@dataclass(frozen=True)
class LuksFormatter:
    """Formats files as LUKS images with qemu-img, on the host the runner reaches."""

    runner: CommandRunner
    templates: CommandTemplates
    iter_time_ms: int = 10
    timeout: float = 120.0

    async def unavailable(self) -> str | None:
        """None when qemu-img runs here; otherwise why encryption at rest is not available."""
        try:
            self.templates.require(TOOL, ["versionCmd", "createLuksCmd"])
            await self.runner.run(self.templates.render(TOOL, "versionCmd"), timeout=self.timeout)
        except CommandError as exc:
            if exc.returncode == 127:
                return "qemu-img is not installed on the storage host (apt-get install qemu-utils)"
            return f"qemu-img does not run on the storage host: {exc}"
        except HostCommandError as exc:
            return f"qemu-img does not run on the storage host: {exc}"
        return None

    async def format(self, path: Path, size_bytes: int, passphrase: str) -> None:
        """Make ``path`` (absent) a LUKS image of ``size_bytes`` whose key slot 0 opens with
        ``passphrase`` (ASCII text), then pad it to ``file_bytes(size_bytes)``. The passphrase goes
        to qemu-img in a private file next to ``path``, removed afterwards."""
        if "," in str(path):
            raise BackendError(f"{path}: QEMU options cannot name a path holding a comma")
        key_file = path.with_name(f".tmp-key-{secrets.token_hex(8)}")
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, passphrase.encode("ascii"))
            os.close(fd)
            argv = self.templates.render(
                TOOL,
                "createLuksCmd",
                secretId=SECRET_ID,
                keyFile=str(key_file),
                iterTimeMs=self.iter_time_ms,
                path=str(path),
                sizeBytes=size_bytes,
            )
            await self._create(argv, path, passphrase)
        except HostCommandError as exc:
            raise BackendError(f"cannot format {path.name} as LUKS: {exc}") from exc
        finally:
            key_file.unlink(missing_ok=True)
        await asyncio.to_thread(check_image, path, size_bytes)

    async def _create(self, argv: list[str], path: Path, passphrase: str) -> None:
        """Run ``qemu-img create``. It times its key derivation by the thread's CPU time first;
        when that reads as no time at all (the clock's ticks missed it, on a busy host), it
        fails with "Unable to get accurate CPU usage": that one failure is tried again, up to
        CREATE_ATTEMPTS runs in all (the create truncates what the failed one left)."""
        for attempt in range(1, CREATE_ATTEMPTS + 1):
            try:
                await self.runner.run(argv, timeout=self.timeout, secrets=[passphrase])
                return
            except CommandError as exc:
                if attempt == CREATE_ATTEMPTS or NO_CPU_TIME not in exc.stderr:
                    raise
                log.warning("qemu-img could not time the key derivation of %s; again", path.name)


def check_image(path: Path, size_bytes: int) -> None:
    """Check the LUKS image qemu-img made has the layout assumed here, and pad it."""
    with path.open("r+b") as handle:
        offset = payload_offset(handle.read(4096))
        length = os.fstat(handle.fileno()).st_size
        if offset != PAYLOAD_BYTES or length != image_bytes(size_bytes):
            raise BackendError(
                f"{path.name}: LUKS payload at {offset} in {length} bytes; this qemu-img's "
                f"layout differs from the one expected ({PAYLOAD_BYTES})"
            )
        handle.truncate(file_bytes(size_bytes))
        os.fsync(handle.fileno())
