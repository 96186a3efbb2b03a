"""Data keys of encrypted volumes, wrapped by one local master key.

There is no KMS here. Each encrypted volume gets a data key of 32 random bytes (its LUKS
passphrase); the store keeps it only wrapped (AES-256-GCM) by a master key read from a private
file (mode 0600, created at first use). A snapshot of the volume, and a volume restored from the
snapshot, keep the same wrapped data key. Keep the master key file apart from backups of the
database: with both, every data key can be unwrapped; without it, none. Neither a data key nor
the master key is ever logged.
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
import threading
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ebsemu.private_files import private_dir, write_private

log = logging.getLogger(__name__)

KEY_BYTES = 32
NONCE_BYTES = 12
VERSION = "v1"
CONTEXT = b"ebsemu volume data key"


class KeyVaultError(Exception):
    """A wrapped key that this master key cannot unwrap, or an unreadable master key file."""


class KeyVault:
    def __init__(self, master_key_file: Path) -> None:
        self._path = master_key_file
        self._master: bytes | None = None
        self._lock = threading.Lock()

    def new_wrapped_key(self) -> str:
        """A fresh random data key, wrapped."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = AESGCM(self._master_key()).encrypt(nonce, secrets.token_bytes(KEY_BYTES), CONTEXT)
        return f"{VERSION}:{base64.b64encode(nonce + sealed).decode('ascii')}"

    def passphrase(self, wrapped: str) -> str:
        """The data key in ``wrapped``, written in base64: the volume's LUKS passphrase (QEMU
        takes a passphrase only as text)."""
        version, _, payload = wrapped.partition(":")
        if version != VERSION:
            raise KeyVaultError(f"unknown wrapped key version {version[:8]!r}")
        try:
            raw = base64.b64decode(payload, validate=True)
            key = AESGCM(self._master_key()).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], CONTEXT)
        except (ValueError, InvalidTag) as exc:
            raise KeyVaultError(f"the master key in {self._path} does not unwrap this key") from exc
        return base64.b64encode(key).decode("ascii")

    def _master_key(self) -> bytes:
        with self._lock:
            if self._master is None:
                self._master = self._load_or_create()
            return self._master

    def _load_or_create(self) -> bytes:
        try:
            text = self._path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            private_dir(self._path.parent)
            key = secrets.token_bytes(KEY_BYTES)
            write_private(self._path, base64.b64encode(key).decode("ascii") + "\n")
            log.warning(
                "created the master key file %s: encrypted volumes and snapshots cannot be "
                "opened without it; keep it (and back it up apart from the database)",
                self._path,
            )
            return key
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyVaultError(f"cannot read the master key file {self._path}: {exc}") from exc
        if os.stat(self._path).st_mode & 0o077:
            raise KeyVaultError(f"master key file {self._path} is readable by others (chmod 600)")
        try:
            key = base64.b64decode(text, validate=True)
        except ValueError:
            key = b""
        if len(key) != KEY_BYTES:
            raise KeyVaultError(f"{self._path} does not hold a base64 {KEY_BYTES}-byte key")
        return key
