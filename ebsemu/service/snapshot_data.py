"""The data path between volumes and the snapshot block store.

Reading, hashing and writing are blocking file work: it runs in worker threads, reading the next
batch while the previous one is being stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from backends.base import SnapshotSource
from ebsemu.model import BLOCK_SIZE
from ebsemu.service.core import Core

log = logging.getLogger(__name__)

BATCH_BLOCKS = 64  # 32 MiB per batch


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


async def capture(core: Core, snapshot_id: str) -> CaptureStats:
    """Stream the frozen view named ``snapshot_id`` into the block store and its manifest."""
    source: SnapshotSource = await asyncio.to_thread(core.storage.open_view, snapshot_id)
    stats = CaptureStats()
    try:
        total_blocks = max(1, source.size_bytes // BLOCK_SIZE)
        blocks = source.iter_blocks(0)
        reported = 0
        batch = await asyncio.to_thread(_read_batch, blocks)
        while batch:
            upcoming = asyncio.ensure_future(asyncio.to_thread(_read_batch, blocks))
            try:
                stats.new_blocks += await _store_batch(core, snapshot_id, batch)
            except BaseException:
                # The reader thread cannot be interrupted: let it end before the source closes.
                await asyncio.gather(upcoming, return_exceptions=True)
                raise
            stats.blocks += len(batch)
            progress = min(99, batch[-1][0] * 100 // total_blocks)
            if progress > reported:
                reported = progress
                await core.store.set_snapshot_progress(snapshot_id, progress)
            batch = await upcoming
        await asyncio.to_thread(core.blocks.flush)
    finally:
        await asyncio.to_thread(source.close)
    return stats


async def _store_batch(core: Core, snapshot_id: str, batch: Batch) -> int:
    """Add manifest rows first, then the blocks, under the GC lock. Returns blocks written."""
    async with core.block_gc_lock:
        await core.store.add_manifest_rows(snapshot_id, [(i, digest) for i, digest, _ in batch])
        return await asyncio.to_thread(
            lambda: sum(core.blocks.put(digest, data) for _, digest, data in batch)
        )


async def restore(core: Core, snapshot_id: str, volume_id: str) -> None:
    """Write a snapshot's blocks into an existing, empty volume; holes stay holes. Every block
    is verified against its digest as it is read back (CorruptBlockError otherwise)."""
    manifest = await core.store.manifest(snapshot_id)

    def produce() -> Iterator[tuple[int, bytes]]:
        for index, digest in manifest:
            yield index, core.blocks.get(digest)

    await asyncio.to_thread(core.storage.write_blocks, volume_id, produce())


async def sweep(core: Core, snapshot_id: str) -> int:
    """Drop a snapshot's manifest and delete every block nothing else references."""
    async with core.block_gc_lock:
        unreferenced = await core.store.clear_manifest(snapshot_id)

        def delete_all() -> None:
            for digest in unreferenced:
                core.blocks.delete(digest)

        await asyncio.to_thread(delete_all)
    log.info("snapshot %s: manifest dropped, %d blocks freed", snapshot_id, len(unreferenced))
    return len(unreferenced)
