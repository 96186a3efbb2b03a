"""Restored blocks into a file-backend volume: written, or sharing the extents that hold them.

A restore hands a volume its blocks in index order, each with the range of a file that holds
its bytes where the block store can say so (a pack of the local block store). On a filesystem
that can share extents (XFS with reflink=1, btrfs), the volume's range is made to share that
file range's extents (FICLONERANGE) instead of being written: no bytes are copied, and the
volume takes no new space until it is written to. Blocks that are adjacent in the volume and
in one source file are shared by one call, up to RUN_BLOCKS at a time. Where the filesystem
refuses (ext4, tmpfs, a source on another filesystem), the bytes are written, and that source
device is not tried again by this writer's backend. A range it cannot share (EINVAL), or a
source that is not a regular file, has its bytes written too, and sharing goes on after it.

Either way, the caller has the block's bytes (read and verified against its digest) before it
is written or shared, and every segment written to or shared into is fsynced before
``finish`` returns: its data and its extent map.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from backends import sparse
from backends.base import FileRange
from backends.errors import BackendError
from ebsemu.model import BLOCK_SIZE, ZERO_BLOCK

logger = logging.getLogger(__name__)

RUN_BLOCKS = 64  # blocks shared by one FICLONERANGE at most (their bytes kept for a fallback)


@dataclass
class _Run:
    """Adjacent blocks of one segment whose bytes lie back to back in one source file."""

    segment: int
    offset: int  # in the segment
    source: int  # open source file
    source_offset: int
    blocks: list[bytes] = field(default_factory=list)

    def continues(self, segment: int, offset: int, source: int, source_offset: int) -> bool:
        length = len(self.blocks) * BLOCK_SIZE
        return (
            len(self.blocks) < RUN_BLOCKS
            and segment == self.segment
            and offset == self.offset + length
            and source == self.source
            and source_offset == self.source_offset + length
        )


class BlockWriter:
    """Writes the blocks of one volume of ``block_count`` blocks, ``per_segment`` to a segment
    file (``segment_path``). ``refused``: source devices known not to share extents with this
    volume's filesystem, shared with the backend's other writers and added to here."""

    def __init__(
        self,
        volume_id: str,
        segment_path: Callable[[int], Path],
        block_count: int,
        per_segment: int,
        refused: set[int],
    ) -> None:
        self._volume_id = volume_id
        self._segment_path = segment_path
        self._block_count = block_count
        self._per_segment = per_segment
        self._refused = refused
        self._segments: dict[int, int] = {}  # segment -> open file
        self._sources: dict[str, int | None] = {}  # source path -> open file, None: not shared
        self._written: set[int] = set()
        self._run: _Run | None = None
        self.shared_blocks = 0  # blocks that share a source's extents
        self.written_blocks = 0  # blocks whose bytes were written

    def add(self, index: int, data: bytes, where: FileRange | None = None) -> None:
        """Write block ``index``, or share the extents of ``where`` that hold ``data``. An
        all-zero block over a hole is skipped, so holes stay holes."""
        if len(data) != BLOCK_SIZE or not 0 <= index < self._block_count:
            raise BackendError(
                f"block {index} ({len(data)} bytes) does not fit volume {self._volume_id} "
                f"of {self._block_count} blocks of {BLOCK_SIZE} bytes"
            )
        segment, local = divmod(index, self._per_segment)
        offset = local * BLOCK_SIZE
        zero = data == ZERO_BLOCK
        if where is not None and not zero and self._to_share(segment, offset, where, data):
            return
        self._share_run()
        fd = self._segment(segment)
        if zero and sparse.is_hole(fd, offset, BLOCK_SIZE):
            return
        sparse.pwrite_all(fd, data, offset)
        self._written.add(segment)
        self.written_blocks += 1

    def finish(self) -> None:
        """Share the last run, then fsync every segment written or shared into."""
        self._share_run()
        for segment in sorted(self._written):
            os.fsync(self._segments[segment])

    def close(self) -> None:
        for fd in [*self._segments.values(), *self._sources.values()]:
            if fd is not None:
                os.close(fd)
        self._segments.clear()
        self._sources.clear()

    def _segment(self, segment: int) -> int:
        fd = self._segments.get(segment)
        if fd is None:
            fd = os.open(self._segment_path(segment), os.O_RDWR | os.O_CLOEXEC)
            self._segments[segment] = fd
        return fd

    def _source(self, path: str) -> int | None:
        """The source file open for sharing, or None (the caller has the bytes: they are
        written): it cannot be opened, it is not a regular file, or its filesystem refused to
        share before."""
        if path in self._sources:
            return self._sources[path]
        fd: int | None
        try:  # O_NONBLOCK: were it a FIFO, opening it must not wait for a writer
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            logger.info(
                "volume %s: blocks of %s are written, not shared: %s", self._volume_id, path, exc
            )
            fd = None
        if fd is not None:
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode) or status.st_dev in self._refused:
                os.close(fd)
                fd = None
        self._sources[path] = fd
        return fd

    def _to_share(self, segment: int, offset: int, where: FileRange, data: bytes) -> bool:
        """Add the block to the run to be shared; False if its source cannot share."""
        source = self._source(where[0])
        if source is None:
            return False
        run = self._run
        if run is not None and run.continues(segment, offset, source, where[1]):
            run.blocks.append(data)
            return True
        self._share_run()
        source = self._source(where[0])  # sharing that run may have found the device refusing
        if source is None:
            return False
        self._run = _Run(segment, offset, source, where[1], [data])
        return True

    def _share_run(self) -> None:
        run, self._run = self._run, None
        if run is None:
            return
        fd = self._segment(run.segment)
        try:
            sparse.clone_range(
                run.source, run.source_offset, len(run.blocks) * BLOCK_SIZE, fd, run.offset
            )
            self.shared_blocks += len(run.blocks)
        except OSError as exc:
            if exc.errno not in sparse.NO_REFLINK:
                raise
            if exc.errno != errno.EINVAL:  # the filesystems cannot share; EINVAL: not this range
                self._refuse(run.source, exc)
            for position, data in enumerate(run.blocks):
                sparse.pwrite_all(fd, data, run.offset + position * BLOCK_SIZE)
            self.written_blocks += len(run.blocks)
        self._written.add(run.segment)

    def _refuse(self, source: int, exc: OSError) -> None:
        """Later blocks from ``source``'s device are written, by this writer and the next."""
        device = os.fstat(source).st_dev
        self._refused.add(device)
        for path, fd in self._sources.items():
            if fd is not None and os.fstat(fd).st_dev == device:
                self._sources[path] = None
                os.close(fd)
        logger.info("volume %s: restored blocks are written, not shared: %s", self._volume_id, exc)
