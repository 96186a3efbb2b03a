"""The remote-file storage backend, its commands run for real by a local runner (the SSH path
is covered by tests/test_storage_hosts_ssh.py): sparse volumes, point-in-time views, streamed
reads that skip holes (with and without the host's xfs_io), restores that keep holes, and the
setup check naming a missing tool with its package."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from backends.errors import BackendError, SetupError
from backends.remote_file import RemoteFileStorage
from backends.remote_file_view import data_block_ranges
from hostcmds import LocalRunner, load_templates

BLOCK = 512 * 1024


def _storage(root: Path, **overrides: str) -> RemoteFileStorage:
    templates = load_templates({"remote-file": overrides} if overrides else None)
    return RemoteFileStorage.from_options(
        {"path": str(root)}, runner=LocalRunner(), templates=templates
    )


def _write(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def _read_view(storage: RemoteFileStorage, view_id: str) -> list[tuple[int, bytes]]:
    view = storage.open_view(view_id)
    try:
        return list(view.iter_blocks())
    finally:
        view.close()


def test_data_block_ranges_parse_the_seek_map() -> None:
    text = "Whence\tResult\nDATA\t0\nHOLE\t4096\nDATA\t157290496\nHOLE\t157294592\n"
    assert data_block_ranges(text, 1024 * BLOCK) == [(0, 1), (300, 301)]
    assert data_block_ranges("Whence\tResult\nHOLE\t0\n", 8 * BLOCK) == []
    assert data_block_ranges("Whence\tResult\nDATA\t0\n", 8 * BLOCK) == [(0, 8)]


@pytest.mark.parametrize("data_map", ["xfs_io", "absent"])
def test_volume_view_and_restore_round_trip_keeps_holes(tmp_path: Path, data_map: str) -> None:
    overrides = {}
    if data_map == "absent":  # a host without xfs_io: the whole view is read
        overrides["dataMapCmd"] = "/nonexistent/xfs_io -r <path>"
    storage = _storage(tmp_path / "root", **overrides)
    volumes = tmp_path / "root" / "volumes"

    async def control() -> None:
        await storage.check_setup()
        await storage.create("vol-1", 64 * BLOCK)
        await storage.create("vol-1", 64 * BLOCK)  # idempotent
        with pytest.raises(BackendError, match="exists with"):
            await storage.create("vol-1", 32 * BLOCK)

    asyncio.run(control())
    assert (volumes / "vol-1").stat().st_size == 64 * BLOCK
    assert (volumes / "vol-1").stat().st_blocks == 0
    first, partial = os.urandom(BLOCK), os.urandom(10)
    _write(volumes / "vol-1", 3 * BLOCK, first)
    _write(volumes / "vol-1", 40 * BLOCK + 7, partial)
    _write(volumes / "vol-1", 50 * BLOCK, bytes(BLOCK))  # allocated zeros

    asyncio.run(storage.freeze("vol-1", "snap-1"))
    _write(volumes / "vol-1", 3 * BLOCK, os.urandom(BLOCK))  # after the freeze: not in the view
    blocks = _read_view(storage, "snap-1")
    assert [index for index, _ in blocks] == [3, 40]
    assert blocks[0][1] == first
    assert blocks[1][1] == bytes(7) + partial + bytes(BLOCK - 17)

    asyncio.run(storage.create("vol-2", 64 * BLOCK))
    _write(volumes / "vol-2", 9 * BLOCK, os.urandom(BLOCK))  # to be zeroed by the restore
    storage.write_blocks("vol-2", [*blocks, (9, bytes(BLOCK))])
    expected = bytearray(64 * BLOCK)
    expected[3 * BLOCK : 4 * BLOCK] = first
    expected[40 * BLOCK + 7 : 40 * BLOCK + 17] = partial
    assert (volumes / "vol-2").read_bytes() == expected
    assert (volumes / "vol-2").stat().st_blocks * 512 == 2 * BLOCK  # block 9 is a hole again

    async def cleanup() -> tuple[list[str], list[str]]:
        assert await storage.list_volumes() == ["vol-1", "vol-2"]
        assert await storage.list_views() == ["snap-1"]
        await storage.drop_view("snap-1")
        for volume_id in ("vol-1", "vol-2", "vol-2"):  # delete is idempotent
            await storage.delete(volume_id)
        return await storage.list_volumes(), await storage.list_views()

    assert asyncio.run(cleanup()) == ([], [])
    assert storage.free_bytes() > 0


def test_writes_outside_the_volume_are_refused(tmp_path: Path) -> None:
    storage = _storage(tmp_path / "root")
    asyncio.run(storage.create("vol-1", 4 * BLOCK))
    with pytest.raises(BackendError, match="does not fit"):
        storage.write_blocks("vol-1", [(4, os.urandom(BLOCK))])
    with pytest.raises(BackendError, match="no view"):
        storage.open_view("snap-none")


def test_setup_check_names_the_missing_tool_and_its_package(tmp_path: Path) -> None:
    storage = _storage(
        tmp_path / "root",
        punchCmd="/nonexistent/fallocate --punch-hole --offset <offset> --length <length> <path>",
    )
    with pytest.raises(
        SetupError, match=r"fallocate is not installed .*apt-get install util-linux"
    ):
        asyncio.run(storage.check_setup())
    leftovers = [p.name for d in ("volumes", "views") for p in (tmp_path / "root" / d).iterdir()]
    assert leftovers == []  # the probe files were removed


def test_setup_check_removes_staging_files_an_interrupted_call_left(tmp_path: Path) -> None:
    volumes = tmp_path / "root" / "volumes"
    volumes.mkdir(parents=True)
    (volumes / ".tmp-vol-1-0a1b2c3d").write_bytes(b"x")
    (volumes / "vol-2").write_bytes(b"")
    asyncio.run(_storage(tmp_path / "root").check_setup())
    assert sorted(p.name for p in volumes.iterdir()) == ["vol-2"]


def test_a_relative_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SetupError, match="absolute"):
        _storage(Path("relative/dir"))
