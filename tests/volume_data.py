"""Bytes in a test server's volumes, written and read as a guest would, whatever its storage
backend: the file backend's segment file, or the rbd backend's image (qemu-io through librbd to
write, ``rbd export`` to read)."""

from __future__ import annotations

import configparser
import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ebsemu.model import BLOCK_SIZE
from tests.api_support import volume_segment
from tests.server import ServerProcess

TIMEOUT = 120.0


def write_blocks(server: ServerProcess, volume_id: str, blocks: dict[int, bytes]) -> None:
    """Write whole 512 KiB blocks into the volume."""
    assert all(len(data) == BLOCK_SIZE for data in blocks.values())
    if server.backend == "rbd":
        _write_image(server, volume_id, blocks)
        return
    fd = os.open(volume_segment(server.data_dir, volume_id), os.O_WRONLY)
    try:
        for index, data in blocks.items():
            os.pwrite(fd, data, index * BLOCK_SIZE)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_blocks(server: ServerProcess, volume_id: str, indexes: list[int]) -> dict[int, bytes]:
    """The volume's blocks at ``indexes``."""
    with volume_file(server, volume_id) as path:
        return _read(path, indexes)


@contextlib.contextmanager
def volume_file(server: ServerProcess, volume_id: str) -> Iterator[Path]:
    """A file holding the volume's bytes (its first segment file; a copy of an rbd image)."""
    if server.backend != "rbd":
        yield volume_segment(server.data_dir, volume_id)
        return
    with tempfile.TemporaryDirectory(prefix="ebsemu-rbd-read-") as work:
        out = Path(work) / "image.raw"
        _rbd(server, "export", "--no-progress", _spec(server, volume_id), str(out))
        yield out


def _read(path: Path, indexes: list[int]) -> dict[int, bytes]:
    with path.open("rb") as handle:
        found = {}
        for index in indexes:
            handle.seek(index * BLOCK_SIZE)
            found[index] = handle.read(BLOCK_SIZE)
        return found


def _storage(server: ServerProcess) -> configparser.SectionProxy:
    parser = configparser.ConfigParser()
    parser.read_string(server.storage_config)
    return parser["storage"]


def _spec(server: ServerProcess, volume_id: str) -> str:
    storage = _storage(server)
    return f"{storage['pool']}/{storage.get('image_prefix', '')}{volume_id}"


def _rbd(server: ServerProcess, *args: str) -> None:
    conf = _storage(server)["conf"]
    subprocess.run(["rbd", "--conf", conf, *args], check=True, capture_output=True,
                   timeout=TIMEOUT)  # fmt: skip


def _write_image(server: ServerProcess, volume_id: str, blocks: dict[int, bytes]) -> None:
    """One qemu-io run writes every block through librbd."""
    image = f"rbd:{_spec(server, volume_id)}:conf={_storage(server)['conf']}"
    with tempfile.TemporaryDirectory(prefix="ebsemu-rbd-write-") as work:
        commands = []
        for index, data in blocks.items():
            path = Path(work) / f"block-{index}"
            path.write_bytes(data)
            commands += ["-c", f"write -s {path} {index * BLOCK_SIZE} {BLOCK_SIZE}"]
        subprocess.run(["qemu-io", "-f", "raw", *commands, image], check=True,
                       capture_output=True, timeout=TIMEOUT)  # fmt: skip
