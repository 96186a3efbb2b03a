"""The ``rbd diff v1`` stream that ``rbd export-diff`` writes and ``rbd import-diff`` reads.

After the header line ``rbd diff v1\\n`` come tagged records, integers little-endian:

    f <u32 length><name>            the snapshot the diff starts from
    t <u32 length><name>            the snapshot the diff ends at
    s <u64 size>                    the image's size at the end snapshot
    w <u64 offset><u64 length><data>  bytes written
    z <u64 offset><u64 length>      a range zeroed (discarded)
    e                               the end

Reading turns the records into 512 KiB blocks; writing builds a stream from blocks.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from backends.errors import BackendError
from ebsemu.model import BLOCK_SIZE, ZERO_BLOCK

HEADER = b"rbd diff v1\n"

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_EXTENT = struct.Struct("<QQ")
READ_CHUNK = 1 << 20  # bytes asked of the stream at a time

Read = Callable[[int], bytes]  # up to n more bytes of a stream; b"" at its end


@dataclass
class DiffStats:
    """What one diff stream held: its data and zero extents and the bytes of data."""

    data_extents: int = 0
    zero_extents: int = 0
    data_bytes: int = 0


@dataclass(frozen=True)
class Extent:
    offset: int
    length: int
    data: memoryview | None  # None: the range reads as zeros


def parse_extents(read: Read, stats: DiffStats) -> Iterator[Extent]:
    """The 'w' and 'z' records of a v1 diff stream, in stream order. ``read(n)`` gives up to
    n more bytes of the stream (b"" at its end): a data record is read and yielded in pieces
    of at most one block, so memory stays bounded whatever the stream's size."""
    source = _Source(read)
    if source.take(len(HEADER), "header") != HEADER:
        raise BackendError("rbd export-diff wrote no 'rbd diff v1' header")
    while not source.at_end():
        tag = source.take(1, "record")
        if tag == b"e":
            return
        if tag in (b"f", b"t"):
            (length,) = _U32.unpack(source.take(_U32.size, "snapshot name"))
            source.take(length, "snapshot name")
        elif tag == b"s":
            source.take(_U64.size, "size record")
        elif tag in (b"w", b"z"):
            offset, length = _EXTENT.unpack(source.take(_EXTENT.size, "extent record"))
            if tag == b"w":
                stats.data_extents += 1
                stats.data_bytes += length
                yield from _data_pieces(source, offset, length)
            else:
                stats.zero_extents += 1
                yield Extent(offset, length, None)
        else:
            raise BackendError(
                f"rbd diff stream holds an unknown record {tag!r} at byte {source.position - 1}"
            )
    raise BackendError("rbd diff stream ends without its 'e' record")


def _data_pieces(source: _Source, offset: int, length: int) -> Iterator[Extent]:
    """A data record's bytes as extents that end on block boundaries (the last one excepted),
    so a record covering whole blocks still does piece by piece."""
    end = offset + length
    while offset < end:
        take = min(BLOCK_SIZE - offset % BLOCK_SIZE, end - offset)
        yield Extent(offset, take, memoryview(source.take(take, "data record")))
        offset += take


class _Source:
    """Exact reads from a stream read in chunks of at least READ_CHUNK bytes."""

    def __init__(self, read: Read) -> None:
        self._read = read
        self._buffer = bytearray()
        self._start = 0  # bytes of the buffer already taken
        self.position = 0  # bytes of the stream taken

    def at_end(self) -> bool:
        return not self._fill(1)

    def take(self, count: int, what: str) -> bytes:
        if not self._fill(count):
            if what == "header":
                raise BackendError("rbd export-diff wrote no 'rbd diff v1' header")
            raise BackendError(f"rbd diff stream ends inside a {what}")
        data = bytes(self._buffer[self._start : self._start + count])
        self._start += count
        self.position += count
        return data

    def _fill(self, count: int) -> bool:
        """Whether ``count`` more bytes are buffered, reading as needed."""
        while len(self._buffer) - self._start < count:
            if self._start:
                del self._buffer[: self._start]
                self._start = 0
            chunk = self._read(max(READ_CHUNK, count - len(self._buffer)))
            if not chunk:
                return False
            self._buffer += chunk
        return True


def diff_blocks(
    extents: Iterable[Extent], size_bytes: int, *, whole_blocks: bool
) -> Iterator[tuple[int, bytes]]:
    """(block index, 512 KiB) for every block the extents touch, zero blocks included.

    With ``whole_blocks`` every extent must cover whole blocks (a diff from a base snapshot:
    a block partly covered would need the base's bytes); otherwise a block's uncovered bytes
    read as zeros (a diff from nothing, i.e. the whole image)."""
    pending: dict[int, bytearray] = {}
    for extent in extents:
        end = min(extent.offset + extent.length, size_bytes)
        if whole_blocks and (extent.offset % BLOCK_SIZE or (end % BLOCK_SIZE and end < size_bytes)):
            raise BackendError(
                f"rbd diff extent {extent.offset}+{extent.length} does not cover whole "
                f"{BLOCK_SIZE}-byte blocks (the image's object size must be a multiple)"
            )
        offset = extent.offset
        while offset < end:
            index = offset // BLOCK_SIZE
            within = offset - index * BLOCK_SIZE
            take = min(BLOCK_SIZE - within, end - offset)
            if within == 0 and take == BLOCK_SIZE and index not in pending:
                data = extent.data
                chunk = ZERO_BLOCK if data is None else bytes(data[offset - extent.offset :][:take])
                yield from _flush_before(pending, index)
                yield index, chunk
            else:
                block = pending.setdefault(index, bytearray(BLOCK_SIZE))
                if extent.data is not None:
                    start = offset - extent.offset
                    block[within : within + take] = extent.data[start : start + take]
                else:
                    block[within : within + take] = bytes(take)
            offset += take
    yield from _flush_before(pending, None)


def _flush_before(pending: dict[int, bytearray], index: int | None) -> Iterator[tuple[int, bytes]]:
    """Yield (and forget) the partly built blocks before ``index`` (all when None)."""
    for done in sorted(i for i in pending if index is None or i < index):
        yield done, bytes(pending.pop(done))


def import_stream(runs: Iterable[tuple[int, list[bytes]]]) -> bytes:
    """A v1 diff stream writing each run (first block index, consecutive blocks); a run of
    all-zero blocks becomes one zero record, so it stays (or becomes) unallocated."""
    parts = [HEADER]
    for first, blocks in runs:
        offset, length = first * BLOCK_SIZE, len(blocks) * BLOCK_SIZE
        if all(block == ZERO_BLOCK for block in blocks):
            parts += [b"z", _EXTENT.pack(offset, length)]
        else:
            parts += [b"w", _EXTENT.pack(offset, length), *blocks]
    parts.append(b"e")
    return b"".join(parts)
