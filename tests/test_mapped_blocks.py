"""Reading a frozen file's blocks in place (backends.mapped_blocks): the same bytes as pread,
still valid once the reader has moved on, a read error raised as OSError instead of the SIGBUS
that touching the page would raise, and pread where the kernel cannot populate a map."""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends import mapped_blocks
from backends.mapped_blocks import BlockReader, is_zero_block
from ebsemu.model import BLOCK_SIZE, ZERO_BLOCK

BLOCKS = 7


def _block(index: int) -> bytes:
    return index.to_bytes(4, "big") * (BLOCK_SIZE // 4)


@pytest.fixture
def frozen(tmp_path: Path) -> Iterator[int]:
    """A file of BLOCKS distinct blocks, open for reading."""
    path = tmp_path / "segment"
    path.write_bytes(b"".join(_block(i) for i in range(BLOCKS)))
    fd = os.open(path, os.O_RDONLY)
    try:
        yield fd
    finally:
        os.close(fd)


@pytest.fixture
def small_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mapped_blocks, "WINDOW_BYTES", 2 * BLOCK_SIZE)


@pytest.mark.usefixtures("small_windows")
def test_every_block_is_read_in_place_with_the_bytes_pread_reads(frozen: int) -> None:
    reader = BlockReader(frozen, BLOCKS * BLOCK_SIZE)

    blocks = [reader.read(i * BLOCK_SIZE) for i in range(BLOCKS)]

    assert reader.mapped
    assert all(isinstance(data, memoryview) for data in blocks)
    assert [bytes(data) for data in blocks] == [
        os.pread(frozen, BLOCK_SIZE, i * BLOCK_SIZE) for i in range(BLOCKS)
    ]


@pytest.mark.usefixtures("small_windows")
def test_a_block_stays_readable_once_the_reader_moved_on_and_the_file_is_closed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "segment"
    path.write_bytes(b"".join(_block(i) for i in range(BLOCKS)))
    fd = os.open(path, os.O_RDONLY)
    reader = BlockReader(fd, BLOCKS * BLOCK_SIZE)
    first = reader.read(0)
    last = reader.read((BLOCKS - 1) * BLOCK_SIZE)  # three windows further on
    del reader
    os.close(fd)

    assert bytes(first) == _block(0)
    assert bytes(last) == _block(BLOCKS - 1)


def test_a_block_past_the_end_of_the_file_comes_back_short(frozen: int) -> None:
    reader = BlockReader(frozen, (BLOCKS + 1) * BLOCK_SIZE)  # one more than the file holds

    assert len(reader.read(BLOCKS * BLOCK_SIZE)) == 0
    assert bytes(reader.read(0)) == _block(0)


def test_a_page_that_cannot_be_read_raises_oserror_instead_of_ending_the_process(
    tmp_path: Path,
) -> None:
    """A page past the end of the file is what a page the disk cannot read looks like to a
    map: touching it raises SIGBUS. The reader must raise OSError (EIO) instead; run in a
    child process, so that a SIGBUS shows as its exit status instead of ending the tests."""
    path = tmp_path / "segment"
    path.write_bytes(b"".join(_block(i) for i in range(BLOCKS)))
    script = textwrap.dedent(
        f"""
        import os
        from backends.mapped_blocks import BlockReader
        fd = os.open({str(path)!r}, os.O_RDONLY)
        reader = BlockReader(fd, {BLOCKS * BLOCK_SIZE})
        assert reader.read(0)[0] == 0
        os.truncate({str(path)!r}, {BLOCK_SIZE})  # the map still spans the old length
        try:
            data = reader.read({3 * BLOCK_SIZE})
        except OSError as exc:
            print("OSError", exc.errno)
        else:
            print("read", bytes(data)[:4].hex())
        """
    )
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, f"exit status {done.returncode}: {done.stderr[-2000:]}"
    assert done.stdout.split() == ["OSError", str(errno.EIO)]


def test_where_the_kernel_cannot_populate_a_map_blocks_are_read_with_pread(
    frozen: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(address: int, length: int, advice: int) -> int:
        ctypes.set_errno(errno.EINVAL)  # a kernel before 5.14 knows no MADV_POPULATE_READ
        return -1

    monkeypatch.setattr(mapped_blocks, "_libc_madvise", lambda: refused)
    reader = BlockReader(frozen, BLOCKS * BLOCK_SIZE)

    first = reader.read(0)
    second = reader.read(BLOCK_SIZE)

    assert not reader.mapped
    assert isinstance(first, bytes) and isinstance(second, bytes)
    assert (first, second) == (_block(0), _block(1))


def test_another_failure_to_populate_is_raised(
    frozen: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    def out_of_memory(address: int, length: int, advice: int) -> int:
        ctypes.set_errno(errno.ENOMEM)
        return -1

    monkeypatch.setattr(mapped_blocks, "_libc_madvise", lambda: out_of_memory)
    reader = BlockReader(frozen, BLOCKS * BLOCK_SIZE)

    with pytest.raises(OSError) as raised:
        reader.read(0)
    assert raised.value.errno == errno.ENOMEM
    assert reader.mapped  # not a lack of support: the next read tries the map again


@pytest.mark.parametrize(
    ("data", "zero"),
    [
        (memoryview(bytes(BLOCK_SIZE)), True),
        (memoryview(bytes(BLOCK_SIZE - 1) + b"\x01"), False),  # zeros up to the last byte
        (memoryview(b"\x01" + bytes(BLOCK_SIZE - 1)), False),
        (ZERO_BLOCK, True),
        (bytes(BLOCK_SIZE - 1) + b"\x01", False),
    ],
    ids=["zero-view", "last-byte-view", "first-byte-view", "zero-bytes", "last-byte-bytes"],
)
def test_is_zero_block_answers_as_a_comparison_with_zeros(
    data: bytes | memoryview, zero: bool
) -> None:
    assert is_zero_block(data) is zero
