"""The data path between volumes and the snapshot block store.

Reading, hashing and writing are blocking file work: it runs in worker threads, reading the next
batch while the previous one is being stored. A worker thread cannot be interrupted, so when a
job is cancelled (its snapshot deleted, the server shutting down) the coroutine waits for its
threads to end before it lets go of what they use: the view is not closed under a reader, and a
batch of manifest rows and blocks, once begun, is finished before the GC lock is released (else
a sweep could delete blocks that a put still running then writes, left in the store for good).

SHA-256 runs in two threads (hashlib releases the GIL on large buffers); a file backend's view
is hashed in place, through a memory map, not copied out of the page cache first
(backends.mapped_blocks). A batch's new blocks go to the block store in one call where it takes
many (the local store: one index query, one write or reflink per run of adjacent blocks). Where
the view can say where a block lives in a file it holds (a file backend's view) and the block
store can share a file's extents (the local store on XFS or btrfs), a new block is stored as a
reflink of the view's range instead of a copy of its bytes. A restore reads and verifies blocks
in two threads ahead of the thread that writes them; where the block store can say which file
range holds a block and the volume's backend can share extents with it (the local store and a
file volume on one XFS or btrfs), the volume shares that range instead of having the bytes
written.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from itertools import islice
from typing import TypeVar

from backends.base import (
    BatchDeletingBlockStore,
    BatchPuttingBlockStore,
    BlockBytes,
    BlockLocator,
    BlockStore,
    ChangedBlocksSource,
    RangeCloningWriter,
    RangeReadingBlockStore,
    SeededChangesSource,
    SnapshotSource,
    StorageBackend,
)
from backends.errors import MissingBlockError
from ebsemu import faults
from ebsemu.model import BLOCK_SIZE, ZERO_DIGEST, SnapshotState
from ebsemu.service.core import Core
from ebsemu.store.base import Store

log = logging.getLogger(__name__)

BATCH_BLOCKS = 64  # 32 MiB per batch
PROGRESS_EVERY = 0.5  # seconds between two writes of a capture's progress, after its first
READ_AHEAD_BLOCKS = 16  # 8 MiB read and verified ahead of a restore's writes
_HASHER_COUNT = 2
_HASHERS = ThreadPoolExecutor(_HASHER_COUNT, thread_name_prefix="sha256")

T = TypeVar("T")


@dataclass
class CaptureStats:
    blocks: int = 0  # in the snapshot's manifest
    new_blocks: int = 0  # written to the block store
    read_blocks: int = 0  # read from the view
    base_id: str | None = None  # the snapshot whose manifest only the changes were laid over

    @property
    def new_bytes(self) -> int:
        return self.new_blocks * BLOCK_SIZE


Batch = list[tuple[int, bytes, BlockBytes]]  # (block index, digest, data)


def _read_batch(blocks: Iterator[tuple[int, BlockBytes]]) -> Batch:
    """The next BATCH_BLOCKS blocks (fewer at the end), in index order. Two threads take
    blocks from ``blocks`` one at a time and each hashes what it took while the other reads."""
    taking = threading.Lock()
    taken = 0

    def take() -> Batch:
        nonlocal taken
        rows: Batch = []
        while True:
            with taking:
                item = next(blocks, None) if taken < BATCH_BLOCKS else None
                if item is None:
                    return rows
                taken += 1
            index, data = item
            rows.append((index, _sha256(data), data))

    halves = [_HASHERS.submit(take) for _ in range(_HASHER_COUNT)]
    wait(halves)  # both: if one fails, the other may still be reading from the source
    return sorted((row for half in halves for row in half.result()), key=lambda row: row[0])


def _sha256(data: BlockBytes) -> bytes:
    return hashlib.sha256(data).digest()


PutBatch = Callable[[Batch], int]  # stores a batch's blocks; returns how many were written


def _putter(blocks: BlockStore, source: SnapshotSource) -> PutBatch:
    """How to store a batch read from ``source``: in one call where the store takes many,
    each block a reflink of the view's range where both sides can; else block by block."""
    if not isinstance(blocks, BatchPuttingBlockStore):
        return lambda batch: sum(blocks.put(digest, data) for _, digest, data in batch)
    store = blocks
    locate = source.block_location if isinstance(source, BlockLocator) else None

    def put_many(batch: Batch) -> int:
        return store.put_many(
            [(digest, data, locate(index) if locate else None) for index, digest, data in batch]
        )

    return put_many


def _delete_blocks(blocks: BlockStore, digests: list[bytes]) -> None:
    if isinstance(blocks, BatchDeletingBlockStore):
        blocks.delete_many(digests)
    else:
        for digest in digests:
            blocks.delete(digest)


async def _settle(task: asyncio.Future[T]) -> None:
    """Wait for a task to end, whatever its outcome (an exception is marked retrieved)."""
    await asyncio.wait([task])
    if not task.cancelled():
        task.exception()


async def _finish(task: asyncio.Future[T]) -> T:
    """Await a task that must run to its end (a worker thread cannot be stopped anyway): if the
    caller is cancelled meanwhile, wait for the task to end before the cancellation goes on."""
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await _settle(task)
        raise


def _in_thread(func: Callable[[], T]) -> asyncio.Future[T]:
    return asyncio.ensure_future(asyncio.to_thread(func))


async def capture(core: Core, snapshot_id: str, storage: StorageBackend) -> CaptureStats:
    """Stream the frozen view named ``snapshot_id`` (on ``storage``, the host that froze it)
    into the block store and its manifest. When the view can read only its changes since a
    completed snapshot of the same volume, the manifest starts as that snapshot's and only
    the changed blocks are read (a changed block now all zeros drops its row). A view frozen
    against a snapshot's digests (``SeededChangesSource``) holds only its changed blocks; the
    manifest was seeded with that snapshot's rows when it was frozen."""
    source: SnapshotSource = await _finish(_in_thread(lambda: storage.open_view(snapshot_id)))
    stats = CaptureStats()
    upcoming: asyncio.Future[Batch] | None = None
    try:
        total_blocks = max(1, source.size_bytes // BLOCK_SIZE)
        blocks: Iterator[tuple[int, BlockBytes]]
        if isinstance(source, SeededChangesSource):  # the manifest was seeded at the freeze
            stats.base_id = source.seeded_from
            blocks = source.changed_blocks()
        else:
            stats.base_id = await _start_from_base(core, snapshot_id, source)
            if stats.base_id is not None and isinstance(source, ChangedBlocksSource):
                blocks = source.changed_blocks()
            else:
                blocks = source.iter_blocks(0)
        zeroed: list[int] = []
        progress = Progress(core.store, snapshot_id, total_blocks)
        put = _putter(core.blocks, source)
        batch = await _finish(_in_thread(lambda: _read_batch(blocks)))
        while batch:
            upcoming = _in_thread(lambda: _read_batch(blocks))
            stats.read_blocks += len(batch)
            zeroed += [index for index, digest, _ in batch if digest == ZERO_DIGEST]
            data = [row for row in batch if row[1] != ZERO_DIGEST]
            if data:
                stats.new_blocks += await _store_batch(core, snapshot_id, data, put)
            await faults.reach("snapshot.batch")
            await progress.reached(batch[-1][0])
            batch = await _finish(upcoming)
        if zeroed:
            await _drop_rows(core, snapshot_id, zeroed)
        await _finish(_in_thread(core.blocks.flush))
        stats.blocks = await core.store.manifest_block_count(snapshot_id)
    finally:
        if upcoming is not None:
            await _settle(upcoming)  # the reader must be done before the source closes
        await _finish(_in_thread(source.close))
    return stats


class Progress:
    """A capture's Progress: the first rise is written at once, later ones at most once per
    PROGRESS_EVERY seconds (each write is a durable commit on the capture's path)."""

    def __init__(self, store: Store, snapshot_id: str, total_blocks: int) -> None:
        self._store = store
        self._snapshot_id = snapshot_id
        self._total = total_blocks
        self._written = 0
        self._at: float | None = None

    async def reached(self, index: int) -> None:
        """Block ``index`` (and every one before it) is captured."""
        percent = min(99, index * 100 // self._total)
        now = time.monotonic()
        if percent > self._written and (self._at is None or now - self._at >= PROGRESS_EVERY):
            self._written, self._at = percent, now
            await self._store.set_snapshot_progress(self._snapshot_id, percent)


async def _start_from_base(core: Core, snapshot_id: str, source: SnapshotSource) -> str | None:
    """If the source reads changes since a base view whose snapshot has completed (of the
    same volume), copy the base's manifest rows into this snapshot's (under the GC lock, so
    the base's blocks cannot go meanwhile) and return the base's id; else None."""
    if not isinstance(source, ChangedBlocksSource) or source.base_view_id is None:
        return None
    base_id = source.base_view_id
    async with core.block_gc_lock:
        base = await core.store.get_snapshot(base_id)
        this = await core.store.get_snapshot(snapshot_id)
        if (
            base is None
            or this is None
            or base.state is not SnapshotState.COMPLETED
            or base.volume_id != this.volume_id
        ):
            log.info(
                "snapshot %s: base %s is not a completed snapshot; read whole", snapshot_id, base_id
            )
            return None
        await _finish(asyncio.ensure_future(core.store.copy_manifest(base_id, snapshot_id)))
    return base_id


async def seed_manifest(core: Core, base_id: str, snapshot_id: str) -> dict[int, bytes]:
    """Start the snapshot's manifest as a copy of snapshot ``base_id``'s (under the GC lock, so
    the base's blocks cannot go meanwhile) and return it: block index -> digest."""
    async with core.block_gc_lock:
        await _finish(asyncio.ensure_future(core.store.copy_manifest(base_id, snapshot_id)))
    return dict(await core.store.manifest(snapshot_id))


async def _drop_rows(core: Core, snapshot_id: str, indexes: list[int]) -> None:
    """Remove manifest rows of blocks that became zeros, and blocks nothing references now."""
    async with core.block_gc_lock:
        unreferenced = await core.store.remove_manifest_rows(snapshot_id, indexes)
        await _finish(_in_thread(lambda: _delete_blocks(core.blocks, list(unreferenced))))


async def _store_batch(core: Core, snapshot_id: str, batch: Batch, put: PutBatch) -> int:
    """Add manifest rows first, then the blocks, under the GC lock. Returns blocks written.

    A batch once begun is finished even if the job is cancelled meanwhile: the lock is held
    until its last block is written, and its manifest transaction is never cut short."""

    async def rows_then_blocks() -> int:
        rows = [(index, digest) for index, digest, _ in batch]
        replaced = await core.store.add_manifest_rows(snapshot_id, rows)
        written = await asyncio.to_thread(put, batch)
        if replaced:  # the seeded rows of a snapshot deleted meanwhile held the only ones
            await asyncio.to_thread(_delete_blocks, core.blocks, replaced)
        return written

    async with core.block_gc_lock:
        return await _finish(asyncio.ensure_future(rows_then_blocks()))


async def restore(core: Core, snapshot_id: str, volume_id: str, storage: StorageBackend) -> None:
    """Write a snapshot's blocks into an existing, empty volume on ``storage`` (its host);
    holes stay holes. Every block is verified against its digest as it is read back
    (CorruptBlockError otherwise). MissingBlockError if the snapshot is found deleted once its
    manifest is read (its rows may be gone already: the volume would be short of them)."""
    manifest = await core.store.manifest(snapshot_id)
    if await core.store.get_snapshot(snapshot_id) is None:
        raise MissingBlockError(f"snapshot {snapshot_id} was deleted before it was restored")
    blocks = core.blocks
    write: Callable[[], None]
    if isinstance(storage, RangeCloningWriter) and isinstance(blocks, RangeReadingBlockStore):
        located = blocks  # the volume may share the extents that hold the blocks read

        def write() -> None:
            read = _read_ahead(located.get_located, manifest)
            storage.write_located_blocks(volume_id, ((i, d, w) for i, (d, w) in read))

    else:

        def write() -> None:
            storage.write_blocks(volume_id, _read_ahead(blocks.get, manifest))

    await _finish(_in_thread(write))


def _read_ahead(
    read: Callable[[bytes], T], manifest: list[tuple[int, bytes]]
) -> Iterator[tuple[int, T]]:
    """(index, read(digest)) of each manifest row in order, read (and verified, as a block
    store's reads are) by two threads up to READ_AHEAD_BLOCKS ahead of the consumer (which
    writes them meanwhile)."""
    rows = iter(manifest)
    with ThreadPoolExecutor(2, thread_name_prefix="restore-read") as readers:
        ahead: deque[tuple[int, Future[T]]] = deque(
            (index, readers.submit(read, digest))
            for index, digest in islice(rows, READ_AHEAD_BLOCKS)
        )
        try:
            while ahead:
                index, data = ahead.popleft()
                for later, digest in islice(rows, 1):
                    ahead.append((later, readers.submit(read, digest)))
                yield index, data.result()
        finally:
            for _, data in ahead:
                data.cancel()


async def sweep(core: Core, snapshot_id: str) -> int:
    """Drop a snapshot's manifest and delete every block nothing else references."""
    async with core.block_gc_lock:
        unreferenced = await core.store.clear_manifest(snapshot_id)
        await _finish(_in_thread(lambda: _delete_blocks(core.blocks, list(unreferenced))))
    log.info("snapshot %s: manifest dropped, %d blocks freed", snapshot_id, len(unreferenced))
    return len(unreferenced)
