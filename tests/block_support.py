"""The local block store as tests see it from outside the server: the SQLite index in
``<data_dir>/blocks/index.sqlite3`` (flushed blocks) and the pack files it points into, plus any
block of the earlier one-file-per-block layout."""

from __future__ import annotations

import hashlib
import re
import sqlite3
from contextlib import closing
from pathlib import Path

INDEX = "index.sqlite3"
_BLOCK_NAME = re.compile(r"[0-9a-f]{64}")


def _rows(root: Path, where: str = "", *params: object) -> list[tuple[bytes, int, int, int]]:
    if not (root / INDEX).exists():
        return []
    with closing(sqlite3.connect(root / INDEX, timeout=30)) as db:
        rows = db.execute(f"SELECT digest, pack, offset, length FROM blocks {where}", params)
        return [(bytes(d), pack, offset, length) for d, pack, offset, length in rows.fetchall()]


def stored_blocks(root: Path) -> dict[str, int]:
    """Every stored block, packed or a file of the earlier layout: digest hex -> bytes."""
    found = {digest.hex(): length for digest, _, _, length in _rows(root)}
    for path in root.glob("??/??/*"):
        if (
            _BLOCK_NAME.fullmatch(path.name)
            and path.parent.parent.name + path.parent.name == (path.name[:4])
        ):
            found[path.name] = path.stat().st_size
    return found


def packed_bytes(root: Path) -> int:
    """Bytes written to pack files so far (flushed or not)."""
    return sum(path.stat().st_size for path in root.glob("packs/*.pack"))


class StoredBlock:
    """One block of a block store, by digest, read and damaged behind the server's back."""

    def __init__(self, root: Path, digest: bytes) -> None:
        self.root = root
        self.digest = digest

    @classmethod
    def of(cls, root: Path, data: bytes) -> StoredBlock:
        return cls(root, hashlib.sha256(data).digest())

    @property
    def legacy_path(self) -> Path:
        """Where the earlier layout keeps (and the store still reads) this block as a file."""
        name = self.digest.hex()
        return self.root / name[0:2] / name[2:4] / name

    def _row(self) -> tuple[Path, int, int] | None:
        rows = _rows(self.root, "WHERE digest = ?", self.digest)
        if not rows:
            return None
        _, pack, offset, length = rows[0]
        return self.root / "packs" / f"{pack}.pack", offset, length

    def exists(self) -> bool:
        row = self._row()
        return (row is not None and row[0].exists()) or self.legacy_path.is_file()

    is_file = exists

    def read_bytes(self) -> bytes:
        row = self._row()
        if row is None:
            return self.legacy_path.read_bytes()
        pack, offset, length = row
        with pack.open("rb") as f:
            f.seek(offset)
            return f.read(length)

    def write_bytes(self, data: bytes) -> None:
        """Replace the stored bytes (the index row then says ``len(data)``)."""
        row = self._row()
        if row is None:
            self.legacy_path.write_bytes(data)
            return
        pack, offset, _ = row
        with pack.open("r+b") as f:
            f.seek(offset)
            f.write(data)
        with closing(sqlite3.connect(self.root / INDEX, timeout=30)) as db, db:
            db.execute("UPDATE blocks SET length = ? WHERE digest = ?", (len(data), self.digest))

    def unlink(self) -> None:
        """Lose the block: its index row goes (its bytes stay where they were)."""
        if (self.root / INDEX).exists():
            with closing(sqlite3.connect(self.root / INDEX, timeout=30)) as db, db:
                db.execute("DELETE FROM blocks WHERE digest = ?", (self.digest,))
        self.legacy_path.unlink(missing_ok=True)
