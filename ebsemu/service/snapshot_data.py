"""The data path between volumes and the snapshot block store.

Reading, hashing and writing are blocking file work: it runs in worker threads, reading the next
batch while the previous one is being stored. A worker thread cannot be interrupted, so when a
job is cancelled (its snapshot deleted, the server shutting down) the coroutine waits for its
threads to end before it lets go of what they use: the view is not closed under a reader, and a
batch of manifest rows and blocks, once begun, is finished before the GC lock is released (else
a sweep could delete blocks that a put still running then writes, left in the store for good).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from backends.base import SnapshotSource, StorageBackend
from ebsemu import faults
from ebsemu.model import BLOCK_SIZE
from ebsemu.service.core import Core

log = logging.getLogger(__name__)

BATCH_BLOCKS = 64  # 32 MiB per batch

T = TypeVar("T")


@dataclass
class CaptureStats:
    blocks: int = 0
    new_blocks: int = 0

    @property
    def new_bytes(self) -> int:
        return self.new_blocks * BLOCK_SIZE


Batch = list[tuple[int, bytes, bytes]]  # (block index, digest, data)


def _read_batch(blocks: Iterator[tuple[int, bytes]]) -> Batch:
    batch: Batch = []
    for index, data in blocks:
        batch.append((index, hashlib.sha256(data).digest(), data))
        if len(batch) == BATCH_BLOCKS:
            break
    return batch


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
    into the block store and its manifest."""
    source: SnapshotSource = await _finish(_in_thread(lambda: storage.open_view(snapshot_id)))
    stats = CaptureStats()
    upcoming: asyncio.Future[Batch] | None = None
    try:
        total_blocks = max(1, source.size_bytes // BLOCK_SIZE)
        blocks = source.iter_blocks(0)
        reported = 0
        batch = await _finish(_in_thread(lambda: _read_batch(blocks)))
        while batch:
            upcoming = _in_thread(lambda: _read_batch(blocks))
            stats.new_blocks += await _store_batch(core, snapshot_id, batch)
            stats.blocks += len(batch)
            await faults.reach("snapshot.batch")
            progress = min(99, batch[-1][0] * 100 // total_blocks)
            if progress > reported:
                reported = progress
                await core.store.set_snapshot_progress(snapshot_id, progress)
            batch = await _finish(upcoming)
        await _finish(_in_thread(core.blocks.flush))
    finally:
        if upcoming is not None:
            await _settle(upcoming)  # the reader must be done before the source closes
        await _finish(_in_thread(source.close))
    return stats


async def _store_batch(core: Core, snapshot_id: str, batch: Batch) -> int:
    """Add manifest rows first, then the blocks, under the GC lock. Returns blocks written.

    A batch once begun is finished even if the job is cancelled meanwhile: the lock is held
    until its last block is written, and its manifest transaction is never cut short."""

    async def rows_then_blocks() -> int:
        rows = [(index, digest) for index, digest, _ in batch]
        await core.store.add_manifest_rows(snapshot_id, rows)
        return await asyncio.to_thread(
            lambda: sum(core.blocks.put(digest, data) for _, digest, data in batch)
        )

    async with core.block_gc_lock:
        return await _finish(asyncio.ensure_future(rows_then_blocks()))


async def restore(core: Core, snapshot_id: str, volume_id: str, storage: StorageBackend) -> None:
    """Write a snapshot's blocks into an existing, empty volume on ``storage`` (its host);
    holes stay holes. Every block is verified against its digest as it is read back
    (CorruptBlockError otherwise)."""
    manifest = await core.store.manifest(snapshot_id)

    def produce() -> Iterator[tuple[int, bytes]]:
        for index, digest in manifest:
            yield index, core.blocks.get(digest)

    await _finish(_in_thread(lambda: storage.write_blocks(volume_id, produce())))


async def sweep(core: Core, snapshot_id: str) -> int:
    """Drop a snapshot's manifest and delete every block nothing else references."""
    async with core.block_gc_lock:
        unreferenced = await core.store.clear_manifest(snapshot_id)

        def delete_all() -> None:
            for digest in unreferenced:
                core.blocks.delete(digest)

        await _finish(_in_thread(delete_all))
    log.info("snapshot %s: manifest dropped, %d blocks freed", snapshot_id, len(unreferenced))
    return len(unreferenced)
