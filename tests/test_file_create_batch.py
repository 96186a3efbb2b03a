"""Creates queued together in the file backend run as one batch: each caller gets its own
outcome, and a volume appears under its own name only complete."""

from __future__ import annotations

import asyncio
import errno
import json
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from backends import sparse
from backends.batching import GroupRunner
from backends.errors import BackendError
from backends.file import FileStorage, _Create
from ebsemu.model import GIB


def _volume_files(root: Path, volume_id: str) -> dict[str, object]:
    directory = root / "volumes" / volume_id
    return {
        "layout": json.loads((directory / "volume.json").read_text()),
        "segment": os.stat(directory / "seg-0000").st_size,
    }


def test_concurrent_creates_share_batches_and_each_is_complete(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path, segment_bytes=64 * GIB)
    sizes = {f"vol-{i:04d}": (i % 3 + 1) * GIB for i in range(24)}

    async def go() -> None:
        await storage.check_setup()
        await asyncio.gather(*(storage.create(v, size) for v, size in sizes.items()))

    asyncio.run(go())
    for volume_id, size in sizes.items():
        assert _volume_files(tmp_path, volume_id) == {
            "layout": {"layout_version": 1, "segment_bytes": 64 * GIB, "size_bytes": size},
            "segment": size,
        }
    leftovers = [e for e in os.listdir(tmp_path / "volumes") if e.startswith(".")]
    assert leftovers == []
    assert asyncio.run(storage.list_volumes()) == sorted(sizes)


def test_a_failing_create_fails_only_its_own_caller(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path, segment_bytes=64 * GIB)

    async def go() -> list[BaseException | None]:
        await storage.check_setup()
        await storage.create("vol-taken", 2 * GIB)
        outcomes = await asyncio.gather(
            storage.create("vol-a", GIB),
            storage.create("vol-taken", GIB),  # exists with another size
            storage.create("bad/id", GIB),
            storage.create("vol-b", GIB),
            storage.create("vol-b", GIB),  # twice in one batch: both succeed, one volume
            return_exceptions=True,
        )
        return list(outcomes)

    outcomes = asyncio.run(go())
    assert outcomes[0] is None and outcomes[3] is None and outcomes[4] is None
    assert isinstance(outcomes[1], BackendError) and "exists with" in str(outcomes[1])
    assert isinstance(outcomes[2], BackendError) and "invalid volume" in str(outcomes[2])
    assert asyncio.run(storage.list_volumes()) == ["vol-a", "vol-b", "vol-taken"]
    assert _volume_files(tmp_path, "vol-taken")["segment"] == 2 * GIB


def test_a_batch_is_made_durable_by_one_syncfs_not_an_fsync_per_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each fsync costs a cache flush on most disks: a batch of creates syncs its filesystem
    once before the renames, then fsyncs the volumes directory once after them."""
    storage = FileStorage(tmp_path, segment_bytes=64 * GIB)
    asyncio.run(storage.check_setup())
    calls: list[str] = []
    real_fsync, real_sync = os.fsync, sparse.sync_filesystem
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(
        sparse, "sync_filesystem", lambda path: (calls.append("syncfs"), real_sync(path))[1]
    )
    results = storage._create_batch([_Create(f"vol-{i:04d}", GIB, None) for i in range(24)])

    assert results == [None] * 24
    assert calls == ["syncfs", "fsync"]
    assert asyncio.run(storage.list_volumes()) == [f"vol-{i:04d}" for i in range(24)]


def test_a_failed_syncfs_fails_the_batch_and_leaves_no_volume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = FileStorage(tmp_path, segment_bytes=64 * GIB)
    asyncio.run(storage.check_setup())

    def broken(path: Path) -> None:
        raise OSError(errno.EIO, "syncfs: Input/output error")

    monkeypatch.setattr(sparse, "sync_filesystem", broken)
    results = storage._create_batch([_Create(f"vol-{i}", GIB, None) for i in range(3)])

    assert all(isinstance(r, BackendError) and "Input/output" in str(r) for r in results)
    assert asyncio.run(storage.list_volumes()) == []
    assert os.listdir(tmp_path / "volumes") == []


def test_group_runner_batches_what_queues_while_a_batch_runs() -> None:
    batches: list[list[int]] = []

    def run(items: Sequence[int]) -> list[BaseException | None]:
        batches.append(list(items))
        return [ValueError(f"odd {i}") if i % 2 else None for i in items]

    runner: GroupRunner[int] = GroupRunner(run)

    async def go() -> list[BaseException | None]:
        return list(
            await asyncio.gather(*(runner.run(i) for i in range(6)), return_exceptions=True)
        )

    outcomes = asyncio.run(go())
    assert [type(o).__name__ for o in outcomes] == ["NoneType", "ValueError"] * 3
    assert sorted(i for batch in batches for i in batch) == list(range(6))
    assert batches == [[0, 1, 2, 3, 4, 5]]  # queued in one turn of the loop: one batch


def test_group_runner_reports_a_broken_batch_to_every_caller() -> None:
    def run(items: Sequence[int]) -> list[BaseException | None]:
        raise RuntimeError("broken")

    runner: GroupRunner[int] = GroupRunner(run)

    async def go() -> list[BaseException | None]:
        return list(
            await asyncio.gather(*(runner.run(i) for i in range(3)), return_exceptions=True)
        )

    outcomes = asyncio.run(go())
    assert [str(o) for o in outcomes] == ["broken"] * 3
    assert all(isinstance(o, RuntimeError) for o in outcomes)
