"""How a capture reads a batch: two threads take blocks from the source one at a time, and the
batch comes back in block order; when reading fails, no thread is still reading the source
once the failure reaches the capture (which then closes the source)."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest

from ebsemu.service import snapshot_data
from ebsemu.service.snapshot_data import _read_batch


class Source:
    """Blocks 0, 1, 2, … of a view; reading block ``fail_at`` fails, and the read after it is
    slow. Unlike a generator, it goes on reading after a failure."""

    def __init__(self, count: int, fail_at: int | None = None) -> None:
        self.count = count
        self.fail_at = fail_at
        self.next_index = 0
        self.reading = threading.Event()  # set while a read is under way

    def __iter__(self) -> Source:
        return self

    def __next__(self) -> tuple[int, bytes]:
        index = self.next_index
        if index >= self.count:
            raise StopIteration
        self.next_index += 1
        self.reading.set()
        try:
            if index == self.fail_at:
                raise OSError(5, "Input/output error")
            if self.fail_at is not None and index == self.fail_at + 1:
                time.sleep(0.5)
            return index, index.to_bytes(8, "big") * 512
        finally:
            self.reading.clear()


def test_a_batch_holds_the_next_blocks_in_order_with_their_digests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(snapshot_data, "BATCH_BLOCKS", 8)
    source = Source(20)

    batches = [_read_batch(source) for _ in range(4)]

    assert [[index for index, _, _ in batch] for batch in batches] == [
        list(range(8)),
        list(range(8, 16)),
        list(range(16, 20)),
        [],
    ]
    assert all(
        digest == hashlib.sha256(data).digest() for batch in batches for _, digest, data in batch
    )


def test_a_failed_read_reaches_the_caller_only_once_no_thread_reads_the_source(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(snapshot_data, "BATCH_BLOCKS", 8)
    for _ in range(5):  # which thread meets the failure is up to them: try both ways
        source = Source(20, fail_at=3)
        with pytest.raises(OSError, match="Input/output error"):
            _read_batch(source)
        assert not source.reading.is_set()  # the source may be closed now
