"""The ``remote-file`` storage backend: volumes as raw sparse files in a directory of a storage
host, driven only by plain commands (hostcmds/remote-file.ini) run through the host's runner,
so the host needs nothing but coreutils, findutils and util-linux and an SSH login.

Layout under ``path`` on the host::

    volumes/<volume id>     one raw sparse file of the volume's size
    views/<view id>         a frozen point-in-time copy of a volume (a pending snapshot)
    */.tmp-<id>-<hex>       staging files, renamed into place when complete

Create truncates a staging file to the volume's size and renames it into place, so a volume
file exists only whole. Freeze copies the volume with ``cp --reflink=auto --sparse=always``: a
reflink clone on XFS (reflink=1) and btrfs, elsewhere a copy that keeps holes (it takes as long
as copying the volume's data; ``copy_timeout`` bounds it). One file holds the whole volume, so
the host's filesystem must hold files of the largest volume size used (ext4: 16 TiB minus 4 KiB).

The data path streams through the runner, ``TRANSFER_BLOCKS`` 512 KiB blocks per command:
capture reads a view with ``dd`` to standard output (holes arrive as zeros and are skipped
here, so the block store gets exactly what the local file backend would give it); restore
writes each run of consecutive data blocks with ``dd`` from standard input (``conv=notrunc,fsync``)
and never writes a zero block: a run of them is punched back into a hole, so holes stay holes.
It runs in worker threads and hands each command to the event loop the control path runs on.

Free space (``free_bytes``, asked on the event loop, where no command can run) is the figure
``df`` gave at the last call that changed space, or at check_setup. A host that cannot be
reached raises HostUnavailable; a command that ran and failed, BackendError (CapacityError when
the host's filesystem is full).
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, TypeVar

from backends.errors import (
    BackendError,
    SetupError,
    command_failure,
)
from backends.loop_bridge import LoopBridge
from backends.options import Options
from backends.remote_file_view import TRANSFER_BLOCKS, RemoteFileView, data_block_ranges
from ebsemu.model import BLOCK_SIZE, ZERO_BLOCK
from hostcmds import (
    CommandNotFound,
    CommandResult,
    CommandRunner,
    CommandTemplates,
    HostCommandError,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

TOOL = "remote-file"
TEMPLATES = (
    "mkdirCmd",
    "createCmd",
    "renameCmd",
    "removeCmd",
    "sizeCmd",
    "listCmd",
    "freeCmd",
    "freezeCmd",
    "readCmd",
    "writeCmd",
    "punchCmd",
)
OPTIONS = ("path", "command_timeout", "copy_timeout")
MAP_TEMPLATE = "dataMapCmd"  # optional: without xfs_io, views are read whole
PACKAGES = {"find": "findutils", "fallocate": "util-linux", "xfs_io": "xfsprogs"}  # or coreutils
STAGING = ".tmp-"

_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_NO_SPACE = re.compile(r"no space left|disk quota exceeded|file too large", re.I)


def _check_id(name: str) -> str:
    if not _ID_PATTERN.fullmatch(name):
        raise BackendError(f"invalid volume or view id {name!r}")
    return name


def _check_size(size_bytes: int) -> None:
    if size_bytes <= 0 or size_bytes % BLOCK_SIZE:
        raise BackendError(f"volume size {size_bytes} is not a positive multiple of {BLOCK_SIZE}")


def backend_error(exc: HostCommandError, doing: str) -> BackendError:
    return command_failure(exc, doing, _NO_SPACE)


@dataclass(frozen=True)
class RemoteFileConfig:
    """``path``: the backend's directory on the host (absolute). ``command_timeout``: the limit
    of one command (one 32 MiB transfer included); ``copy_timeout``: of one freeze copy."""

    path: PurePosixPath
    command_timeout: float = 60.0
    copy_timeout: float = 3600.0

    def __post_init__(self) -> None:
        if not self.path.is_absolute() or ".." in self.path.parts:
            raise SetupError(f"remote-file path {str(self.path)!r} must be an absolute path")


class RemoteFileStorage:
    """StorageBackend of sparse files on a host reached through a command runner."""

    def __init__(
        self, runner: CommandRunner, templates: CommandTemplates, config: RemoteFileConfig
    ) -> None:
        templates.require(TOOL, TEMPLATES)
        self._runner = runner
        self._templates = templates
        self._config = config
        self._volumes = config.path / "volumes"
        self._views = config.path / "views"
        self._free_bytes: int | None = None
        self._dirs_made = False
        self._data_map = MAP_TEMPLATE in templates.keys(TOOL)
        self._bridge = LoopBridge("remote-file")

    @classmethod
    def from_options(
        cls, options: Mapping[str, str], *, runner: CommandRunner, templates: CommandTemplates
    ) -> RemoteFileStorage:
        opts = Options("storage", options)
        opts.refuse_unknown(OPTIONS)
        config = RemoteFileConfig(
            path=PurePosixPath(opts.text("path")),
            command_timeout=opts.number("command_timeout", RemoteFileConfig.command_timeout),
            copy_timeout=opts.number("copy_timeout", RemoteFileConfig.copy_timeout),
        )
        return cls(runner, templates, config)

    # -- control path -------------------------------------------------------------------------

    async def check_setup(self) -> None:
        """Make the directories, remove staging files, and run every command once on a probe
        file, so a missing tool or an unwritable directory shows now, not at the first volume."""
        try:
            await self._make_dirs()
            for directory in (self._volumes, self._views):
                for name in await self._list(directory, staging=True):
                    log.warning("removing leftover %s", directory / name)
                    await self._run("removeCmd", path=str(directory / name))
            await self._probe()
            await self._refresh_free()
        except CommandNotFound as exc:
            program = exc.argv[0] if exc.argv else "?"
            package = PACKAGES.get(PurePosixPath(program).name, "coreutils")
            raise SetupError(
                f"{program} is not installed on the storage host (apt-get install {package})"
            ) from exc
        except HostCommandError as exc:
            raise SetupError(f"remote-file storage at {self._config.path}: {exc}") from exc

    async def create(self, volume_id: str, size_bytes: int) -> None:
        path = self._volumes / _check_id(volume_id)
        _check_size(size_bytes)
        try:
            await self._make_dirs()
            existing = await self._size(path)
            if existing is not None:
                if existing != size_bytes:
                    raise BackendError(
                        f"volume {volume_id} exists with {existing} bytes, not {size_bytes}"
                    )
                log.info("volume %s already exists with that size", volume_id)
                return
            temp = self._staging(self._volumes, volume_id)
            try:
                await self._run("createCmd", path=str(temp), sizeBytes=size_bytes)
                await self._run("renameCmd", temp=str(temp), path=str(path))
            except HostCommandError:
                await self._discard(temp)
                raise
            await self._refresh_free()
        except HostCommandError as exc:
            raise backend_error(exc, f"cannot create volume {volume_id}") from exc
        log.info("created volume %s of %d bytes at %s", volume_id, size_bytes, path)

    async def delete(self, volume_id: str) -> None:
        path = self._volumes / _check_id(volume_id)
        try:
            await self._run("removeCmd", path=str(path))
            await self._refresh_free()
        except HostCommandError as exc:
            raise backend_error(exc, f"cannot delete volume {volume_id}") from exc
        log.info("removed volume %s at %s", volume_id, path)

    async def extend(self, volume_id: str, size_bytes: int, *, one_device: bool = False) -> None:
        # A remote-file volume is always one file: ``one_device`` asks for nothing more.
        path = self._volumes / _check_id(volume_id)
        _check_size(size_bytes)
        try:
            existing = await self._size(path)
            if existing is None:
                raise BackendError(f"no volume {volume_id} at {path}")
            if size_bytes < existing:
                raise BackendError(
                    f"volume {volume_id} has {existing} bytes; cannot shrink to {size_bytes}"
                )
            if size_bytes > existing:
                await self._run("createCmd", path=str(path), sizeBytes=size_bytes)
        except HostCommandError as exc:
            raise backend_error(exc, f"cannot extend volume {volume_id}") from exc

    async def list_volumes(self) -> list[str]:
        try:
            return await self._list(self._volumes)
        except HostCommandError as exc:
            raise backend_error(exc, "cannot list volumes") from exc

    async def health(self, sizes: Mapping[str, int]) -> dict[str, str]:
        problems: dict[str, str] = {}
        try:
            for volume_id, size_bytes in sizes.items():
                found = await self._size(self._volumes / _check_id(volume_id))
                if found is None:
                    problems[volume_id] = "its backing file is missing"
                elif found != size_bytes:
                    problems[volume_id] = f"its backing file is {found} bytes, not {size_bytes}"
        except HostCommandError as exc:
            raise backend_error(exc, "cannot check volumes") from exc
        return problems

    async def freeze(self, volume_id: str, view_id: str) -> None:
        source = self._volumes / _check_id(volume_id)
        path = self._views / _check_id(view_id)
        try:
            await self._make_dirs()
            if await self._size(path) is not None:
                log.info("view %s already exists; kept", view_id)
                return
            if await self._size(source) is None:
                raise BackendError(f"no volume {volume_id} at {source}")
            temp = self._staging(self._views, view_id)
            try:
                await self._run(
                    "freezeCmd",
                    source=str(source),
                    path=str(temp),
                    timeout=self._config.copy_timeout,
                )
                await self._run("renameCmd", temp=str(temp), path=str(path))
            except HostCommandError:
                await self._discard(temp)
                raise
            await self._refresh_free()
        except HostCommandError as exc:
            raise backend_error(exc, f"cannot freeze volume {volume_id} as {view_id}") from exc
        log.info("froze volume %s as view %s", volume_id, view_id)

    async def drop_view(self, view_id: str) -> None:
        try:
            await self._run("removeCmd", path=str(self._views / _check_id(view_id)))
            await self._refresh_free()
        except HostCommandError as exc:
            raise backend_error(exc, f"cannot drop view {view_id}") from exc

    async def list_views(self) -> list[str]:
        try:
            return await self._list(self._views)
        except HostCommandError as exc:
            raise backend_error(exc, "cannot list views") from exc

    # -- data path (blocking; run in worker threads) ----------------------------------------

    def open_view(self, view_id: str) -> RemoteFileView:
        path = self._views / _check_id(view_id)
        size = self._on_loop(lambda: self._size(path), f"cannot open view {view_id}")
        if size is None:
            raise BackendError(f"no view {view_id} at {path}")
        blocks = self._on_loop(lambda: self._data_blocks(path, size), f"cannot map {path}")
        return RemoteFileView(
            lambda first, count: self.read_blocks(path, first, count), size, blocks
        )

    def read_blocks(self, path: PurePosixPath, first: int, count: int) -> bytes:
        """``count`` blocks of the file from block ``first`` (all of them present)."""
        result = self._on_loop(
            lambda: self._run(
                "readCmd", path=str(path), blockBytes=BLOCK_SIZE, first=first, count=count
            ),
            f"cannot read {path}",
        )
        if len(result.stdout) != count * BLOCK_SIZE:
            raise BackendError(
                f"{path}: read {len(result.stdout)} bytes at block {first}, "
                f"not {count * BLOCK_SIZE}"
            )
        return result.stdout

    def write_blocks(self, volume_id: str, blocks: Iterable[tuple[int, bytes]]) -> None:
        """Write each run of consecutive data blocks with one command; punch each run of zero
        blocks back into a hole. Blocks not given are not touched."""
        path = self._volumes / _check_id(volume_id)
        size = self._on_loop(lambda: self._size(path), f"cannot write volume {volume_id}")
        if size is None:
            raise BackendError(f"no volume {volume_id} at {path}")
        block_count = size // BLOCK_SIZE
        run: list[bytes] = []
        run_first = 0
        zero_run = False
        written = 0
        for index, data in blocks:
            if len(data) != BLOCK_SIZE or not 0 <= index < block_count:
                raise BackendError(
                    f"block {index} ({len(data)} bytes) does not fit volume {volume_id} "
                    f"of {block_count} blocks of {BLOCK_SIZE} bytes"
                )
            zero = data == ZERO_BLOCK
            if run and (
                index != run_first + len(run) or zero != zero_run or len(run) == TRANSFER_BLOCKS
            ):
                written += self._flush(path, run_first, run, zero_run)
                run = []
            if not run:
                run_first, zero_run = index, zero
            run.append(data)
        if run:
            written += self._flush(path, run_first, run, zero_run)
        self._on_loop(self._refresh_free, f"cannot read free space of {self._config.path}")
        log.info("wrote %d blocks into volume %s at %s", written, volume_id, path)

    def free_bytes(self) -> int:
        if self._free_bytes is None:
            raise BackendError(f"free space of {self._config.path} is not known yet")
        return self._free_bytes

    def device_path(self, volume_id: str) -> str:
        return str(self._volumes / _check_id(volume_id))

    # -- implementation -----------------------------------------------------------------------

    def _flush(self, path: PurePosixPath, first: int, run: list[bytes], zero: bool) -> int:
        """Write one run of blocks (or punch it into a hole); the number of data blocks."""
        if zero:
            self._on_loop(
                lambda: self._run(
                    "punchCmd",
                    path=str(path),
                    offset=first * BLOCK_SIZE,
                    length=len(run) * BLOCK_SIZE,
                ),
                f"cannot write {path}",
            )
            return 0
        data = b"".join(run)
        self._on_loop(
            lambda: self._run(
                "writeCmd", path=str(path), blockBytes=BLOCK_SIZE, first=first, input=data
            ),
            f"cannot write {path}",
        )
        return len(run)

    def _on_loop(self, make: Callable[[], Coroutine[Any, Any, T]], doing: str) -> T:
        try:
            return self._bridge.call(make, self._config.command_timeout + 5.0)
        except HostCommandError as exc:
            raise backend_error(exc, doing) from exc

    async def _run(
        self,
        key: str,
        *,
        timeout: float | None = None,
        input: bytes | None = None,
        check: bool = True,
        **values: str | int,
    ) -> CommandResult:
        self._bridge.remember()
        argv = self._templates.render(TOOL, key, values)
        return await self._runner.run(
            argv, timeout=timeout or self._config.command_timeout, input=input, check=check
        )

    async def _make_dirs(self) -> None:
        if not self._dirs_made:
            for directory in (self._volumes, self._views):
                await self._run("mkdirCmd", dir=str(directory))
            self._dirs_made = True

    async def _size(self, path: PurePosixPath) -> int | None:
        """The file's size, or None when it does not exist."""
        result = await self._run("sizeCmd", dir=str(path.parent), name=path.name)
        text = result.text.strip()
        if not text:
            return None
        try:
            return int(text)
        except ValueError:
            raise BackendError(f"{path}: find printed {text[:80]!r} as its size") from None

    async def _data_blocks(self, path: PurePosixPath, size: int) -> list[tuple[int, int]]:
        """[first, end) block ranges of the file that hold data, from the host's data map;
        the whole file when the host has no xfs_io."""
        whole = [(0, size // BLOCK_SIZE)]
        if not self._data_map:
            return whole
        try:
            result = await self._run(MAP_TEMPLATE, path=str(path))
        except CommandNotFound:
            log.warning(
                "xfs_io is not installed on the storage host at %s: snapshots read whole "
                "volumes (apt-get install xfsprogs)",
                self._config.path,
            )
            self._data_map = False
            return whole
        return data_block_ranges(result.text, size)

    async def _list(self, directory: PurePosixPath, *, staging: bool = False) -> list[str]:
        names = (await self._run("listCmd", dir=str(directory))).text.split()
        return sorted(
            n
            for n in names
            if n.startswith(STAGING) == staging and _ID_PATTERN.fullmatch(n.removeprefix("."))
        )

    async def _refresh_free(self) -> None:
        lines = (await self._run("freeCmd", dir=str(self._config.path))).text.split()
        try:
            self._free_bytes = int(lines[-1])
        except (IndexError, ValueError):
            raise BackendError(f"df printed no free space for {self._config.path}") from None

    async def _discard(self, path: PurePosixPath) -> None:
        """Remove a staging file after a failure; a failure to do so is only logged (the next
        check_setup removes it)."""
        try:
            await self._run("removeCmd", path=str(path))
        except HostCommandError as exc:
            log.error("could not remove %s after a failure: %s", path, exc)

    @staticmethod
    def _staging(directory: PurePosixPath, name: str) -> PurePosixPath:
        return directory / f"{STAGING}{name}-{secrets.token_hex(4)}"

    async def _probe(self) -> None:
        """Run each command once on a probe file (create, copy, write, read, punch, remove)."""
        probe = self._staging(self._volumes, "probe")
        copy = self._staging(self._views, "probe")
        try:
            await self._run("createCmd", path=str(probe), sizeBytes=2 * BLOCK_SIZE)
            block = secrets.token_bytes(BLOCK_SIZE)
            await self._run(
                "writeCmd", path=str(probe), blockBytes=BLOCK_SIZE, first=1, input=block
            )
            await self._run("freezeCmd", source=str(probe), path=str(copy))
            read = await self._run(
                "readCmd", path=str(copy), blockBytes=BLOCK_SIZE, first=0, count=2
            )
            if read.stdout != ZERO_BLOCK + block:
                raise SetupError(f"{self._config.path}: a probe file did not read back as written")
            await self._run("punchCmd", path=str(probe), offset=BLOCK_SIZE, length=BLOCK_SIZE)
            if await self._size(probe) != 2 * BLOCK_SIZE:
                raise SetupError(f"{self._config.path}: punching a hole changed a file's size")
            await self._data_blocks(copy, 2 * BLOCK_SIZE)  # warns once when xfs_io is missing
        finally:
            for path in (probe, copy):
                await self._discard(path)
