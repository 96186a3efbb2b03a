"""The remote-file backend's read side: a frozen view streamed in block ranges, and the
host's data map (which ranges of a file hold data) parsed from ``xfs_io`` output."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from ebsemu.model import BLOCK_SIZE, ZERO_BLOCK

TRANSFER_BLOCKS = 64  # 32 MiB per read or write command


def data_block_ranges(seek_map: str, size: int) -> list[tuple[int, int]]:
    """[first, end) block ranges holding data, from ``xfs_io -c 'seek -a -r 0'`` output
    (``DATA <offset>`` / ``HOLE <offset>`` lines, in offset order)."""
    marks: list[tuple[str, int]] = []
    for line in seek_map.splitlines():
        words = line.split()
        if len(words) == 2 and words[0] in ("DATA", "HOLE") and words[1].isdigit():
            marks.append((words[0], int(words[1])))
    ranges: list[tuple[int, int]] = []
    for number, (kind, offset) in enumerate(marks):
        if kind != "DATA":
            continue
        end = marks[number + 1][1] if number + 1 < len(marks) else size
        first, stop = offset // BLOCK_SIZE, -(-min(end, size) // BLOCK_SIZE)
        if ranges and first <= ranges[-1][1]:
            ranges[-1] = (ranges[-1][0], max(stop, ranges[-1][1]))
        elif first < stop:
            ranges.append((first, stop))
    return ranges


class RemoteFileView:
    """A frozen view read ``TRANSFER_BLOCKS`` blocks at a time (one host command each), only
    over its data ranges; all-zero blocks are skipped."""

    def __init__(
        self, read: Callable[[int, int], bytes], size_bytes: int, data_blocks: list[tuple[int, int]]
    ) -> None:
        self._read = read  # (first block, count) -> the bytes of those blocks
        self._size = size_bytes
        self._data_blocks = data_blocks  # [first, end) block ranges that may hold data

    @property
    def size_bytes(self) -> int:
        return self._size

    def iter_blocks(self, start_index: int = 0) -> Iterator[tuple[int, bytes]]:
        if start_index < 0:
            raise ValueError(f"negative block index {start_index}")
        for range_first, range_end in self._data_blocks:
            for first in range(max(range_first, start_index), range_end, TRANSFER_BLOCKS):
                count = min(TRANSFER_BLOCKS, range_end - first)
                data = self._read(first, count)
                view = memoryview(data)
                for offset in range(0, len(data), BLOCK_SIZE):
                    block = view[offset : offset + BLOCK_SIZE]
                    if block != ZERO_BLOCK:
                        yield first + offset // BLOCK_SIZE, bytes(block)

    def close(self) -> None:
        pass  # nothing stays open between commands
