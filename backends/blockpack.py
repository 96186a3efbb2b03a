"""Pack files and their index, the on-disk layout of the local block store.

Blocks are appended to pack files, ``root/packs/<n>.pack``, each at an offset aligned to 4 KiB;
``root/index.sqlite3`` maps a block's digest to (pack, offset, length). A pack is appended to
only by the process that created it (it holds an exclusive flock on it while it does, so that
start-up cleanup and the unlinking of an emptied pack leave it alone), and pack numbers are
never reused. The index is SQLite in WAL mode with synchronous=FULL: an index row is committed
only after its pack's bytes were fsync'ed, so a row never points at bytes a crash could lose.
"""

from __future__ import annotations

import fcntl
import os
import re
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

ALIGN = 4096
INDEX_NAME = "index.sqlite3"
PACKS_DIR = "packs"
_PACK_NAME = re.compile(r"([0-9]+)\.pack")
_PAGE = 1000  # digests per index read when listing
_SCHEMA = """
CREATE TABLE IF NOT EXISTS packs (id INTEGER PRIMARY KEY AUTOINCREMENT);
CREATE TABLE IF NOT EXISTS blocks (
    digest BLOB PRIMARY KEY,
    pack INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blocks_by_pack ON blocks (pack, offset);
"""


class Location(NamedTuple):
    pack: int
    offset: int
    length: int


def aligned(size: int) -> int:
    return -(-size // ALIGN) * ALIGN


def pack_path(root: Path, pack: int) -> Path:
    return root / PACKS_DIR / f"{pack}.pack"


def pack_files(root: Path) -> Iterator[tuple[int, Path]]:
    """(number, path) of every pack file under ``root``."""
    try:
        with os.scandir(root / PACKS_DIR) as entries:
            names = [entry.name for entry in entries]
    except FileNotFoundError:
        return
    for name in sorted(names):
        match = _PACK_NAME.fullmatch(name)
        if match:
            yield int(match.group(1)), root / PACKS_DIR / name


def lock_pack(path: Path, *, create: bool = False) -> int | None:
    """Open a pack for writing with an exclusive flock; None if another process holds it (or,
    unless ``create``, it no longer exists). ``create`` makes a new pack (O_EXCL)."""
    flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT | os.O_EXCL if create else 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileNotFoundError:
        if create:
            raise
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


class PackIndex:
    """digest -> Location, in SQLite; one connection shared by the store's threads."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def _connection(self, create: bool) -> sqlite3.Connection | None:
        """The open connection; None when the index does not exist and ``create`` is False."""
        if self._db is None:
            if not create and not self._path.exists():
                return None
            db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA busy_timeout = 30000")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    def lookup(self, digest: bytes) -> Location | None:
        with self._lock:
            db = self._connection(False)
            if db is None:
                return None
            row = db.execute(
                "SELECT pack, offset, length FROM blocks WHERE digest = ?", (digest,)
            ).fetchone()
        return None if row is None else Location(*row)

    def present(self, digests: Sequence[bytes]) -> set[bytes]:
        """Those of ``digests`` that are indexed (one query per _PAGE of them)."""
        found: set[bytes] = set()
        with self._lock:
            db = self._connection(False)
            if db is None:
                return found
            for start in range(0, len(digests), _PAGE):
                page = digests[start : start + _PAGE]
                marks = ",".join("?" * len(page))
                sql = f"SELECT digest FROM blocks WHERE digest IN ({marks})"
                found.update(bytes(digest) for (digest,) in db.execute(sql, page))
        return found

    def new_pack(self) -> int:
        """A pack number never handed out before (also by other processes)."""
        with self._lock:
            db = self._connection(True)
            assert db is not None
            cursor = db.execute("INSERT INTO packs DEFAULT VALUES")
            assert cursor.lastrowid is not None
            return cursor.lastrowid

    def add(self, rows: Iterable[tuple[bytes, Location]]) -> None:
        """Index blocks, durably (one transaction, fsync'ed at commit). A digest already
        indexed keeps its row."""
        with self._lock:
            db = self._connection(True)
            assert db is not None
            with _transaction(db):
                db.executemany(
                    "INSERT OR IGNORE INTO blocks (digest, pack, offset, length)"
                    " VALUES (?, ?, ?, ?)",
                    [(digest, *location) for digest, location in rows],
                )

    def remove(self, digests: Iterable[bytes]) -> list[Location]:
        """Remove blocks' rows, durably; returns where the removed blocks were."""
        with self._lock:
            db = self._connection(False)
            if db is None:
                return []
            removed: list[Location] = []
            with _transaction(db):
                for digest in digests:
                    row = db.execute(
                        "DELETE FROM blocks WHERE digest = ? RETURNING pack, offset, length",
                        (digest,),
                    ).fetchone()
                    if row is not None:
                        removed.append(Location(*row))
            return removed

    def forget_pack(self, pack: int) -> None:
        with self._lock:
            db = self._connection(False)
            if db is not None:
                db.execute("DELETE FROM packs WHERE id = ?", (pack,))

    def pack_rows(self, pack: int) -> list[Location]:
        """The blocks indexed in ``pack``, by offset."""
        with self._lock:
            db = self._connection(False)
            if db is None:
                return []
            rows = db.execute(
                "SELECT pack, offset, length FROM blocks WHERE pack = ? ORDER BY offset", (pack,)
            ).fetchall()
        return [Location(*row) for row in rows]

    def pack_in_use(self, pack: int) -> bool:
        with self._lock:
            db = self._connection(False)
            if db is None:
                return False
            row = db.execute("SELECT 1 FROM blocks WHERE pack = ? LIMIT 1", (pack,)).fetchone()
        return row is not None

    def digests(self) -> Iterator[bytes]:
        """Every indexed digest, read a page at a time (no lock held between pages)."""
        after = b""
        while True:
            with self._lock:
                db = self._connection(False)
                if db is None:
                    return
                page = db.execute(
                    "SELECT digest FROM blocks WHERE digest > ? ORDER BY digest LIMIT ?",
                    (after, _PAGE),
                ).fetchall()
            for (digest,) in page:
                yield bytes(digest)
            if len(page) < _PAGE:
                return
            after = page[-1][0]

    def stored_bytes(self) -> int:
        with self._lock:
            db = self._connection(False)
            if db is None:
                return 0
            (total,) = db.execute("SELECT COALESCE(SUM(length), 0) FROM blocks").fetchone()
        return int(total)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


class _transaction:
    """BEGIN IMMEDIATE … COMMIT, or ROLLBACK when the body raises."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
