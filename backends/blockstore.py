"""The local snapshot block store: 512 KiB blocks addressed by SHA-256, packed into large files.

Layout (backends/blockpack.py): blocks are appended to ``root/packs/<n>.pack`` at 4 KiB-aligned
offsets, a new pack once one reaches ``pack_bytes`` (1 GiB); ``root/index.sqlite3`` maps each
digest to (pack, offset, length). Appending to a few large files costs the kernel a tenth of
what one new file per block did. A store made by an earlier version also holds blocks as one
file each under fan-out directories (backends/blockfiles.py): they stay readable and deletable,
and new blocks never go there.

Durability: a ``put`` is not synced and not yet indexed: it is remembered in this process (so
``get``, ``contains`` and a second ``put`` see it). ``flush`` fsyncs the packs written since the
last flush and only then commits their index rows (SQLite, synchronous=FULL): an index row never
points at bytes a crash could lose. After a crash, blocks put but not flushed are simply absent,
and ``remove_temp_files`` at start-up cuts the bytes they left off the packs' ends. ``delete``
commits the removal of the index row first, then punches a hole where the block was (a crash in
between leaves a gap that start-up cleanup punches); a pack left with no block is unlinked.

A pack is appended to by the process that created it only, under an exclusive flock, so several
servers sharing the directory each write their own packs; a put that finds the block stored by
another server's flushed put writes nothing.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from backends import sparse
from backends.base import BlockBytes, FileRange, NewBlock
from backends.blockfiles import BlockFiles
from backends.blockpack import (
    ALIGN,
    INDEX_NAME,
    PACKS_DIR,
    Location,
    PackIndex,
    aligned,
    lock_pack,
    pack_files,
    pack_path,
)
from backends.errors import (
    BackendError,
    CapacityError,
    CorruptBlockError,
    MissingBlockError,
    SetupError,
)

logger = logging.getLogger(__name__)

DIGEST_BYTES = 32
PACK_BYTES = 1024**3
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


@dataclass
class _Pack:
    """A pack this process appends to, or wrote blocks into that are not flushed yet."""

    number: int
    fd: int  # read-write, exclusively flock'ed
    end: int  # where the next block goes
    writers: int = 0  # puts writing into it now


@dataclass
class _Claim:
    """A block this thread writes at ``offset`` of ``pack``; others wait on ``done``."""

    digest: bytes
    data: BlockBytes
    source: tuple[int, int] | None  # (fd, offset) the bytes may be cloned from
    pack: _Pack
    offset: int
    done: threading.Event


def _runs_of(claims: list[_Claim]) -> Iterator[list[_Claim]]:
    """Claims in runs that one FICLONERANGE can store: adjacent in one pack and in one
    source file, each a whole number of ALIGN-sized pieces. A claim without a source is a run
    of its own."""
    run: list[_Claim] = []
    for claim in claims:
        if run and _follows(run[-1], claim):
            run.append(claim)
            continue
        if run:
            yield run
        run = [claim]
    if run:
        yield run


def _follows(last: _Claim, claim: _Claim) -> bool:
    if last.source is None or claim.source is None or claim.pack is not last.pack:
        return False
    length = len(last.data)
    return (
        length % ALIGN == 0
        and claim.offset == last.offset + length
        and claim.source == (last.source[0], last.source[1] + length)
    )


class LocalBlockStore:
    """Snapshot blocks in pack files under ``root``, addressed and verified by SHA-256."""

    def __init__(self, root: Path, *, pack_bytes: int = PACK_BYTES) -> None:
        self._root = root
        self._pack_bytes = pack_bytes
        self._index = PackIndex(root / INDEX_NAME)
        self._files = BlockFiles(root)
        self._lock = threading.Lock()  # guards the fields below
        self._commit = threading.Lock()  # one flush or delete at a time
        self._active: _Pack | None = None
        self._held: dict[int, _Pack] = {}  # the active pack and packs with pending blocks
        self._pending: dict[bytes, Location] = {}  # written, not yet flushed
        self._writing: dict[bytes, threading.Event] = {}
        self._clone_refused: set[int] = set()  # st_dev of sources FICLONERANGE refused

    def path_of(self, digest: bytes) -> Path:
        """Where a block of the earlier one-file-per-block layout with this digest lives."""
        _check_digest(digest)
        return self._files.path_of(digest)

    # -- writing --

    def put(self, digest: bytes, data: BlockBytes) -> bool:
        """Store ``data`` under ``digest`` (trusted to be its SHA-256; ``get`` verifies).
        Returns False, writing nothing, when the block is already stored."""
        return self.put_many([(digest, data, None)]) == 1

    def put_clone(self, digest: bytes, data: BlockBytes, fd: int, offset: int) -> bool:
        """``put``, where ``data`` are bytes [offset, offset + len(data)) of the file open as
        ``fd``, which nothing changes while the call runs: on a filesystem that can, the pack
        shares that range's extents (FICLONERANGE) instead of a copy of the bytes; elsewhere
        (another filesystem, no reflink, unaligned range) the bytes are written."""
        return self.put_many([(digest, data, (fd, offset))]) == 1

    def put_many(self, blocks: Sequence[NewBlock]) -> int:
        """``put`` each (digest, data, None) and ``put_clone`` each (digest, data, (fd,
        offset)), for the cost of a few: one index query for the lot, and one FICLONERANGE for
        each run of blocks that are adjacent both in their source file and in the pack.
        Returns how many blocks were written (a digest given twice is written once)."""
        for digest, _, _ in blocks:
            _check_digest(digest)
        written = 0
        while blocks:
            claims, blocks, elsewhere = self._claim(blocks)
            self._write(claims)
            written += len(claims)
            for done in elsewhere:
                done.wait()  # another thread is writing these blocks: see how that ends
        return written

    def _claim(
        self, blocks: Sequence[NewBlock]
    ) -> tuple[list[_Claim], list[NewBlock], list[threading.Event]]:
        """Reserve pack space for the blocks not stored, pending or being written yet; returns
        those claims, the blocks another thread is writing now, and what to wait for."""
        claims: list[_Claim] = []
        later: list[NewBlock] = []
        elsewhere: list[threading.Event] = []
        seen: set[bytes] = set()
        try:
            with self._lock:
                fresh = [d for d, _, _ in blocks if d not in self._pending]
                indexed = self._index.present(fresh)
                for digest, data, source in blocks:
                    if digest in seen or digest in self._pending or digest in indexed:
                        continue
                    seen.add(digest)
                    if (waiter := self._writing.get(digest)) is not None:
                        later.append((digest, data, source))
                        elsewhere.append(waiter)
                    elif not self._files.contains(digest):
                        pack, offset = self._reserve(len(data))  # may fail: no room for a pack
                        done = self._writing[digest] = threading.Event()
                        claims.append(_Claim(digest, data, source, pack, offset, done))
        except BaseException:
            self._settle(claims, stored=False)
            raise
        return claims, later, elsewhere

    def _write(self, claims: list[_Claim]) -> None:
        """Write claimed blocks into their packs, then make them pending; on failure, give
        every claim up (its reserved space stays unused until start-up cleanup)."""
        failed: _Claim | None = None
        try:
            for run in _runs_of(claims):
                failed = run[0]
                source = run[0].source
                length = sum(len(claim.data) for claim in run)
                if source is None or not self._cloned(
                    source, run[0].pack.fd, run[0].offset, length
                ):
                    for claim in run:
                        sparse.pwrite_all(claim.pack.fd, claim.data, claim.offset)
        except BaseException as exc:
            self._settle(claims, stored=False)
            if not isinstance(exc, OSError) or failed is None:
                raise
            where = f"block {failed.digest.hex()}"
            if exc.errno in _NO_SPACE:
                raise CapacityError(f"no space left for {where} in {self._root}") from exc
            raise BackendError(f"cannot store {where} in {self._root}: {exc}") from exc
        self._settle(claims, stored=True)

    def _settle(self, claims: list[_Claim], *, stored: bool) -> None:
        with self._lock:
            for claim in claims:
                if stored:
                    location = Location(claim.pack.number, claim.offset, len(claim.data))
                    self._pending[claim.digest] = location
                del self._writing[claim.digest]
                claim.pack.writers -= 1
        for claim in claims:
            claim.done.set()

    def _cloned(self, source: tuple[int, int], fd: int, offset: int, length: int) -> bool:
        src, src_offset = source
        device = os.fstat(src).st_dev
        if device in self._clone_refused:
            return False
        try:
            sparse.clone_range(src, src_offset, length, fd, offset)
        except OSError as exc:
            if exc.errno not in sparse.NO_REFLINK:
                raise
            logger.info("blocks from device %d are copied into %s: %s", device, self._root, exc)
            self._clone_refused.add(device)
            return False
        return True

    def _stored(self, digest: bytes) -> bool:
        return self._index.lookup(digest) is not None or self._files.contains(digest)

    def _reserve(self, length: int) -> tuple[_Pack, int]:
        """Where the next block of ``length`` bytes goes (called with the lock held)."""
        pack = self._active
        if pack is None or (pack.end and pack.end + length > self._pack_bytes):
            pack = self._active = self._new_pack()
            self._held[pack.number] = pack
        offset = pack.end
        pack.end = aligned(offset + length)
        pack.writers += 1
        return pack, offset

    def _new_pack(self) -> _Pack:
        try:
            (self._root / PACKS_DIR).mkdir(parents=True, exist_ok=True)
            number = self._index.new_pack()
            path = pack_path(self._root, number)
            fd = lock_pack(path, create=True)
            assert fd is not None  # a new file nobody else can have locked
            sparse.fsync_dir(path.parent)
        except OSError as exc:
            if exc.errno in _NO_SPACE:
                raise CapacityError(f"no space left for a new pack in {self._root}") from exc
            raise BackendError(f"cannot create a pack in {self._root}: {exc}") from exc
        return _Pack(number, fd, 0)

    def flush(self) -> None:
        """Make every block put so far durable: fsync the packs written since the last flush,
        then commit their index rows."""
        with self._commit:
            with self._lock:
                batch = dict(self._pending)
                packs = [self._held[n] for n in {location.pack for location in batch.values()}]
            if not batch:
                return
            try:
                for pack in packs:
                    os.fsync(pack.fd)
            except OSError as exc:
                raise BackendError(f"cannot sync the packs of {self._root}: {exc}") from exc
            with self._lock:  # a block is pending or indexed, never both nor neither
                self._index.add(batch.items())
                for digest in batch:
                    del self._pending[digest]
                self._release_packs()

    def _release_packs(self) -> None:
        """Close (and unlock) the packs no longer appended to whose blocks are all indexed."""
        pending = {location.pack for location in self._pending.values()}
        for number, pack in list(self._held.items()):
            if pack is not self._active and not pack.writers and number not in pending:
                del self._held[number]
                os.close(pack.fd)

    # -- reading --

    def get(self, digest: bytes) -> bytes:
        return self.get_located(digest)[0]

    def get_located(self, digest: bytes) -> tuple[bytes, FileRange]:
        """The block's bytes, verified, and where they lie: a range of a pack, or a block
        file of the earlier layout. Packs are only appended to, so a stored block's range
        keeps its bytes until the block is deleted."""
        _check_digest(digest)
        with self._lock:
            location = self._pending.get(digest)
        if location is None:
            location = self._index.lookup(digest)
        if location is None:
            data = self._read_file(digest)
            source = (str(self._files.path_of(digest)), 0)
            where = source[0]
        else:
            data = self._read_pack(digest, location)
            source = (str(pack_path(self._root, location.pack)), location.offset)
            where = f"pack {location.pack} offset {location.offset}"
        actual = hashlib.sha256(data).digest()
        if actual != digest:
            raise CorruptBlockError(
                f"block {digest.hex()} at {where} is corrupt: its bytes hash to {actual.hex()}"
            )
        return data, source

    def _read_pack(self, digest: bytes, location: Location) -> bytes:
        try:
            fd = os.open(pack_path(self._root, location.pack), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise MissingBlockError(f"block {digest.hex()} is not in {self._root}") from None
        except OSError as exc:
            raise BackendError(f"cannot read block {digest.hex()}: {exc}") from exc
        try:
            return os.pread(fd, location.length, location.offset)
        except OSError as exc:
            raise BackendError(f"cannot read block {digest.hex()}: {exc}") from exc
        finally:
            os.close(fd)

    def _read_file(self, digest: bytes) -> bytes:
        try:
            data = self._files.read(digest)
        except OSError as exc:
            raise BackendError(f"cannot read block {digest.hex()}: {exc}") from exc
        if data is None:
            raise MissingBlockError(f"block {digest.hex()} is not in {self._root}")
        return data

    def contains(self, digest: bytes) -> bool:
        _check_digest(digest)
        with self._lock:
            if digest in self._pending:
                return True
        return self._stored(digest)

    def iter_digests(self) -> Iterator[bytes]:
        with self._lock:
            pending = set(self._pending)
        yield from pending
        yield from (digest for digest in self._index.digests() if digest not in pending)
        for entry in self._files.entries():
            yield bytes.fromhex(entry.name)

    def stored_bytes(self) -> int:
        """Sum of the stored blocks' sizes."""
        with self._lock:
            pending = sum(location.length for location in self._pending.values())
            indexed = self._index.stored_bytes()
        files = sum(entry.stat().st_size for entry in self._files.entries())
        return pending + indexed + files

    # -- deleting --

    def delete(self, digest: bytes) -> None:
        self.delete_many([digest])

    def delete_many(self, digests: Iterable[bytes]) -> None:
        """Remove blocks (absent ones are no error): their index rows in one durable commit,
        then their bytes (holes punched, emptied packs unlinked). Idempotent."""
        wanted = list(digests)
        for digest in wanted:
            _check_digest(digest)
        with self._commit:
            with self._lock:
                unflushed = [self._pending.pop(d) for d in wanted if d in self._pending]
            removed = unflushed + self._index.remove(wanted)
            try:
                by_pack: dict[int, list[Location]] = {}
                for location in removed:
                    by_pack.setdefault(location.pack, []).append(location)
                for number, locations in by_pack.items():
                    if not self._unlink_if_empty(number):
                        self._punch(number, locations)
                for digest in wanted:
                    self._files.delete(digest)
            except OSError as exc:
                raise BackendError(f"cannot free deleted blocks in {self._root}: {exc}") from exc

    def _punch(self, number: int, locations: list[Location]) -> None:
        """Punch holes where the blocks were, one per run of adjacent blocks."""
        try:
            fd = os.open(pack_path(self._root, number), os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            for start, end in _runs(locations):
                sparse.punch_hole(fd, start, end - start)
        finally:
            os.close(fd)

    def _unlink_if_empty(self, number: int) -> bool:
        """Unlink a pack nothing is appended to and no block is in (called under _commit);
        True if it is gone."""
        with self._lock:
            if number in self._held:
                return False
        path = pack_path(self._root, number)
        fd = lock_pack(path)
        if fd is None:
            return not path.exists()  # gone already, or another process appends to it
        try:
            if self._index.pack_in_use(number):
                return False
            path.unlink(missing_ok=True)
            self._index.forget_pack(number)
            return True
        finally:
            os.close(fd)

    # -- start-up --

    def remove_temp_files(self) -> int:
        """Clean up after a crash; returns how many packs and files it changed. Cuts each
        pack after its last indexed block (puts that were never flushed), punches the gaps
        between its indexed blocks (deletes a crash interrupted), unlinks packs without any,
        and removes the earlier layout's temp files. Packs another process appends to are left
        alone. Call it at start-up, before this store's first put."""
        changed = self._files.remove_temp_files()
        if not (self._root / INDEX_NAME).exists():
            if any(pack_files(self._root)):
                logger.error("%s has packs but no index: they are left as they are", self._root)
            return changed
        for number, path in pack_files(self._root):
            with self._lock:
                if number in self._held:
                    continue
            fd = lock_pack(path)
            if fd is None:
                continue
            try:
                changed += self._trim(number, path, fd)
            except OSError as exc:
                raise BackendError(f"cannot clean up pack {path}: {exc}") from exc
            finally:
                os.close(fd)
        return changed

    def _trim(self, number: int, path: Path, fd: int) -> int:
        rows = self._index.pack_rows(number)
        if not rows:
            path.unlink()
            self._index.forget_pack(number)
            logger.warning("removed pack %s: no block of it was flushed or none is left", path)
            return 1
        changed = 0
        start = 0
        for location in rows:
            if location.offset > start and not sparse.is_hole(fd, start, location.offset - start):
                sparse.punch_hole(fd, start, location.offset - start)
                changed = 1
            start = max(start, aligned(location.offset + location.length))
        if os.fstat(fd).st_size > start:
            os.ftruncate(fd, start)
            changed = 1
        if changed:
            logger.warning("pack %s: freed bytes no indexed block uses", path)
        return changed

    def close(self) -> None:
        """Release the packs and the index (blocks not flushed are lost)."""
        with self._lock:
            packs, self._held, self._active = list(self._held.values()), {}, None
            self._pending.clear()
        for pack in packs:
            os.close(pack.fd)
        self._index.close()

    def check_setup(self) -> None:
        """The root exists (created if need be) and this process may write to it."""
        try:
            self._root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SetupError(f"cannot create the block store {self._root}: {exc}") from exc
        if not os.access(self._root, os.W_OK | os.X_OK):
            raise SetupError(f"the block store {self._root} is not writable by this user")


def _runs(locations: list[Location]) -> Iterator[tuple[int, int]]:
    """(start, end) of each run of adjacent blocks' aligned byte ranges."""
    start = end = -1
    for location in sorted(locations, key=lambda location: location.offset):
        if location.offset != end:
            if end > start:
                yield start, end
            start = location.offset
        end = location.offset + aligned(location.length)
    if end > start:
        yield start, end


def _check_digest(digest: bytes) -> None:
    if len(digest) != DIGEST_BYTES:
        raise ValueError(f"a SHA-256 digest has {DIGEST_BYTES} bytes, not {len(digest)}")
