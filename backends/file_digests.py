"""Views of a file-backend volume that hold only the blocks changed since a completed snapshot.

Without reflink (ext4, tmpfs) a plain freeze copies every data extent of the volume, and its
capture then reads and hashes all of it again, to store the few blocks that changed. Given the
SHA-256 of each block of an earlier snapshot of the volume (its manifest, ``BlockDigests``), the
freeze here instead reads and hashes every data block of the volume and copies only the blocks
whose digest differs; a block that is now a hole, or all zeros, differs where the earlier
snapshot had data. The view then holds those blocks (a hole for the ones now zero) and their
list (``changed-blocks``: ascending block indexes, little-endian 64-bit), and its description
names the snapshot compared with (``seeded_from``). The service has already made the new
snapshot's manifest a copy of that snapshot's, so its capture only lays these blocks over it.

A block is unchanged only when its bytes hash to the digest the earlier snapshot stored for it:
the same equality the block store relies on to store a block once. Where the freeze of that
snapshot recorded the BLAKE3 of its blocks (backends/file_fingerprints.py), the comparison is of
those instead, which runs faster than SHA-256 here; every freeze without reflink, the first one
of a volume included (``copy_fingerprinted``), records them for the next. Such a view is never
read whole (``iter_blocks`` raises) and never kept as a base. Blocking; run in a worker thread.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import math
import os
import sys
from array import array
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from backends import file_fingerprints, sparse
from backends.errors import BackendError
from backends.file import META_NAME, FileView, Layout, segment_name
from ebsemu.model import BLOCK_SIZE, ZERO_DIGEST

DIGEST = "digest"  # a view description's frozen_by: frozen against an earlier snapshot's digests
CHANGED_NAME = "changed-blocks"
_CHUNK_BLOCKS = 16  # blocks one hashing task reads (8 MiB)
_HASHERS = 2  # hashlib releases the GIL on large buffers: both CPUs hash


class Changes(NamedTuple):
    """What ``freeze_changes`` found."""

    changed: int  # blocks that differ, copied into the view
    fingerprints: dict[int, bytes]  # the BLAKE3 of each non-zero block of the volume now
    compared_by: str  # "BLAKE3" (the snapshot's fingerprints) or "SHA-256" (its digests)


def freeze_changes(
    source: Path,
    staging: Path,
    layout: Layout,
    digests: Mapping[int, bytes],
    fingerprints: Mapping[int, bytes] | None = None,
) -> Changes:
    """Write into the empty directory ``staging`` the segment files of a view of the volume in
    ``source`` that hold only its blocks whose SHA-256 differs from ``digests`` (a block absent
    from it is zeros), and the list of those blocks, all durable. Where ``fingerprints`` (the
    BLAKE3 of the same snapshot's blocks, backends/file_fingerprints.py) name the same blocks
    as ``digests``, blocks are compared by those instead."""
    beyond = [index for index in digests if index >= layout.size_bytes // BLOCK_SIZE]
    if beyond:  # a volume never shrinks: these digests are not of an earlier state of it
        raise BackendError(f"the digests name block {min(beyond)}, past the volume's end")
    if fingerprints is not None and fingerprints.keys() != digests.keys():
        fingerprints = None  # not of this snapshot: compare the digests themselves
    compare = _Compare(digests, fingerprints)
    changed = _read_segments(source, staging, layout, compare)
    _write_changed(staging / CHANGED_NAME, changed)
    return Changes(len(changed), compare.now, "SHA-256" if fingerprints is None else "BLAKE3")


def copy_fingerprinted(source: Path, staging: Path, layout: Layout) -> dict[int, bytes]:
    """Write into the empty directory ``staging`` durable copies of the segment files of the
    volume in ``source`` (its data extents; holes stay holes), as a freeze without reflink
    does, and return the BLAKE3 of its non-zero blocks."""
    compare = _Compare({}, None)
    _read_segments(source, staging, layout, compare, copy_all=True)
    return compare.now


class _Compare:
    """Whether a block differs from the snapshot compared with: by its BLAKE3 where the
    snapshot's ``fingerprints`` are known, else by its SHA-256. Collects the BLAKE3 of every
    non-zero block read (``now``)."""

    def __init__(
        self, digests: Mapping[int, bytes], fingerprints: Mapping[int, bytes] | None
    ) -> None:
        self.earlier = digests.keys()  # the snapshot's non-zero blocks
        self._digests = digests
        self._fingerprints = fingerprints
        self.now: dict[int, bytes] = {}  # filled from the hashing threads (one key each)

    def record(self, index: int, block: bytearray) -> bytes:
        """The block's BLAKE3, noted in ``now`` unless the block is zeros."""
        mark = file_fingerprints.fingerprint(block)
        if mark != file_fingerprints.ZERO_FINGERPRINT:
            self.now[index] = mark
        return mark

    def differs(self, index: int, block: bytearray) -> tuple[bool, bool]:
        """(whether the block differs from the snapshot's, whether it is zeros)."""
        mark = self.record(index, block)
        zero = mark == file_fingerprints.ZERO_FINGERPRINT
        if self._fingerprints is not None:
            return mark != self._fingerprints.get(index, file_fingerprints.ZERO_FINGERPRINT), zero
        digest = hashlib.sha256(block).digest()
        return digest != self._digests.get(index, ZERO_DIGEST), zero


def _read_segments(
    source: Path, staging: Path, layout: Layout, compare: _Compare, *, copy_all: bool = False
) -> array[int]:
    """Read every data block of the volume in ``source``, copy those that differ (or, with
    ``copy_all``, every data block) into segment files of the same sizes in ``staging``,
    durably; the ascending indexes of the blocks that differ."""
    per_segment = layout.segment_bytes // BLOCK_SIZE
    changed = array("Q")
    with ThreadPoolExecutor(_HASHERS, thread_name_prefix="freeze-hash") as hashers:
        for segment in range(layout.segment_count):
            size = layout.segment_size(segment)
            first = segment * per_segment
            src = os.open(source / segment_name(segment), os.O_RDONLY)
            try:
                os.posix_fadvise(src, 0, 0, os.POSIX_FADV_SEQUENTIAL)
                dst = os.open(
                    staging / segment_name(segment), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600
                )
                try:
                    os.ftruncate(dst, size)
                    reader = _SegmentCompare(src, dst, first, compare)
                    changed.extend(reader.run(hashers, size, copy_all=copy_all))
                    os.fsync(dst)
                finally:
                    os.close(dst)
            finally:
                os.close(src)
    return changed


class _SegmentCompare:
    """One segment of the volume compared with an earlier snapshot, its changed blocks copied."""

    def __init__(self, src: int, dst: int, first: int, compare: _Compare) -> None:
        self._src = src
        self._dst = dst
        self._first = first  # the volume's index of the segment's first block
        self._compare = compare

    def run(self, hashers: ThreadPoolExecutor, size: int, *, copy_all: bool) -> list[int]:
        """Volume indexes of the segment's changed blocks, ascending; with ``copy_all``, every
        data block is copied instead, and none is reported."""
        blocks = size // BLOCK_SIZE
        runs = _data_runs(self._src, size)
        chunks = [
            range(start, min(start + _CHUNK_BLOCKS, stop))
            for start_run, stop in runs
            for start in range(start_run, stop, _CHUNK_BLOCKS)
        ]
        if copy_all:
            for _ in hashers.map(self._copy_chunk, chunks):
                pass
            return []
        changed = [index for found in hashers.map(self._chunk, chunks) for index in found]
        last = self._first + blocks
        earlier = (index for index in self._compare.earlier if self._first <= index < last)
        changed += [index for index in earlier if not _within(index - self._first, runs)]
        return sorted(changed)

    def _chunk(self, blocks: range) -> list[int]:
        changed = []
        data = bytearray(BLOCK_SIZE)  # one buffer for the chunk: no allocation per block
        for local in blocks:
            if os.preadv(self._src, [data], local * BLOCK_SIZE) != BLOCK_SIZE:
                raise BackendError(f"block {self._first + local} is shorter than a block")
            differs, zero = self._compare.differs(self._first + local, data)
            if differs:
                changed.append(self._first + local)
                if not zero:
                    sparse.pwrite_all(self._dst, data, local * BLOCK_SIZE)
        return changed

    def _copy_chunk(self, blocks: range) -> None:
        """Copy the chunk whole (in the kernel, where it can), then fingerprint the copy's
        blocks, from the page cache the copy filled: the bytes the view holds, even where the
        volume changed since."""
        sparse.copy_range(self._src, self._dst, blocks.start * BLOCK_SIZE, len(blocks) * BLOCK_SIZE)
        data = bytearray(BLOCK_SIZE)
        for local in blocks:
            if os.preadv(self._dst, [data], local * BLOCK_SIZE) != BLOCK_SIZE:
                raise BackendError(f"block {self._first + local} is shorter than a block")
            self._compare.record(self._first + local, data)


def _data_runs(fd: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) block ranges of the file's first ``size`` bytes that hold data, merged."""
    runs: list[tuple[int, int]] = []
    for start, end in sparse.data_extents(fd, 0, size):
        first, stop = start // BLOCK_SIZE, -(-end // BLOCK_SIZE)
        if runs and runs[-1][1] >= first:
            runs[-1] = (runs[-1][0], max(runs[-1][1], stop))
        else:
            runs.append((first, stop))
    return runs


def _within(block: int, runs: Sequence[tuple[int, int]]) -> bool:
    """True if ``block`` is in one of the ascending, disjoint ``runs``."""
    position = bisect.bisect_right(runs, (block, math.inf)) - 1
    return position >= 0 and block < runs[position][1]


def _write_changed(path: Path, changed: array[int]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        sparse.pwrite_all(fd, _little_endian(changed).tobytes(), 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def _little_endian(values: array[int]) -> array[int]:
    """``values`` in little-endian byte order, as the list of changes is stored (and back: a
    byte swap is its own inverse)."""
    if sys.byteorder == "little":
        return values
    swapped = array(values.typecode, values)
    swapped.byteswap()
    return swapped


class DigestView(FileView):
    """A view frozen by ``freeze_changes``: reads its changed blocks only."""

    def __init__(self, directory: Path, layout: Layout, seeded_from: str) -> None:
        self._name = directory.name
        self._seeded_from = seeded_from
        self._changed = _read_changed(directory / CHANGED_NAME, layout)
        super().__init__(directory, layout)

    @property
    def seeded_from(self) -> str:
        return self._seeded_from

    def iter_blocks(self, start_index: int = 0) -> Iterator[tuple[int, bytes]]:
        raise BackendError(
            f"view {self._name} holds only the blocks changed since {self._seeded_from}"
        )

    def changed_blocks(self) -> Iterator[tuple[int, bytes]]:
        for index in self._changed:
            fd, offset = self.block_location(index)
            data = os.pread(fd, BLOCK_SIZE, offset)
            if len(data) != BLOCK_SIZE:
                raise BackendError(f"view {self._name}: block {index} is short")
            yield index, data


def _read_changed(path: Path, layout: Layout) -> array[int]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BackendError(f"cannot read {path}: {exc}") from exc
    if len(data) % 8:
        raise BackendError(f"{path}: not a list of 64-bit block indexes")
    stored = array("Q")
    stored.frombytes(data)
    changed = _little_endian(stored)
    limit = -(-layout.size_bytes // BLOCK_SIZE)
    if any(index >= limit for index in changed) or any(
        later <= earlier for earlier, later in itertools.pairwise(changed)
    ):
        raise BackendError(f"{path}: block indexes out of order or beyond the view")
    return changed


def open_view(directory: Path, layout: Layout) -> DigestView | None:
    """The view as a DigestView if it was frozen against digests; None for any other view."""
    try:
        description = json.loads((directory / META_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BackendError(f"cannot read the description of view {directory.name}: {exc}") from exc
    if not isinstance(description, dict) or description.get("frozen_by") != DIGEST:
        return None
    seeded_from = description.get("seeded_from")
    if not isinstance(seeded_from, str) or not seeded_from:
        raise BackendError(f"view {directory.name} names no snapshot it was compared with")
    return DigestView(directory, layout, seeded_from)
