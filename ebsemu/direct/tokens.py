"""Opaque tokens: block tokens (one block of one snapshot, until they expire) and page tokens.

A token is base64 of its payload and a truncated HMAC-SHA256 over the payload and what it is
bound to (snapshot, block index and digest; or the listing it continues), under a key kept in
the database, so tokens outlive a restart and cannot be forged or moved to another block.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct

MAC_BYTES = 24
_BLOCK = struct.Struct(">Q")
_PAGE = struct.Struct(">Q")


class TokenSigner:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, *parts: bytes) -> bytes:
        return hmac.new(self._key, b"\0".join(parts), hashlib.sha256).digest()[:MAC_BYTES]

    def block_token(self, snapshot_id: str, index: int, digest: bytes, expires: int) -> str:
        """A token for block ``index`` of ``snapshot_id`` (whose data hashes to ``digest``),
        valid until the epoch second ``expires``."""
        head = _BLOCK.pack(expires)
        mac = self._mac(b"block", snapshot_id.encode(), str(index).encode(), digest, head)
        return base64.b64encode(head + mac).decode("ascii")

    def block_token_valid(
        self, token: str, snapshot_id: str, index: int, digest: bytes, now: float
    ) -> bool:
        raw = _decode(token, _BLOCK.size + MAC_BYTES)
        if raw is None:
            return False
        head, mac = raw[: _BLOCK.size], raw[_BLOCK.size :]
        (expires,) = _BLOCK.unpack(head)
        wanted = self._mac(b"block", snapshot_id.encode(), str(index).encode(), digest, head)
        return hmac.compare_digest(mac, wanted) and now < expires

    def page_token(self, scope: str, index: int) -> str:
        """A token to continue the listing ``scope`` (operation and snapshots) at ``index``."""
        head = _PAGE.pack(index)
        return base64.b64encode(head + self._mac(b"page", scope.encode(), head)).decode("ascii")

    def page_index(self, scope: str, token: str) -> int | None:
        """The index a page token continues at; None for a token not made for ``scope``."""
        raw = _decode(token, _PAGE.size + MAC_BYTES)
        if raw is None:
            return None
        head, mac = raw[: _PAGE.size], raw[_PAGE.size :]
        if not hmac.compare_digest(mac, self._mac(b"page", scope.encode(), head)):
            return None
        index: int = _PAGE.unpack(head)[0]
        return index


def _decode(token: str, size: int) -> bytes | None:
    try:
        raw = base64.b64decode(token.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None
    return raw if len(raw) == size else None
