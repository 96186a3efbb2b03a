"""The rbd diff v1 stream: parsing export-diff output into 512 KiB blocks and building
import-diff input (the real tools read and write these in tests/test_rbd_storage.py)."""

from __future__ import annotations

import io
import struct

import pytest

from backends.errors import BackendError
from backends.rbd_diff import (
    HEADER,
    READ_CHUNK,
    DiffStats,
    diff_blocks,
    import_stream,
    parse_extents,
)
from ebsemu.model import BLOCK_SIZE

ZERO = bytes(BLOCK_SIZE)


def _stream(*records: bytes) -> bytes:
    return HEADER + b"".join(records) + b"e"


def _w(offset: int, data: bytes) -> bytes:
    return b"w" + struct.pack("<QQ", offset, len(data)) + data


def _z(offset: int, length: int) -> bytes:
    return b"z" + struct.pack("<QQ", offset, length)


def test_snapshot_names_and_size_are_skipped_and_extents_counted() -> None:
    names = b"f" + struct.pack("<I", 2) + b"s1" + b"t" + struct.pack("<I", 2) + b"s2"
    size = b"s" + struct.pack("<Q", 4 * BLOCK_SIZE)
    data = b"\x01" * BLOCK_SIZE
    stats = DiffStats()
    stream = _stream(names, size, _w(BLOCK_SIZE, data), _z(2 * BLOCK_SIZE, BLOCK_SIZE))
    blocks = list(
        diff_blocks(
            parse_extents(io.BytesIO(stream).read, stats), 4 * BLOCK_SIZE, whole_blocks=True
        )
    )
    assert blocks == [(1, data), (2, ZERO)]
    assert (stats.data_extents, stats.zero_extents, stats.data_bytes) == (1, 1, BLOCK_SIZE)


def test_partial_extents_of_a_whole_image_fill_blocks_with_zeros() -> None:
    stream = _stream(_w(100, b"ab"), _w(BLOCK_SIZE - 1, b"cd"), _w(3 * BLOCK_SIZE, b"\x07" * 10))
    blocks = dict(
        diff_blocks(
            parse_extents(io.BytesIO(stream).read, DiffStats()), 4 * BLOCK_SIZE, whole_blocks=False
        )
    )
    assert sorted(blocks) == [0, 1, 3]
    assert blocks[0][100:102] == b"ab" and blocks[0][-1:] == b"c"
    assert blocks[1][:1] == b"d" and blocks[1][1:] == bytes(BLOCK_SIZE - 1)
    assert blocks[3][:10] == b"\x07" * 10


def test_a_change_not_covering_whole_blocks_is_refused() -> None:
    stream = _stream(_w(4096, b"x" * 4096))
    with pytest.raises(BackendError, match="whole"):
        list(
            diff_blocks(
                parse_extents(io.BytesIO(stream).read, DiffStats()),
                BLOCK_SIZE * 2,
                whole_blocks=True,
            )
        )


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        (b"not a diff", "header"),
        (HEADER + b"w" + struct.pack("<QQ", 0, 10) + b"abc", "inside a data record"),
        (HEADER + b"q", "unknown record"),
        (HEADER + _z(0, 10), "without its 'e' record"),
    ],
)
def test_damaged_streams_are_backend_errors(stream: bytes, message: str) -> None:
    with pytest.raises(BackendError, match=message):
        list(parse_extents(io.BytesIO(stream).read, DiffStats()))


def test_a_large_stream_is_parsed_as_it_is_read_in_pieces_of_one_block() -> None:
    """A snapshot's diff is as large as its data: it is never held whole."""
    blocks = 128  # 64 MiB in one data record
    stream = io.BytesIO(_stream(_w(0, b"\x05" * (blocks * BLOCK_SIZE))))
    asked: list[int] = []

    def read(count: int) -> bytes:
        asked.append(count)
        return stream.read(count)

    extents = parse_extents(read, DiffStats())
    first = next(extents)
    assert (first.offset, first.length) == (0, BLOCK_SIZE)
    assert stream.tell() <= 2 * READ_CHUNK and max(asked) <= READ_CHUNK
    rest = list(extents)
    assert [e.offset for e in rest] == [i * BLOCK_SIZE for i in range(1, blocks)]
    assert all(e.length == BLOCK_SIZE and e.data == b"\x05" * BLOCK_SIZE for e in rest)


def test_a_stream_delivered_a_few_bytes_at_a_time_parses_the_same() -> None:
    data = bytes(range(256)) * 8
    stream = _stream(_w(BLOCK_SIZE - 1000, data), _z(3 * BLOCK_SIZE, BLOCK_SIZE))
    whole = io.BytesIO(stream)
    trickle = io.BytesIO(stream)
    expected = dict(diff_blocks(parse_extents(whole.read, DiffStats()), 4 * BLOCK_SIZE,
                                whole_blocks=False))  # fmt: skip
    got = dict(diff_blocks(parse_extents(lambda n: trickle.read(min(n, 7)), DiffStats()),
                           4 * BLOCK_SIZE, whole_blocks=False))  # fmt: skip
    assert got == expected and sorted(got) == [0, 1, 3]
    assert got[0][-1000:] + got[1][: len(data) - 1000] == data


def test_import_stream_writes_data_runs_and_zeroes_zero_runs() -> None:
    data = [b"\x01" * BLOCK_SIZE, b"\x02" * BLOCK_SIZE]
    stream = import_stream([(3, data), (9, [ZERO, ZERO])])
    assert stream == _stream(_w(3 * BLOCK_SIZE, b"".join(data)), _z(9 * BLOCK_SIZE, 2 * BLOCK_SIZE))
