"""The ``file`` storage backend: volumes as raw sparse files in a data directory.

Layout under the data directory::

    volumes/<volume_id>/volume.json     {"layout_version": 1, "size_bytes": …, "segment_bytes": …}
    volumes/<volume_id>/seg-0000        raw sparse file, ``segment_bytes`` long
    volumes/<volume_id>/seg-0001        … the last segment holds the remainder
    views/<view_id>/…                   frozen point-in-time copies, same layout
    bases/<volume_id>@<view_id>/…       a captured view kept as the volume's next view's base
    fingerprints/<volume_id>/<view_id>  BLAKE3 of a copied view's blocks, for the next freeze

Why segments: a volume is created by truncating sparse files, so creation takes the same few
milliseconds for 1 GiB as for 64 TiB (the EBS maximum) and uses no space until written. But a
filesystem caps the size of one file: ext4 at 16 TiB minus 4 KiB, XFS and btrfs far above 64 TiB.
The first time it needs to, the backend probes the data filesystem for the largest power of two
it holds in one file (capped at 64 TiB) and cuts volumes into segments of that size. On XFS and
btrfs every volume is one file; on ext4 a volume of up to 8 TiB is one file and a 16 TiB volume
is two. ``volume.json`` records the volume's size and segment size, so the layout describes
itself and a data directory moved to another filesystem keeps working.

Export and attach need one file: a volume that spans several segments can be snapshotted and
restored but not attached. Put the data directory on XFS or btrfs to attach volumes of any size.

An encrypted volume (``create_encrypted``) is one file holding a LUKS image made by qemu-img
(header, then ciphertext; see backends/luks.py), zero-padded to whole blocks, and its
``volume.json`` says ``"encryption": "luks"``. Everything else here treats that file as any
other: views, snapshots and restores carry its ciphertext, header included.

Freezing a volume for a snapshot clones each segment with a reflink (FICLONE) where the
filesystem supports it (XFS with reflink=1, btrfs): instant and no extra space until the volume
is written again. Elsewhere (ext4, tmpfs) it copies the data extents only, so holes stay holes,
and records the BLAKE3 of the blocks copied (backends/file_fingerprints.py).
The freeze is a point-in-time copy of what the files hold; a writer attached to the volume must
be quiesced by the caller for the copy to be consistent. A reflinked view whose snapshot has
completed is kept as the base of the volume's next view (``keep_view``, backends/file_base.py),
which then reads only the blocks whose extents differ from the base's (FIEMAP,
backends/file_changes.py); a copied view is never kept. Without reflink, a volume that has a
completed snapshot can instead be frozen against that snapshot's block digests: only the blocks
whose bytes differ are copied (``freeze_changes``, backends/file_digests.py). A restore
shares the extents of the block store's packs where the filesystem can, instead of writing the
bytes (``write_located_blocks``, backends/file_writes.py).
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Self

from backends import heap, luks, sparse
from backends.base import BlockBytes, BlockDigests, LocatedBlock
from backends.batching import GroupRunner
from backends.errors import BackendError, CapacityError, SetupError
from backends.file_base import FileBases
from backends.file_fingerprints import Fingerprints
from backends.file_writes import BlockWriter
from backends.mapped_blocks import BlockReader, is_zero_block
from ebsemu.logs import REQUEST_ID
from ebsemu.model import BLOCK_SIZE

logger = logging.getLogger(__name__)

MAX_SEGMENT_BYTES = 64 * 1024**4  # 64 TiB: the largest EBS volume
LAYOUT_VERSION = 1
META_NAME = "volume.json"
LUKS = "luks"

_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
_TOO_BIG = frozenset({errno.EFBIG, errno.EINVAL})


@dataclass(frozen=True)
class Layout:
    """How a volume's bytes are cut into segment files."""

    size_bytes: int
    segment_bytes: int

    @property
    def segment_count(self) -> int:
        return -(-self.size_bytes // self.segment_bytes)

    @property
    def block_count(self) -> int:
        return self.size_bytes // BLOCK_SIZE

    def segment_size(self, index: int) -> int:
        """Length of segment ``index``: ``segment_bytes`` except for the last one."""
        return min(self.segment_bytes, self.size_bytes - index * self.segment_bytes)

    def to_json(self, **extra: str) -> dict[str, Any]:
        return {
            "layout_version": LAYOUT_VERSION,
            "size_bytes": self.size_bytes,
            "segment_bytes": self.segment_bytes,
            **extra,
        }

    @classmethod
    def from_json(cls, data: object, source: Path) -> Layout:
        if not isinstance(data, dict) or data.get("layout_version") != LAYOUT_VERSION:
            raise BackendError(f"{source}: not a layout version {LAYOUT_VERSION} description")
        size, segment = data.get("size_bytes"), data.get("segment_bytes")
        if not (isinstance(size, int) and isinstance(segment, int)):
            raise BackendError(f"{source}: size_bytes and segment_bytes must be integers")
        _check_size(size)
        _check_segment_bytes(segment)
        return cls(size, segment)


def _check_size(size_bytes: int) -> None:
    if size_bytes <= 0 or size_bytes % BLOCK_SIZE:
        raise BackendError(f"volume size {size_bytes} is not a positive multiple of {BLOCK_SIZE}")


def _check_segment_bytes(segment_bytes: int) -> None:
    if not 0 < segment_bytes <= MAX_SEGMENT_BYTES or segment_bytes % BLOCK_SIZE:
        raise ValueError(
            f"segment size {segment_bytes} is not a multiple of {BLOCK_SIZE} "
            f"between {BLOCK_SIZE} and {MAX_SEGMENT_BYTES}"
        )


def _check_id(name: str) -> str:
    """Refuse ids that are not one plain path component."""
    if not _ID_PATTERN.fullmatch(name):
        raise BackendError(f"invalid volume or view id {name!r}")
    return name


def segment_name(index: int) -> str:
    return f"seg-{index:04d}"


def _install(
    staging: Path, final: Path, fill: Callable[[Path], str | None], *, doing: str, failing: str
) -> str | None:
    """Make the directory ``final`` appear whole, durably, or not at all: ``fill`` writes it
    into the new directory ``staging`` beside it and says how it did; where it says None,
    nothing is made. CapacityError when the filesystem is full, BackendError otherwise."""
    try:
        staging.mkdir()
        how = fill(staging)
        if how is None:
            shutil.rmtree(staging)
            return None
        os.rename(staging, final)
        sparse.fsync_dir(final.parent)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if exc.errno in _NO_SPACE:
            raise CapacityError(f"no space left {doing}") from exc
        raise BackendError(f"cannot {failing}: {exc}") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return how


def _clone_segments(source: Path, staging: Path, layout: Layout) -> str:
    """Clone each segment file of the volume directory ``source`` into ``staging`` (a reflink,
    else a copy of its data extents); how ("reflink", "copy", or both joined by "+")."""
    methods = {
        sparse.clone_file(
            source / segment_name(index), staging / segment_name(index), layout.segment_size(index)
        )
        for index in range(layout.segment_count)
    }
    return "+".join(sorted(methods))


def format_bytes(n: int) -> str:
    """``n`` in the largest binary unit that divides it exactly (``8 TiB``, ``1536 MiB``)."""
    for unit, scale in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} bytes"


def probe_segment_bytes(directory: Path) -> int:
    """Largest power of two (at most 64 TiB) that one sparse file in ``directory`` can hold."""
    path = directory / f".probe-{secrets.token_hex(4)}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        size = MAX_SEGMENT_BYTES
        while size >= BLOCK_SIZE:
            try:
                os.ftruncate(fd, size)
            except OSError as exc:
                if exc.errno not in _TOO_BIG:
                    raise
                size //= 2
            else:
                return size
        raise SetupError(f"{directory}: cannot hold even a {BLOCK_SIZE}-byte sparse file")
    finally:
        os.close(fd)
        os.unlink(path)


def _read_layout(directory: Path) -> Layout | None:
    """The layout recorded in ``directory``, or None when there is no such volume or view."""
    path = directory / META_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise BackendError(f"{path}: unreadable layout description: {exc}") from exc
    return Layout.from_json(data, path)


def _is_luks(directory: Path) -> bool:
    try:
        data = json.loads((directory / META_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("encryption") == LUKS


def _create_error(volume_id: str, exc: BaseException) -> BaseException:
    """What a failed create of ``volume_id`` raises to its caller."""
    if isinstance(exc, OSError):
        if exc.errno in _NO_SPACE | {errno.EFBIG}:
            return CapacityError(f"cannot create volume {volume_id}: {exc}")
        return BackendError(f"cannot create volume {volume_id}: {exc}")
    return exc


class _Create(NamedTuple):
    """A create queued for the next batch."""

    volume_id: str
    size_bytes: int
    request_id: str | None  # the caller's: the batch runs in the first caller's context


class _Staged:
    """A volume being created in its staging directory."""

    def __init__(self, path: Path, final: Path, layout: Layout) -> None:
        self.path = path
        self.final = final
        self.layout = layout

    def make(self, parent: Path) -> None:
        """The staging directory with its sparse segments and layout, not yet durable."""
        try:
            os.mkdir(self.path)
        except FileNotFoundError:
            parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(self.path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        for index in range(self.layout.segment_count):
            fd = os.open(self.path / segment_name(index), flags, 0o600)
            try:
                os.ftruncate(fd, self.layout.segment_size(index))
            finally:
                os.close(fd)
        fd = os.open(self.path / META_NAME, flags, 0o600)
        try:
            text = json.dumps(self.layout.to_json(), sort_keys=True) + "\n"
            sparse.pwrite_all(fd, text.encode(), 0)
        finally:
            os.close(fd)


class FileView:
    """A frozen view opened for reading; yields its data blocks without reading its holes."""

    def __init__(self, directory: Path, layout: Layout) -> None:
        self._layout = layout
        self._fds: list[int] = []
        heap.keep_block_buffers()
        try:
            for index in range(layout.segment_count):
                fd = os.open(directory / segment_name(index), os.O_RDONLY)
                self._fds.append(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except OSError as exc:
            self.close()
            raise BackendError(f"cannot open view {directory.name}: {exc}") from exc

    @property
    def size_bytes(self) -> int:
        return self._layout.size_bytes

    def iter_blocks(self, start_index: int = 0) -> Iterator[tuple[int, BlockBytes]]:
        """Yield (index, data) for every block from ``start_index`` on that holds a non-zero
        byte. Holes are skipped with SEEK_DATA/SEEK_HOLE, without reading them. Blocks are
        read in place where they can be (backends.mapped_blocks)."""
        if start_index < 0:
            raise ValueError(f"negative block index {start_index}")
        per_segment = self._layout.segment_bytes // BLOCK_SIZE
        for segment in range(start_index // per_segment, self._layout.segment_count):
            first_index = segment * per_segment
            yield from self._segment_blocks(segment, max(start_index - first_index, 0))

    def _segment_blocks(self, segment: int, local_start: int) -> Iterator[tuple[int, BlockBytes]]:
        fd = self._fds[segment]
        size = self._layout.segment_size(segment)
        reader = BlockReader(fd, size)
        first_index = segment * (self._layout.segment_bytes // BLOCK_SIZE)
        done = local_start  # blocks before this one were read already
        for start, end in sparse.data_extents(fd, local_start * BLOCK_SIZE, size):
            stop = -(-end // BLOCK_SIZE)  # extents are fs-block aligned, not BLOCK_SIZE aligned
            for local in range(max(start // BLOCK_SIZE, done), stop):
                data = reader.read(local * BLOCK_SIZE)
                if len(data) != BLOCK_SIZE:
                    raise BackendError(f"segment {segment} is shorter than its recorded size")
                if not is_zero_block(data):
                    yield first_index + local, data
            done = max(done, stop)

    def block_location(self, index: int) -> tuple[int, int]:
        """(segment file descriptor, offset) of block ``index``. A view's files are never
        written once frozen, so a block store on the same filesystem may share their extents."""
        segment, local = divmod(index, self._layout.segment_bytes // BLOCK_SIZE)
        if not 0 <= segment < len(self._fds):
            raise ValueError(f"block {index} is outside the view")
        return self._fds[segment], local * BLOCK_SIZE

    def close(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class FileStorage:
    """Volumes as raw sparse segment files under ``root/volumes``, views under ``root/views``.

    ``segment_bytes`` overrides the probed per-file maximum (a multiple of the block size);
    it applies to volumes created afterwards, existing ones keep what they recorded.
    """

    def __init__(
        self,
        root: Path,
        segment_bytes: int | None = None,
        *,
        luks_formatter: luks.LuksFormatter | None = None,
    ) -> None:
        if segment_bytes is not None:
            _check_segment_bytes(segment_bytes)
        self._root = root
        self._volumes = root / "volumes"
        self._views = root / "views"
        self._bases = FileBases(self._views, root / "bases", self._volumes, META_NAME)
        self._fingerprints = Fingerprints(root / "fingerprints")
        self._segment_bytes = segment_bytes
        self._luks = luks_formatter
        self._luks_unavailable: str | None = (
            "no LUKS formatter is configured" if luks_formatter is None else "not checked yet"
        )
        self._creates = GroupRunner(self._create_batch)
        self._copies: bool | None = None  # freeze copies data (no reflink); None: not probed
        self._share_refused: set[int] = set()  # devices restores cannot share extents with

    # -- control path (coroutines; the file work runs in worker threads) --

    async def check_setup(self) -> None:
        await asyncio.to_thread(self._check_setup)
        if self._luks is not None:
            self._luks_unavailable = await self._luks.unavailable()
            if self._luks_unavailable is not None:
                logger.warning("encryption at rest unavailable: %s", self._luks_unavailable)

    def encryption_unavailable(self) -> str | None:
        return self._luks_unavailable

    async def create_encrypted(
        self, volume_id: str, size_bytes: int, passphrase: str | None
    ) -> None:
        if self._luks is None or self._luks_unavailable is not None:
            raise BackendError(f"cannot encrypt {volume_id}: {self._luks_unavailable}")
        final = self._volumes / _check_id(volume_id)
        _check_size(size_bytes)
        layout = Layout(luks.file_bytes(size_bytes), luks.file_bytes(size_bytes))
        staging = await asyncio.to_thread(self._stage, final, layout)
        if staging is None:
            return
        segment = staging / segment_name(0)
        try:
            if passphrase is None:
                await asyncio.to_thread(sparse.make_sparse, segment, layout.size_bytes)
            else:
                await self._luks.format(segment, size_bytes, passphrase)
            await asyncio.to_thread(self._commit, staging, final, layout)
        except BaseException as exc:
            await asyncio.to_thread(shutil.rmtree, staging, True)
            if isinstance(exc, OSError):
                if exc.errno in _NO_SPACE | {errno.EFBIG}:
                    raise CapacityError(f"cannot create volume {volume_id}: {exc}") from exc
                raise BackendError(f"cannot create volume {volume_id}: {exc}") from exc
            raise
        logger.info(
            "created volume %s: %s, encrypted at rest (LUKS%s)",
            volume_id,
            format_bytes(size_bytes),
            "" if passphrase is not None else ", for a restore",
        )

    async def create(self, volume_id: str, size_bytes: int) -> None:
        await self._creates.run(_Create(volume_id, size_bytes, REQUEST_ID.get()))

    async def delete(self, volume_id: str) -> None:
        await asyncio.to_thread(self._delete, _check_id(volume_id))

    async def extend(self, volume_id: str, size_bytes: int, *, one_device: bool = False) -> None:
        await asyncio.to_thread(self._extend, volume_id, size_bytes, one_device)

    async def list_volumes(self) -> list[str]:
        return await asyncio.to_thread(self._list, self._volumes)

    async def freeze(self, volume_id: str, view_id: str) -> None:
        await asyncio.to_thread(self._freeze, volume_id, view_id)

    async def copy_volume(self, source_id: str, copy_id: str) -> None:
        """Make ``copy_id`` a new volume holding ``source_id``'s bytes, as a freeze makes a
        view: reflinks where the filesystem shares extents, else a copy of the data extents
        (holes stay holes). An encrypted volume's copy is its LUKS image, encrypted alike. An
        existing ``copy_id`` is kept."""
        await asyncio.to_thread(self._copy_volume, source_id, copy_id)

    async def freezes_by_copy(self) -> bool:
        """True where the data filesystem has no reflink (probed once)."""
        if self._copies is None:
            self._copies = not await asyncio.to_thread(self._probe_reflink)
        return self._copies

    def _probe_reflink(self) -> bool:
        self._views.mkdir(parents=True, exist_ok=True)
        return sparse.reflinks(self._views)

    async def freeze_changes(self, volume_id: str, view_id: str, base: BlockDigests) -> bool:
        """Freeze only the blocks that differ from ``base`` (backends/file_digests.py); no
        view when none does."""
        return await asyncio.to_thread(self._freeze_changes, volume_id, view_id, base)

    async def keep_view(self, view_id: str) -> None:
        """Keep a captured view as the base of its volume's next view, where it was reflinked
        (see backends/file_base.py); else drop it."""
        try:
            await asyncio.to_thread(self._bases.keep, _check_id(view_id))
        except OSError as exc:
            raise BackendError(f"cannot keep view {view_id}: {exc}") from exc

    async def drop_view(self, view_id: str) -> None:
        await asyncio.to_thread(self._drop_view, _check_id(view_id))

    async def list_views(self) -> list[str]:
        return await asyncio.to_thread(self._list, self._views)

    async def health(self, sizes: Mapping[str, int]) -> dict[str, str]:
        return await asyncio.to_thread(self._health, dict(sizes))

    # -- data path (blocking) --

    def open_view(self, view_id: str) -> FileView:
        """The view, reading only its changes since its volume's kept base where it has one,
        or only the blocks it was frozen with when it was frozen against a snapshot's digests
        (backends/file_changes.py and file_digests.py build on FileView, hence imported here)."""
        from backends import file_changes, file_digests

        directory = self._views / _check_id(view_id)
        layout = self._layout_of(directory, "view")
        frozen_against_digests = file_digests.open_view(directory, layout)
        if frozen_against_digests is not None:
            return frozen_against_digests
        return file_changes.open_view(directory, layout, self._bases)

    def write_blocks(self, volume_id: str, blocks: Iterable[tuple[int, bytes]]) -> None:
        """Write blocks into the volume, then fsync the segments written. An all-zero block
        over a hole is skipped, so holes stay holes."""
        self.write_located_blocks(volume_id, ((index, data, None) for index, data in blocks))

    def write_located_blocks(self, volume_id: str, blocks: Iterable[LocatedBlock]) -> None:
        """``write_blocks``, sharing the extents of the file range given with a block where
        the filesystem can (backends/file_writes.py)."""
        directory = self._volumes / _check_id(volume_id)
        layout = self._layout_of(directory, "volume")
        writer = BlockWriter(
            volume_id,
            lambda segment: directory / segment_name(segment),
            layout.block_count,
            layout.segment_bytes // BLOCK_SIZE,
            self._share_refused,
        )
        try:
            for index, data, where in blocks:
                writer.add(index, data, where)
            writer.finish()
            logger.info(
                "volume %s: %d blocks written, %d sharing the extents that held them",
                volume_id,
                writer.written_blocks,
                writer.shared_blocks,
            )
        except OSError as exc:
            if exc.errno in _NO_SPACE:
                raise CapacityError(f"no space left writing volume {volume_id}") from exc
            raise BackendError(f"writing volume {volume_id}: {exc}") from exc
        finally:
            writer.close()

    def free_bytes(self) -> int:
        try:
            st = os.statvfs(self._root)
        except OSError as exc:
            raise BackendError(f"data directory {self._root}: {exc}") from exc
        return st.f_bavail * st.f_frsize

    def device_path(self, volume_id: str) -> str:
        directory = self._volumes / _check_id(volume_id)
        layout = self._layout_of(directory, "volume")
        if layout.segment_count > 1:
            raise BackendError(
                f"volume {volume_id} spans {layout.segment_count} segment files because the "
                f"data filesystem holds at most {format_bytes(layout.segment_bytes)} per file; "
                "put the data directory on XFS or btrfs to attach it"
            )
        return str(directory / segment_name(0))

    # -- implementation --

    @staticmethod
    def _layout_of(directory: Path, kind: str) -> Layout:
        layout = _read_layout(directory)
        if layout is None:
            raise BackendError(f"no {kind} {directory.name} in {directory.parent}")
        return layout

    def _segment_size(self) -> int:
        if self._segment_bytes is None:
            self._volumes.mkdir(parents=True, exist_ok=True)
            self._segment_bytes = probe_segment_bytes(self._volumes)
            logger.info(
                "data filesystem at %s holds %s per file",
                self._root,
                format_bytes(self._segment_bytes),
            )
        return self._segment_bytes

    def _check_setup(self) -> None:
        try:
            for directory in (self._volumes, self._views, self._bases.directory):
                directory.mkdir(parents=True, exist_ok=True)
                self._remove_leftovers(directory)
            self._bases.collect()
            self._segment_size()
        except OSError as exc:
            raise SetupError(
                f"file storage needs a writable data directory at {self._root}: "
                f"{exc.strerror or exc}"
            ) from exc

    @staticmethod
    def _remove_leftovers(directory: Path) -> None:
        """Remove staging and half-deleted entries an interrupted operation left behind."""
        for entry in directory.iterdir():
            if entry.name.startswith((".tmp-", ".del-", ".probe-")):
                logger.warning("removing leftover %s", entry)
                if entry.is_dir():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()

    @staticmethod
    def _staging(parent: Path, kind: str, name: str) -> Path:
        return parent / f".{kind}-{name}-{secrets.token_hex(4)}"

    def _create_batch(self, items: Sequence[_Create]) -> list[BaseException | None]:
        """Create the volumes of one batch (volume id, size): stage each one's segments and
        layout in a staging directory, make every staged file and directory durable with one
        syncfs (one journal commit and one cache flush for the whole batch, where an fsync of
        each file and directory cost a cache flush each), rename each into place, then fsync
        the volumes directory once. As with one create at a time, a volume's directory appears
        under its own name only with its files durable, and the call returns only once the
        rename is."""
        results: list[BaseException | None] = [None] * len(items)
        staged: list[tuple[int, _Staged]] = []
        for position, (volume_id, size_bytes, _) in enumerate(items):
            try:
                staging = self._stage_plain(volume_id, size_bytes)
            except (BackendError, OSError) as exc:
                results[position] = _create_error(volume_id, exc)
                continue
            if staging is not None:
                staged.append((position, staging))
        if staged:
            try:
                sparse.sync_filesystem(self._volumes)
            except OSError as exc:
                for position, staging in staged:
                    results[position] = _create_error(staging.final.name, exc)
        moved: list[tuple[int, _Staged]] = []
        for position, staging in staged:
            if results[position] is None:
                try:
                    if self._move_in(staging):
                        moved.append((position, staging))
                except (BackendError, OSError) as exc:
                    results[position] = _create_error(staging.final.name, exc)
            if results[position] is not None:
                shutil.rmtree(staging.path, ignore_errors=True)
        if moved:
            try:
                sparse.fsync_dir(self._volumes)
            except OSError as exc:
                for position, staging in moved:
                    results[position] = _create_error(staging.final.name, exc)
                return results
        for position, staging in moved:
            logger.info(
                "created volume %s: %s in %d segment file(s)",
                staging.final.name,
                format_bytes(staging.layout.size_bytes),
                staging.layout.segment_count,
                extra={"request_id": items[position].request_id},
            )
        return results

    def _stage_plain(self, volume_id: str, size_bytes: int) -> _Staged | None:
        """The volume's segments and layout in a new staging directory, not yet durable; None
        if the volume exists already with that size."""
        final = self._volumes / _check_id(volume_id)
        _check_size(size_bytes)
        if self._keep_existing(final, size_bytes):
            return None
        layout = Layout(size_bytes, self._segment_size())
        staging = _Staged(self._staging(self._volumes, "tmp", volume_id), final, layout)
        try:
            staging.make(self._volumes)
        except BaseException:
            shutil.rmtree(staging.path, ignore_errors=True)
            raise
        return staging

    def _move_in(self, staging: _Staged) -> bool:
        """Rename the staged volume to its own name; False if a concurrent create of the same
        volume got there first (with the same size: BackendError otherwise)."""
        try:
            os.rename(staging.path, staging.final)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY) and self._keep_existing(
                staging.final, staging.layout.size_bytes
            ):
                shutil.rmtree(staging.path, ignore_errors=True)
                return False
            raise
        return True

    def _stage(self, final: Path, layout: Layout) -> Path | None:
        """A new staging directory for the volume ``final``; None if it exists already with
        that layout's size (BackendError with another)."""
        if self._keep_existing(final, layout.size_bytes):
            return None
        staging = self._staging(self._volumes, "tmp", final.name)
        try:
            self._volumes.mkdir(parents=True, exist_ok=True)
            staging.mkdir()
        except OSError as exc:
            raise BackendError(f"cannot create volume {final.name}: {exc}") from exc
        return staging

    def _commit(self, staging: Path, final: Path, layout: Layout) -> None:
        """Describe the staged encrypted volume and move it in place, durably."""
        sparse.write_json_atomic(staging / META_NAME, layout.to_json(encryption=LUKS))
        try:
            os.rename(staging, final)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY) and self._keep_existing(
                final, layout.size_bytes
            ):
                shutil.rmtree(staging, ignore_errors=True)
                return  # created concurrently
            raise
        sparse.fsync_dir(self._volumes)

    def _keep_existing(self, final: Path, size_bytes: int) -> bool:
        """True if the volume exists with this size; BackendError if it exists otherwise."""
        if not final.exists():
            return False
        layout = _read_layout(final)
        if layout is None:
            raise BackendError(f"{final} exists but holds no volume")
        if layout.size_bytes != size_bytes:
            raise BackendError(
                f"volume {final.name} exists with {layout.size_bytes} bytes, not {size_bytes}"
            )
        logger.info("volume %s already exists with that size", final.name)
        return True

    def _extend(self, volume_id: str, size_bytes: int, one_device: bool = False) -> None:
        directory = self._volumes / _check_id(volume_id)
        old = self._layout_of(directory, "volume")
        _check_size(size_bytes)
        if _is_luks(directory):
            raise BackendError(f"volume {volume_id} is encrypted; growing it is not supported")
        if size_bytes < old.size_bytes:
            raise BackendError(
                f"volume {volume_id} has {old.size_bytes} bytes; cannot shrink to {size_bytes}"
            )
        if size_bytes == old.size_bytes:
            return
        new = Layout(size_bytes, old.segment_bytes)
        if one_device and new.segment_count > 1:
            raise CapacityError(
                f"cannot extend attached volume {volume_id} to {format_bytes(size_bytes)}: the "
                f"data filesystem holds at most {format_bytes(old.segment_bytes)} per file, and "
                "an attached volume must stay one file (put the data directory on XFS or btrfs)"
            )
        try:
            for index in range(old.segment_count - 1, new.segment_count):
                sparse.make_sparse(directory / segment_name(index), new.segment_size(index))
            sparse.write_json_atomic(directory / META_NAME, new.to_json())
        except OSError as exc:
            if exc.errno in _NO_SPACE | {errno.EFBIG}:
                raise CapacityError(f"cannot extend volume {volume_id}: {exc}") from exc
            raise BackendError(f"cannot extend volume {volume_id}: {exc}") from exc
        logger.info(
            "extended volume %s from %s to %s",
            volume_id,
            format_bytes(old.size_bytes),
            format_bytes(size_bytes),
        )

    def _freeze(self, volume_id: str, view_id: str) -> None:
        from backends import file_digests

        def clone(source: Path, staging: Path, layout: Layout) -> dict[str, str]:
            return {"frozen_by": _clone_segments(source, staging, layout)}

        def copy(source: Path, staging: Path, layout: Layout) -> dict[str, str]:
            marks = file_digests.copy_fingerprinted(source, staging, layout)
            self._fingerprints.save(volume_id, view_id, marks)
            self._fingerprints.keep_only(volume_id, {view_id})
            return {"frozen_by": "copy"}

        if self._copies is None:
            self._copies = not self._probe_reflink()
        self._make_view(volume_id, view_id, copy if self._copies else clone)

    def _copy_volume(self, source_id: str, copy_id: str) -> None:
        source = self._volumes / _check_id(source_id)
        final = self._volumes / _check_id(copy_id)
        layout = self._layout_of(source, "volume")
        described = layout.to_json(encryption=LUKS) if _is_luks(source) else layout.to_json()
        if _read_layout(final) is not None:
            logger.info("volume %s already exists; kept", copy_id)
            return

        def fill(staging: Path) -> str:
            how = _clone_segments(source, staging, layout)
            sparse.write_json_atomic(staging / META_NAME, described)
            return how

        began = time.monotonic()
        how = _install(
            self._staging(self._volumes, "tmp", copy_id),
            final,
            fill,
            doing=f"copying volume {source_id}",
            failing=f"copy volume {source_id}",
        )
        logger.info(
            "copied volume %s to %s by %s in %.3f s", source_id, copy_id, how,
            time.monotonic() - began,
        )  # fmt: skip

    def _freeze_changes(self, volume_id: str, view_id: str, base: BlockDigests) -> bool:
        from backends import file_digests

        def compare(source: Path, staging: Path, layout: Layout) -> dict[str, str] | None:
            earlier = self._fingerprints.load(volume_id, base.snapshot_id)
            found = file_digests.freeze_changes(source, staging, layout, base.digests, earlier)
            self._fingerprints.save(volume_id, view_id, found.fingerprints)
            self._fingerprints.keep_only(volume_id, {base.snapshot_id, view_id})
            changed = found.changed
            logger.info(
                "volume %s: %d of %d blocks differ from snapshot %s (compared by %s)%s",
                volume_id,
                changed,
                -(-layout.size_bytes // BLOCK_SIZE),
                base.snapshot_id,
                found.compared_by,
                "" if changed else "; no view is needed",
            )
            if not changed:
                return None
            return {"frozen_by": file_digests.DIGEST, "seeded_from": base.snapshot_id}

        return self._make_view(volume_id, view_id, compare)

    def _make_view(
        self,
        volume_id: str,
        view_id: str,
        fill: Callable[[Path, Path, Layout], dict[str, str] | None],
    ) -> bool:
        """Freeze the volume as the view: ``fill`` writes the view's segment files from the
        volume's directory into a staging directory and says how (description keys); the view
        then appears under its name, durably. An existing view is kept as it is. False, and
        no view, where ``fill`` says (None) that there is nothing to hold."""
        source = self._volumes / _check_id(volume_id)
        final = self._views / _check_id(view_id)
        layout = self._layout_of(source, "volume")
        if _read_layout(final) is not None:
            logger.info("view %s already exists; kept", view_id)
            return True
        self._views.mkdir(parents=True, exist_ok=True)

        def described(staging: Path) -> str | None:
            how = fill(source, staging, layout)
            if how is None:
                return None
            description = layout.to_json(volume_id=volume_id, frozen_ns=str(time.time_ns()), **how)
            sparse.write_json_atomic(staging / META_NAME, description)
            return how["frozen_by"]

        began = time.monotonic()
        frozen_by = _install(
            self._staging(self._views, "tmp", view_id),
            final,
            described,
            doing=f"freezing volume {volume_id}",
            failing=f"freeze volume {volume_id}",
        )
        if frozen_by is None:
            return False
        logger.info(
            "froze volume %s as view %s by %s in %.3f s",
            volume_id,
            view_id,
            frozen_by,
            time.monotonic() - began,
        )
        return True

    def _health(self, sizes: dict[str, int]) -> dict[str, str]:
        problems: dict[str, str] = {}
        for volume_id, size_bytes in sizes.items():
            problem = self._problem(volume_id, size_bytes)
            if problem is not None:
                problems[volume_id] = problem
        return problems

    def _problem(self, volume_id: str, size_bytes: int) -> str | None:
        """What is wrong with the volume's files, or None: its layout records ``size_bytes``
        and every segment file is there with its length."""
        directory = self._volumes / _check_id(volume_id)
        try:
            layout = _read_layout(directory)
        except (BackendError, OSError) as exc:
            return f"its layout description is unreadable: {exc}"
        if layout is None:
            return "its backing files are missing"
        # An encrypted volume's one file is its LUKS image: the header, then the ciphertext.
        if layout.size_bytes not in (size_bytes, luks.file_bytes(size_bytes)):
            return f"its backing files hold {layout.size_bytes} bytes, not {size_bytes}"
        for index in range(layout.segment_count):
            name = segment_name(index)
            try:
                length = os.stat(directory / name).st_size
            except OSError:
                return f"its backing file {name} is missing"
            if length != layout.segment_size(index):
                return (
                    f"its backing file {name} is {length} bytes, not {layout.segment_size(index)}"
                )
        return None

    def _delete(self, volume_id: str) -> None:
        self._remove(self._volumes, volume_id)
        self._bases.drop_volume(volume_id)
        self._fingerprints.drop_volume(volume_id)

    def _drop_view(self, view_id: str) -> None:
        self._remove(self._views, view_id)
        self._bases.drop(view_id)

    @staticmethod
    def _remove(parent: Path, name: str) -> None:
        """Rename the entry away (so it vanishes at once), then delete its files."""
        grave = FileStorage._staging(parent, "del", name)
        try:
            os.rename(parent / name, grave)
        except FileNotFoundError:
            return
        sparse.fsync_dir(parent)
        shutil.rmtree(grave)
        logger.info("removed %s", parent / name)

    @staticmethod
    def _list(directory: Path) -> list[str]:
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return []
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
