"""The file backend's BLAKE3 fingerprints on a filesystem without reflink (ext4 here): the first
freeze of a volume records them, the next freeze compares blocks by them and finds the same
changes as by SHA-256; fingerprints that do not name the snapshot's blocks, or do not parse, are
not trusted; a volume keeps only those of its last two freezes, and loses them with itself."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from pathlib import Path

import blake3
import pytest

from backends import sparse
from backends.base import BlockDigests, SeededChangesSource
from backends.file import FileStorage
from backends.file_fingerprints import Fingerprints
from ebsemu.model import BLOCK_SIZE

ZEROS = bytes(BLOCK_SIZE)
VOLUME = "vol-0123456789abcdef0"
FIRST, SECOND, THIRD = "snap-0000000000000000a", "snap-0000000000000000b", "snap-0000000000000000c"


@pytest.fixture
def storage(tmp_path: Path) -> FileStorage:
    """Four blocks a segment file: a 16-block volume spans four segments."""
    storage = FileStorage(tmp_path, segment_bytes=4 * BLOCK_SIZE)
    if not asyncio.run(storage.freezes_by_copy()):
        pytest.skip("needs a test directory on a filesystem without reflink (ext4, tmpfs)")
    return storage


def _digests(blocks: dict[int, bytes]) -> dict[int, bytes]:
    return {index: hashlib.sha256(data).digest() for index, data in blocks.items()}


def _first_snapshot(storage: FileStorage) -> dict[int, bytes]:
    """A 16-block volume written and frozen a first time; the blocks it held."""
    held = {index: os.urandom(BLOCK_SIZE) for index in (0, 3, 5, 9, 14)}
    asyncio.run(storage.create(VOLUME, 16 * BLOCK_SIZE))
    storage.write_blocks(VOLUME, [*held.items(), (7, ZEROS)])  # zeros are no data
    asyncio.run(storage.freeze(VOLUME, FIRST))
    return held


def _change(storage: FileStorage, root: Path) -> dict[int, bytes]:
    """Four changes (two new blocks, one zeroed, one punched) and a rewrite of the same bytes."""
    changes = {3: os.urandom(BLOCK_SIZE), 5: ZEROS, 12: os.urandom(BLOCK_SIZE), 9: ZEROS}
    storage.write_blocks(VOLUME, [(3, changes[3]), (5, ZEROS), (12, changes[12])])
    segment = os.open(root / "volumes" / VOLUME / "seg-0002", os.O_WRONLY)
    try:
        sparse.punch_hole(segment, 1 * BLOCK_SIZE, BLOCK_SIZE)  # block 9
    finally:
        os.close(segment)
    return changes


def _whole_view(storage: FileStorage, view_id: str) -> dict[int, bytes]:
    view = storage.open_view(view_id)
    try:
        return dict(view.iter_blocks(0))
    finally:
        view.close()


def _freeze_second(
    storage: FileStorage, held: dict[int, bytes], caplog: pytest.LogCaptureFixture
) -> str:
    """Freeze the volume as SECOND against FIRST, which held ``held``; what it compared by."""
    caplog.set_level(logging.INFO, logger="backends.file")
    caplog.clear()
    assert asyncio.run(storage.freeze_changes(VOLUME, SECOND, BlockDigests(FIRST, _digests(held))))
    (compared_by,) = _compared_by(caplog)
    return compared_by


def _changed_blocks(storage: FileStorage, view_id: str) -> list[tuple[int, bytes]]:
    view = storage.open_view(view_id)
    try:
        assert isinstance(view, SeededChangesSource)
        return list(view.changed_blocks())
    finally:
        view.close()


def _compared_by(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage().split("compared by ")[1].split(")")[0]
        for record in caplog.records
        if "compared by" in record.getMessage()
    ]


def test_the_first_freeze_records_them_and_the_next_compares_by_them(
    storage: FileStorage, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    held = _first_snapshot(storage)
    recorded = Fingerprints(tmp_path / "fingerprints").load(VOLUME, FIRST)
    assert recorded == {index: blake3.blake3(data).digest() for index, data in held.items()}
    assert _whole_view(storage, FIRST) == held  # a whole copy, as without fingerprints

    changes = _change(storage, tmp_path)
    assert _freeze_second(storage, held, caplog) == "BLAKE3"
    assert _changed_blocks(storage, SECOND) == sorted(changes.items())
    now = {**held, **changes}
    expected = {i: blake3.blake3(data).digest() for i, data in now.items() if data != ZEROS}
    assert Fingerprints(tmp_path / "fingerprints").load(VOLUME, SECOND) == expected


def test_a_block_is_unchanged_where_its_fingerprint_says_so(
    storage: FileStorage, tmp_path: Path
) -> None:
    """The comparison is by the recorded fingerprints, not by SHA-256: a fingerprint recorded
    for block 3's new bytes makes the freeze take block 3 as unchanged."""
    held = _first_snapshot(storage)
    changes = _change(storage, tmp_path)
    fingerprints = Fingerprints(tmp_path / "fingerprints")
    recorded = fingerprints.load(VOLUME, FIRST)
    assert recorded is not None
    fingerprints.save(VOLUME, FIRST, {**recorded, 3: blake3.blake3(changes[3]).digest()})

    assert asyncio.run(storage.freeze_changes(VOLUME, SECOND, BlockDigests(FIRST, _digests(held))))
    assert [index for index, _ in _changed_blocks(storage, SECOND)] == [5, 9, 12]


@pytest.mark.parametrize(
    "damage",
    ["another-block-set", "torn", "not-fingerprints"],
)
def test_fingerprints_that_cannot_be_trusted_leave_the_comparison_to_sha256(
    storage: FileStorage, tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    held = _first_snapshot(storage)
    path = tmp_path / "fingerprints" / VOLUME / FIRST
    if damage == "another-block-set":  # block 14 missing: not the snapshot's non-zero blocks
        fingerprints = Fingerprints(tmp_path / "fingerprints")
        recorded = fingerprints.load(VOLUME, FIRST)
        assert recorded is not None
        fingerprints.save(VOLUME, FIRST, {i: mark for i, mark in recorded.items() if i != 14})
    elif damage == "torn":
        path.write_bytes(path.read_bytes()[:-5])
    else:
        path.write_bytes(os.urandom(7 + 40 * 5))
    changes = _change(storage, tmp_path)
    assert _freeze_second(storage, held, caplog) == "SHA-256"
    assert _changed_blocks(storage, SECOND) == sorted(changes.items())


def test_a_volume_keeps_the_fingerprints_of_its_last_two_freezes_and_loses_them_with_itself(
    storage: FileStorage, tmp_path: Path
) -> None:
    held = _first_snapshot(storage)
    folder = tmp_path / "fingerprints" / VOLUME
    changes = _change(storage, tmp_path)
    asyncio.run(storage.freeze_changes(VOLUME, SECOND, BlockDigests(FIRST, _digests(held))))
    assert sorted(path.name for path in folder.iterdir()) == [FIRST, SECOND]

    now = {index: data for index, data in {**held, **changes}.items() if data != ZEROS}
    storage.write_blocks(VOLUME, [(1, os.urandom(BLOCK_SIZE))])
    asyncio.run(storage.freeze_changes(VOLUME, THIRD, BlockDigests(SECOND, _digests(now))))
    assert sorted(path.name for path in folder.iterdir()) == [SECOND, THIRD]

    asyncio.run(storage.delete(VOLUME))
    assert not folder.exists()


def test_fingerprints_that_cannot_be_recorded_do_not_fail_the_freeze(
    storage: FileStorage, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "fingerprints").write_bytes(b"")  # a file where their directory should be
    held = _first_snapshot(storage)
    assert "cannot record the block fingerprints of " + FIRST in caplog.text
    assert _whole_view(storage, FIRST) == held

    changes = _change(storage, tmp_path)
    assert _freeze_second(storage, held, caplog) == "SHA-256"
    assert _changed_blocks(storage, SECOND) == sorted(changes.items())


def test_the_fingerprints_are_of_the_bytes_the_view_holds_not_of_later_writes(
    storage: FileStorage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write reaching the volume after the freeze copied a block (a writer that was not
    quiesced) must not be taken as the snapshot's: the view's bytes are fingerprinted."""
    held = {index: os.urandom(BLOCK_SIZE) for index in (0, 6)}
    asyncio.run(storage.create(VOLUME, 16 * BLOCK_SIZE))
    storage.write_blocks(VOLUME, held.items())
    copy_range = sparse.copy_range

    def copy_then_write(src: int, dst: int, offset: int, length: int) -> None:
        copy_range(src, dst, offset, length)
        storage.write_blocks(VOLUME, [(0, os.urandom(BLOCK_SIZE))])  # the volume moves on

    monkeypatch.setattr(sparse, "copy_range", copy_then_write)
    asyncio.run(storage.freeze(VOLUME, FIRST))

    assert _whole_view(storage, FIRST) == held
    recorded = Fingerprints(tmp_path / "fingerprints").load(VOLUME, FIRST)
    assert recorded == {index: blake3.blake3(data).digest() for index, data in held.items()}
