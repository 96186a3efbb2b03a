"""The ``rbd`` storage backend: volumes as Ceph RBD images in one pool.

Every command is an ``rbd`` (or ``ceph``) command line from hostcmds/rbd.ini run through the
injected runner, never the python3-rbd bindings: Debian ships those for Debian's own Python
only (not the service's virtualenv, nor PyPI), and a command line runs the same on this host
and, over SSH, on any host with ceph-common and the cluster's ceph.conf.

Names in the pool (``rbd ls --long`` lists images and snapshots in one call)::

    vol-…                   a volume; carries image-meta ebsemu.volume=<volume id>
    vol-…@snap-…            a frozen view (a pending snapshot's RBD snapshot)
    vol-…@snap-….base       a captured view kept as the base of the volume's next diff
    vol-…@snap-….fsr        a captured view kept (protected) for clones while fast snapshot
                            restores of its snapshot are enabled; never a diff base
    deleted.vol-…           a deleted volume that still has views (or clones of its base)
                            to serve; removed when the last of them goes

Only names of these forms are ebsemu's, and delete removes an image only if it carries the
image-meta key, so foreign images in a shared pool are never touched. With ``image_prefix`` set,
every image name starts with it (``<prefix>vol-…``, ``deleted.<prefix>vol-…``) and only those are
this backend's: several installations share one pool, each seeing its own volumes only.

Create (``rbd create --size``) and extend (``rbd resize``) are O(1) whatever the size. Freeze is
``rbd snap create``. The service reads a view through ``open_view``: ``rbd export-diff
--whole-object`` streams the view's allocated objects (``iter_blocks``), or, when the volume
still has the base of an earlier captured view, only the objects changed since it
(``changed_blocks``, zero blocks included: they replace the base's blocks). Once a capture has
completed the service calls ``keep_view``: the view's RBD snapshot is renamed to ``….base`` and
the previous base goes. ``drop_view`` removes a view or a base (when its snapshot is deleted;
a base that an open view is diffing against goes when that view is closed).
A volume deleted while views of it are pending is renamed to ``deleted.vol-…`` and removed
with its last view. The diff streams are parsed as ``rbd`` writes them, one block at a time
(a runner that cannot stream, an ``ssh://`` host's, returns each diff whole, held in memory).

Calls that read the listing and then change a volume's image or its views' snapshots (delete,
keep, drop, clone, fast restores) hold that volume's lock; calls on other volumes go on.

``clone_from_view`` makes a volume from a kept base with ``rbd clone`` (O(1)); the base is
protected first (clone format 1; format 2 clusters accept that too). A protected base with
clones stays until the clones are deleted (its snapshot's deletion then only logs).

``keep_for_fast_restores`` renames a snapshot's ``….base`` to ``….fsr`` and protects it: later
views of the volume no longer replace it, and ``clone_from_view`` clones it. The volume's next
view is then read whole (no base). ``release_fast_restores`` gives it back as the base when
the volume has none, else removes it; ``drop_view`` removes it with its snapshot.

Writes (``write_blocks``) go in as ``rbd import-diff`` streams built from the blocks: data
runs as write records, zero runs as zero records, so holes stay unallocated.

Free space is ``ceph df``'s max_avail of the pool, refreshed by every call that changes space.
A cluster without a ceph-mgr reports no pool statistics: free space is then unknown (the
scheduler still places volumes there when no other host of the zone has known space).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from backends.base import RbdSource
from backends.errors import (
    BackendError,
    SetupError,
    command_failure,
)
from backends.loop_bridge import LoopBridge
from backends.options import Options
from backends.rbd_diff import DiffStats, Read, diff_blocks, import_stream, parse_extents
from ebsemu.locks import ResourceLocks
from ebsemu.model import BLOCK_SIZE, ZERO_BLOCK
from hostcmds import (
    CommandError,
    CommandNotFound,
    CommandResult,
    CommandRunner,
    CommandTemplates,
    HostCommandError,
    StreamingRunner,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

TOOL = "rbd"
TEMPLATES = (
    "versionCmd",
    "listCmd",
    "listLongCmd",
    "infoCmd",
    "createCmd",
    "metaSetCmd",
    "metaGetCmd",
    "resizeCmd",
    "renameCmd",
    "trashMoveCmd",
    "trashRemoveCmd",
    "trashListCmd",
    "snapCreateCmd",
    "snapRenameCmd",
    "snapRemoveCmd",
    "snapProtectCmd",
    "snapUnprotectCmd",
    "cloneCmd",
    "exportDiffCmd",
    "exportDiffFromCmd",
    "importDiffCmd",
    "dfCmd",
)
OPTIONS = ("pool", "conf", "user", "command_timeout", "image_prefix")
META_KEY = "ebsemu.volume"
BASE_SUFFIX = ".base"
FSR_SUFFIX = ".fsr"
GONE_SUFFIX = ".gone"  # a snapshot no longer wanted, kept only while clones of it exist
DELETED_PREFIX = "deleted."
MIB = 1 << 20
TRANSFER_BLOCKS = 64  # 32 MiB per import-diff command
LIST_PAUSE, LIST_PAUSE_MAX, LIST_WAIT = 0.1, 2.0, 100.0  # s: 0.1, 0.2, … 1.6, 2, 2, … ≤ 100

_VOLUME = re.compile(r"vol-[0-9a-f]{8,17}")
_VIEW = re.compile(r"snap-[0-9a-f]{8,17}")
_PREFIX = re.compile(r"[A-Za-z0-9_.-]*")
_ALREADY_PROTECTED = re.compile(r"snap is already protected")
_PROTECTED = re.compile(r"is protected from removal")
_IMAGE_GONE = re.compile(r"listing images failed: \(2\) No such file or directory")
_NO_POOL = re.compile(r"error opening pool")
_NO_TRASH_ENTRY = re.compile(r"from trash: \(2\) No such file or directory")
_NO_SPACE = re.compile(r"no space left|ENOSPC|quota", re.I)


def _check_volume(volume_id: str) -> str:
    if not _VOLUME.fullmatch(volume_id):
        raise BackendError(f"invalid volume id {volume_id!r}")
    return volume_id


def _check_view(view_id: str) -> str:
    if not _VIEW.fullmatch(view_id):
        raise BackendError(f"invalid view id {view_id!r}")
    return view_id


def _mib(size_bytes: int) -> int:
    if size_bytes <= 0 or size_bytes % MIB or size_bytes % BLOCK_SIZE:
        raise BackendError(f"volume size {size_bytes} is not a positive number of MiB")
    return size_bytes // MIB


def backend_error(exc: HostCommandError, doing: str) -> BackendError:
    return command_failure(exc, doing, _NO_SPACE)


@dataclass(frozen=True)
class RbdConfig:
    """``pool``: the RBD pool; ``conf``: ceph.conf on the storage host (its keyring option
    gives the key); ``user``: the Ceph client id (client.<user>); ``image_prefix``: what
    every image name of this backend starts with."""

    pool: str
    conf: str = "/etc/ceph/ceph.conf"
    user: str = "admin"
    command_timeout: float = 120.0
    image_prefix: str = ""


@dataclass(frozen=True)
class Entry:
    """One line of ``rbd ls --long``: an image, or (``snap`` set) one of its snapshots."""

    image: str
    size_bytes: int
    snap: str | None = None
    snap_id: int = 0
    protected: bool = False
    parent: str | None = None


def parse_listing(text: str) -> list[Entry]:
    try:
        rows = json.loads(text or "[]")
    except json.JSONDecodeError as exc:
        raise BackendError(f"rbd ls printed no JSON: {exc}") from None
    entries = []
    for row in rows:
        parent = row.get("parent")
        entries.append(
            Entry(
                image=str(row["image"]),
                size_bytes=int(row.get("size", 0)),
                snap=row.get("snapshot"),
                snap_id=int(row.get("snapshot_id", 0)),
                protected=str(row.get("protected", "false")) == "true",
                parent=None if not parent else f"{parent.get('image')}@{parent.get('snapshot')}",
            )
        )
    return entries


def check_prefix(prefix: str) -> str:
    if not _PREFIX.fullmatch(prefix) or prefix.startswith(DELETED_PREFIX):
        raise SetupError(
            f"[storage]: image_prefix {prefix!r} is not letters, digits and _.- "
            f"(nor starts with {DELETED_PREFIX!r})"
        )
    return prefix


class RbdView:
    """A frozen view of a volume, read as the blocks an ``rbd export-diff`` stream holds."""

    def __init__(
        self,
        open_diff: Callable[[str | None], AbstractContextManager[Read]],
        size_bytes: int,
        view_id: str,
        base_view_id: str | None,
        release: Callable[[], None] = lambda: None,
    ) -> None:
        self._open_diff = open_diff  # (base snapshot name or None) -> the diff stream's reader
        self._release = release  # called once, at close (lets the base go)
        self._size = size_bytes
        self._view_id = view_id
        self._base_view_id = base_view_id
        self.stats = DiffStats()

    @property
    def size_bytes(self) -> int:
        return self._size

    @property
    def base_view_id(self) -> str | None:
        """The view whose capture this one's changes apply to (None: no base kept)."""
        return self._base_view_id

    def iter_blocks(self, start_index: int = 0) -> Iterator[tuple[int, bytes]]:
        with self._open_diff(None) as read:
            extents = parse_extents(read, self.stats)
            for index, data in diff_blocks(extents, self._size, whole_blocks=False):
                if index >= start_index and data != ZERO_BLOCK:
                    yield index, data

    def changed_blocks(self) -> Iterator[tuple[int, bytes]]:
        """Every block that differs from the base view (zero blocks included), index order."""
        if self._base_view_id is None:
            raise BackendError(f"view {self._view_id} has no base to read changes from")
        with self._open_diff(self._base_view_id + BASE_SUFFIX) as read:
            extents = parse_extents(read, self.stats)
            yield from diff_blocks(extents, self._size, whole_blocks=True)

    def close(self) -> None:
        release, self._release = self._release, lambda: None
        release()
        log.info(
            "view %s: read %d data extents (%d bytes) and %d zero extents%s",
            self._view_id,
            self.stats.data_extents,
            self.stats.data_bytes,
            self.stats.zero_extents,
            f" changed since {self._base_view_id}" if self._base_view_id else "",
        )


class RbdStorage:
    """StorageBackend on a Ceph RBD pool. Build it with ``from_options``."""

    def __init__(
        self, runner: CommandRunner, templates: CommandTemplates, config: RbdConfig
    ) -> None:
        templates.require(TOOL, TEMPLATES)
        self._runner = runner
        self._templates = templates
        self._config = config
        self._free_bytes: int | None = None
        self._bridge = LoopBridge("rbd")
        # Bases an open view diffs against, and those whose drop waits for that view's close
        # (a snapshot deleted while the next one is being read from it).
        self._bases_read: dict[str, int] = {}
        self._drop_after_read: set[str] = set()
        self._guard = threading.Lock()
        # One lock per volume, held while its image or its views' RBD snapshots change in
        # several steps (read the listing, then protect, clone, rename or remove): a delete,
        # a view kept, dropped or cloned. Calls on different volumes run side by side.
        self._locks = ResourceLocks()
        # The volume whose image holds each view's RBD snapshot, as of the last listing (a
        # view never moves to another volume's image).
        self._view_volumes: dict[str, str] = {}

    @classmethod
    def from_options(
        cls, options: Mapping[str, str], *, runner: CommandRunner, templates: CommandTemplates
    ) -> RbdStorage:
        opts = Options("storage", options)
        opts.refuse_unknown(OPTIONS)
        config = RbdConfig(
            pool=opts.text("pool", "rbd"),
            conf=opts.text("conf", RbdConfig.conf),
            user=opts.text("user", RbdConfig.user),
            command_timeout=opts.number("command_timeout", RbdConfig.command_timeout),
            image_prefix=check_prefix(options.get("image_prefix", "").strip()),
        )
        return cls(runner, templates, config)

    @property
    def config(self) -> RbdConfig:
        return self._config

    # -- control path -------------------------------------------------------------------------

    async def check_setup(self) -> None:
        pool = self._config.pool
        try:
            await self._run("versionCmd")
        except CommandNotFound as exc:
            raise SetupError("rbd is not installed (apt-get install ceph-common)") from exc
        except HostCommandError as exc:
            raise SetupError(f"rbd does not run on the storage host: {exc}") from exc
        try:
            entries = await self._entries()
        except HostCommandError as exc:
            raise SetupError(
                f"RBD pool {pool} is not usable with {self._config.conf} as "
                f"client.{self._config.user} ({exc}); create it with `ceph osd pool create "
                f"{pool}` and `rbd pool init {pool}`, or set pool = … in [storage]"
            ) from exc
        await self._collect(entries, holding=None)
        try:
            await self._purge_trash()
        except (HostCommandError, BackendError) as exc:  # only space is at stake: start anyway
            log.warning("cannot remove this backend's images from pool %s's trash: %s", pool, exc)
        await self._refresh_free()

    async def create(self, volume_id: str, size_bytes: int) -> None:
        image = self._image_of(volume_id)
        size_mib = _mib(size_bytes)
        try:
            existing = await self._size_of(image)
            if existing is not None:
                await self._require_ours(image)
                if existing != size_bytes:
                    raise BackendError(
                        f"volume {volume_id} exists with {existing} bytes, not {size_bytes}"
                    )
                log.info("volume %s already exists with that size", volume_id)
                return
            await self._run("createCmd", image=image, sizeMiB=size_mib)
            await self._tag(image, volume_id)
            await self._refresh_free()
        except HostCommandError as exc:
            raise backend_error(exc, f"cannot create volume {volume_id}") from exc
        log.info("created volume %s of %d bytes in pool %s", volume_id, size_bytes, self._pool)

    async def delete(self, volume_id: str) -> None:
        # Under the volume's lock: a view of it being dropped (`snap rm`) holds the image open,
        # and rbd moves no image with watchers to the trash. Free space is read after it: `ceph df`
        # takes about a second, which other calls on the volume need not wait for.
        async with self._locks.hold(volume_id):
            await self._delete(volume_id)
        await self._refresh(f"cannot delete volume {volume_id}")

    async def _delete(self, volume_id: str) -> None:
        image = self._image_of(volume_id)
        try:
            entries = await self._entries()
            if _image(entries, image) is None:
                log.info("volume %s: no image; nothing to delete", volume_id)
                await self._collect(entries, holding=volume_id)
                return
            await self._require_ours(image)
            for snap in _snaps(entries, image):
                if snap.snap is not None and snap.snap.endswith(BASE_SUFFIX):
                    await self._remove_snap(snap)
            entries = await self._entries()
            if _snaps(entries, image):
                kept = ", ".join(str(s.snap) for s in _snaps(entries, image))
                await self._run("renameCmd", image=image, newImage=DELETED_PREFIX + image)
                log.info("volume %s: kept as %s%s for %s", volume_id, DELETED_PREFIX, image, kept)
            else:
                await self._remove_image(image)
            await self._collect(await self._entries(), holding=volume_id)
        except HostCommandError as exc:
            raise backend_error(exc, f"cannot delete volume {volume_id}") from exc
        log.info("deleted volume %s", volume_id)

    async def extend(self, volume_id: str, size_bytes: int, *, one_device: bool = False) -> None:
        # An RBD image is one device at any size: ``one_device`` asks for nothing more.
        image = self._image_of(volume_id)
        size_mib = _mib(size_bytes)
        try:
            current = _image(await self._entries(), image)
            if current is None:
                raise BackendError(f"no volume {volume_id} in pool {self._pool}")
            if current.size_bytes > size_bytes:
                raise BackendError(
                    f"volume {volume_id} has {current.size_bytes} bytes; "
                    f"cannot shrink to {size_bytes}"
                )
            if current.size_bytes < size_bytes:
                await self._run("resizeCmd", image=image, sizeMiB=size_mib)
        except HostCommandError as exc:
            raise backend_error(exc, f"cannot extend volume {volume_id}") from exc
        log.info("volume %s: %d bytes", volume_id, size_bytes)

    async def list_volumes(self) -> list[str]:
        try:
            entries = await self._entries()
        except HostCommandError as exc:
            raise backend_error(exc, "cannot list volumes") from exc
        return sorted(
            volume
            for e in entries
            if e.snap is None
            and not e.image.startswith(DELETED_PREFIX)
            and (volume := self._volume_of(e.image))
        )

    async def health(self, sizes: Mapping[str, int]) -> dict[str, str]:
        try:
            entries = await self._entries()
        except HostCommandError as exc:
            raise backend_error(exc, "cannot check volumes") from exc
        problems: dict[str, str] = {}
        for volume_id, size_bytes in sizes.items():
            image = self._image_of(volume_id)
            found = _image(entries, image)
            if found is None:
                problems[volume_id] = f"its RBD image {self._pool}/{image} is missing"
            elif found.size_bytes != size_bytes:
                problems[volume_id] = (
                    f"its RBD image holds {found.size_bytes} bytes, not {size_bytes}"
                )
        return problems

    async def freeze(self, volume_id: str, view_id: str) -> None:
        image, snap = self._image_of(volume_id), _check_view(view_id)
        try:
            entries = await self._entries()
            if _image(entries, image) is None:
                raise BackendError(f"no volume {volume_id} in pool {self._pool}")
            if any(e.snap == snap for e in _snaps(entries, image)):
                log.info("view %s already exists; kept", view_id)
                return
            await self._run("snapCreateCmd", image=image, snap=snap)
            self._view_volumes[snap] = volume_id
        except HostCommandError as exc:
            raise backend_error(exc, f"cannot freeze volume {volume_id} as {view_id}") from exc
        log.info("froze volume %s as view %s", volume_id, view_id)

    async def keep_view(self, view_id: str) -> None:
        async with self._holding_view(view_id) as volume_id:
            await self._keep_view(view_id, volume_id)
        await self._refresh(f"cannot keep view {view_id}")

    async def drop_view(self, view_id: str) -> None:
        async with self._holding_view(view_id) as volume_id:
            await self._drop_view(view_id, volume_id)
        await self._refresh(f"cannot drop view {view_id}")

    async def _keep_view(self, view_id: str, volume_id: str) -> None:
        """The view has been captured: keep it as the base of its volume's next diff,
        replacing the volume's older base; a newer base already kept wins (this view goes)."""
        snap = _check_view(view_id)
        try:
            entries = await self._entries()
            view = _find_snap(entries, snap, self._ours)
            if view is None:
                log.info("view %s: gone; nothing to keep", view_id)
                return
            if str(view.snap).endswith(FSR_SUFFIX):
                log.info("view %s: kept for fast snapshot restores already", view_id)
                return
            bases = [
                e for e in _snaps(entries, view.image)
                if e.snap is not None and e.snap.endswith(BASE_SUFFIX) and e.snap != view.snap
            ]  # fmt: skip
            deleted = view.image.startswith(DELETED_PREFIX)  # no next view to diff
            if deleted or any(b.snap_id > view.snap_id for b in bases):
                await self._remove_snap(view)
                await self._collect(await self._entries(), holding=volume_id)
                return
            if view.snap == snap:
                await self._run(
                    "snapRenameCmd", image=view.image, snap=snap, newSnap=snap + BASE_SUFFIX
                )
            for base in bases:
                older = str(base.snap).removesuffix(BASE_SUFFIX)
                if self._defer_drop(older):  # a view being read diffs against it
                    log.info("view %s: base %s is being read; dropped after", view_id, older)
                    continue
                await self._remove_snap(base)
        except HostCommandError as exc:
            raise backend_error(exc, f"cannot keep view {view_id}") from exc
        log.info("view %s: kept as the diff base of %s", view_id, view.image)

    async def _drop_view(self, view_id: str, volume_id: str) -> None:
        snap = _check_view(view_id)
        try:
            entries = await self._entries()
            view = _find_snap(entries, snap, self._ours)
            if view is not None and self._defer_drop(view_id):
                log.info("view %s: a view being read diffs against it; dropped after", view_id)
                return
            if view is not None:
                await self._remove_snap(view, gone=True)
                entries = await self._entries()
            await self._collect(entries, holding=volume_id)
        except HostCommandError as exc:
            raise backend_error(exc, f"cannot drop view {view_id}") from exc

    async def list_views(self) -> list[str]:
        try:
            entries = await self._entries()
        except HostCommandError as exc:
            raise backend_error(exc, "cannot list views") from exc
        return sorted(
            e.snap for e in entries
            if e.snap is not None and self._ours(e.image) and _VIEW.fullmatch(e.snap)
        )  # fmt: skip

    async def clone_from_view(self, view_id: str, volume_id: str, size_bytes: int) -> bool:
        """Make the volume a clone of the view's kept base (O(1)), grown to ``size_bytes``.
        False when no base of that view is kept here (restore its blocks instead)."""
        image = self._image_of(volume_id)
        try:
            # Under the source volume's lock: between the listing and the clone, a delete of
            # that volume or a drop of the view would unprotect and remove the base it found.
            async with self._holding_view(view_id):
                base = await self._clone(view_id, volume_id, size_bytes)
            if base is None:
                return False
            try:
                await self._tag(image, volume_id)
                if base.size_bytes < size_bytes:
                    await self._run("resizeCmd", image=image, sizeMiB=_mib(size_bytes))
            except HostCommandError:
                await self._discard_image(image)
                raise
        except HostCommandError as exc:
            raise backend_error(exc, f"cannot clone {view_id} as {volume_id}") from exc
        log.info("volume %s: cloned from %s@%s", volume_id, base.image, base.snap)
        return True

    async def _clone(self, view_id: str, volume_id: str, size_bytes: int) -> Entry | None:
        """Clone the view's kept base (for fast restores or as a diff base) as the volume's
        image; the base cloned, or None when none is kept or it is larger than the volume."""
        names = (_check_view(view_id) + FSR_SUFFIX, view_id + BASE_SUFFIX)
        image = self._image_of(volume_id)
        entries = await self._entries()
        base = next((e for e in entries if e.snap in names and self._ours(e.image)), None)
        if base is None or base.size_bytes > size_bytes:
            return None
        if _image(entries, image) is not None:
            raise BackendError(f"volume {volume_id} exists already; cannot clone it")
        try:
            if not base.protected:
                await self._protect(base)
            await self._run("cloneCmd", image=base.image, snap=str(base.snap), child=image)
        except CommandError:
            # Another instance sharing the pool may have removed the base since the listing
            # (this one's locks do not reach it): then restore the blocks instead.
            now = next((e for e in _snaps(await self._entries(), base.image)
                        if e.snap == base.snap), None)  # fmt: skip
            if now is not None and now.protected:
                raise
            log.warning("view %s: its RBD snapshot went while being cloned", view_id)
            return None
        return base

    async def keep_for_fast_restores(self, view_id: str) -> bool | None:
        async with self._holding_view(view_id):
            return await self._keep_for_fast_restores(view_id)

    async def release_fast_restores(self, view_id: str) -> None:
        async with self._holding_view(view_id) as volume_id:
            await self._release_fast_restores(view_id, volume_id)
        await self._refresh(f"cannot release view {view_id}")

    async def _keep_for_fast_restores(self, view_id: str) -> bool | None:
        """Keep the view's RBD snapshot as a protected ``….fsr`` that later views never
        replace, for clones. True once kept; False when the pool holds no captured RBD
        snapshot of the view (an older view whose base has gone: no clone path); None while
        that cannot be done yet (the view is still pending, or a view being read diffs
        against it): ask again."""
        snap = _check_view(view_id)
        try:
            held = _find_snap(await self._entries(), snap, self._ours)
            if held is None or held.image.startswith(DELETED_PREFIX):
                return False
            if held.snap == snap or self._being_read(view_id):
                return None
            if held.snap != snap + FSR_SUFFIX:
                await self._run(
                    "snapRenameCmd",
                    image=held.image,
                    snap=str(held.snap),
                    newSnap=snap + FSR_SUFFIX,
                )
            if not held.protected:
                await self._protect(replace(held, snap=snap + FSR_SUFFIX))
        except HostCommandError as exc:
            raise backend_error(exc, f"cannot keep view {view_id} for fast restores") from exc
        log.info("view %s: kept as %s@%s%s for clones", view_id, held.image, snap, FSR_SUFFIX)
        return True

    async def _release_fast_restores(self, view_id: str, volume_id: str) -> None:
        """Fast snapshot restores of the view are disabled: its ``….fsr`` becomes the volume's
        diff base again when the volume has none, else it is removed (kept, logged, while
        clones of it exist). Idempotent."""
        snap = _check_view(view_id) + FSR_SUFFIX
        try:
            entries = await self._entries()
            held = next((e for e in entries if e.snap == snap and self._ours(e.image)), None)
            if held is None:
                return
            bases = [
                e for e in _snaps(entries, held.image)
                if e.snap is not None and e.snap.endswith(BASE_SUFFIX)
            ]  # fmt: skip
            if bases or held.image.startswith(DELETED_PREFIX):
                await self._remove_snap(held, gone=True)
                await self._collect(await self._entries(), holding=volume_id)
            else:
                await self._run(
                    "snapRenameCmd", image=held.image, snap=snap, newSnap=view_id + BASE_SUFFIX
                )
        except HostCommandError as exc:
            raise backend_error(exc, f"cannot release view {view_id}") from exc
        log.info("view %s: no longer kept for fast snapshot restores", view_id)

    @contextlib.asynccontextmanager
    async def _holding_view(self, view_id: str) -> AsyncIterator[str]:
        """Hold the lock of the volume whose image holds the view's RBD snapshot; yield that
        volume (the view's own id when the pool has no such snapshot: nothing to change)."""
        volume_id = self._view_volumes.get(view_id)
        if volume_id is None:
            await self._entries()  # maps the views of the pool
            volume_id = self._view_volumes.get(view_id, view_id)
        async with self._locks.hold(volume_id):
            yield volume_id

    def _being_read(self, view_id: str) -> bool:
        with self._guard:
            return view_id in self._bases_read

    # -- data path (blocking; run in worker threads) -----------------------------------------

    def open_view(self, view_id: str) -> RbdView:
        snap = _check_view(view_id)
        view, base_view_id = self._on_loop(
            lambda: self._view_and_base(view_id), f"cannot open view {view_id}"
        )

        def open_diff(from_snap: str | None) -> AbstractContextManager[Read]:
            if from_snap is None:
                return self._diff_stream(view_id, "exportDiffCmd", image=view.image, snap=snap)
            return self._diff_stream(
                view_id, "exportDiffFromCmd", image=view.image, snap=snap, fromSnap=from_snap
            )

        if base_view_id is None:
            return RbdView(open_diff, view.size_bytes, view_id, None)
        return RbdView(
            open_diff,
            view.size_bytes,
            view_id,
            base_view_id,
            lambda: self._done_reading(base_view_id),
        )

    async def _view_and_base(self, view_id: str) -> tuple[Entry, str | None]:
        """The view's RBD snapshot and the view whose kept base it diffs against, marked as
        being read until ``_done_reading``. Under the volume's lock: a view kept or dropped
        meanwhile would remove the base between the listing and the mark."""
        snap = _check_view(view_id)
        async with self._holding_view(view_id):
            entries = await self._entries()
            view = next((e for e in entries if e.snap == snap and self._ours(e.image)), None)
            if view is None:
                raise BackendError(f"no view {view_id} in pool {self._pool}")
            bases = [
                e for e in _snaps(entries, view.image)
                if e.snap is not None and e.snap.endswith(BASE_SUFFIX)
                and e.snap_id < view.snap_id
            ]  # fmt: skip
            base = max(bases, key=lambda e: e.snap_id, default=None)
            if base is None:
                return view, None
            base_view_id = _view_of(str(base.snap))
            with self._guard:
                self._bases_read[base_view_id] = self._bases_read.get(base_view_id, 0) + 1
            return view, base_view_id

    @contextlib.contextmanager
    def _diff_stream(self, view_id: str, key: str, **values: str) -> Iterator[Read]:
        """An export-diff stream of the view, read as rbd writes it. A runner that cannot
        stream (an ssh:// host's) returns the whole diff at once: it is then held in memory."""
        doing = f"cannot read view {view_id}"
        if not isinstance(self._runner, StreamingRunner):

            async def whole() -> CommandResult:
                return await self._run(key, input=None, check=True, **values)

            stream = self._on_loop(whole, doing).stdout
            yield io.BytesIO(stream).read
            return
        argv = self._argv(key, **values)
        try:
            with self._runner.read_stream(argv, timeout=self._config.command_timeout) as read:
                yield read
        except HostCommandError as exc:
            raise backend_error(exc, doing) from exc

    def _done_reading(self, base_view_id: str) -> None:
        """A view diffing against ``base_view_id`` closed: drop the base if that waited."""
        with self._guard:
            left = self._bases_read.pop(base_view_id) - 1
            if left:
                self._bases_read[base_view_id] = left
            drop = not left and base_view_id in self._drop_after_read
            if drop:
                self._drop_after_read.discard(base_view_id)
        if drop:
            try:
                self._on_loop(lambda: self.drop_view(base_view_id), f"cannot drop {base_view_id}")
            except BackendError as exc:  # the next keep_view of the volume removes it
                log.error(
                    "view %s: dropping it after its reader closed failed: %s", base_view_id, exc
                )

    def _defer_drop(self, view_id: str) -> bool:
        with self._guard:
            if view_id not in self._bases_read:
                return False
            self._drop_after_read.add(view_id)
            return True

    def write_blocks(self, volume_id: str, blocks: Iterable[tuple[int, bytes]]) -> None:
        image = self._image_of(volume_id)
        entries = self._on_loop(self._entries, f"cannot write volume {volume_id}")
        found = _image(entries, image)
        if found is None:
            raise BackendError(f"no volume {volume_id} in pool {self._pool}")
        block_count = found.size_bytes // BLOCK_SIZE
        runs: list[tuple[int, list[bytes]]] = []
        pending = 0
        written = 0
        for index, data in blocks:
            if len(data) != BLOCK_SIZE or not 0 <= index < block_count:
                raise BackendError(
                    f"block {index} ({len(data)} bytes) does not fit volume {volume_id} "
                    f"of {block_count} blocks of {BLOCK_SIZE} bytes"
                )
            last = runs[-1] if runs else None
            zero = data == ZERO_BLOCK
            if (
                last is not None
                and index == last[0] + len(last[1])
                and zero == (last[1][0] == ZERO_BLOCK)
            ):
                last[1].append(data)
            else:
                runs.append((index, [data]))
            pending += 1
            written += not zero
            if pending >= TRANSFER_BLOCKS:
                self._import(image, runs)
                runs, pending = [], 0
        if runs:
            self._import(image, runs)
        self._on_loop(self._refresh_free, "cannot read free space")
        log.info("wrote %d blocks into volume %s", written, volume_id)

    def free_bytes(self) -> int:
        if self._free_bytes is None:
            raise BackendError(
                f"free space of RBD pool {self._pool} is not known (ceph df gives no pool "
                "statistics without a running ceph-mgr)"
            )
        return self._free_bytes

    def device_path(self, volume_id: str) -> str:
        """``pool/image``: what tgt's rbd backing store and ``rbd device map`` take."""
        return f"{self._pool}/{self._image_of(volume_id)}"

    def disk_source(self, volume_id: str) -> RbdSource:
        """Where a VMM host with Ceph access (librbd) finds the volume."""
        return RbdSource(
            pool=self._pool,
            image=self._image_of(volume_id),
            conf=self._config.conf,
            user=self._config.user,
        )

    # -- implementation -----------------------------------------------------------------------

    @property
    def _pool(self) -> str:
        return self._config.pool

    def _image_of(self, volume_id: str) -> str:
        return self._config.image_prefix + _check_volume(volume_id)

    def _volume_of(self, image: str) -> str | None:
        """The volume an image of this backend holds (deleted or not); None: not ours."""
        name = image.removeprefix(DELETED_PREFIX)
        if not name.startswith(self._config.image_prefix):
            return None
        volume = name.removeprefix(self._config.image_prefix)
        return volume if _VOLUME.fullmatch(volume) else None

    def _ours(self, image: str) -> bool:
        return self._volume_of(image) is not None

    def _import(self, image: str, runs: list[tuple[int, list[bytes]]]) -> None:
        stream = import_stream(runs)
        self._on_loop(
            lambda: self._run("importDiffCmd", image=image, input=stream),
            f"cannot write volume {image}",
        )

    def _on_loop(self, make: Callable[[], Coroutine[Any, Any, T]], doing: str) -> T:
        try:
            return self._bridge.call(make, self._config.command_timeout + 5.0)
        except HostCommandError as exc:
            raise backend_error(exc, doing) from exc

    async def _run(
        self, key: str, *, input: bytes | None = None, check: bool = True, **values: str | int
    ) -> CommandResult:
        self._bridge.remember()
        argv = self._argv(key, **values)
        return await self._runner.run(
            argv, timeout=self._config.command_timeout, input=input, check=check
        )

    def _argv(self, key: str, **values: str | int) -> list[str]:
        return self._templates.render(
            TOOL, key, {"conf": self._config.conf, "user": self._config.user, "pool": self._pool},
            **values,
        )  # fmt: skip

    async def _size_of(self, image: str) -> int | None:
        """The image's size in bytes, None when the pool has no such image. Unlike the long
        listing, `rbd ls` opens no image: an image being removed does not hold it back."""
        try:
            names = json.loads((await self._run("listCmd")).text or "[]")
            if image not in names:
                return None
            return int(json.loads((await self._run("infoCmd", image=image)).text)["size"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise BackendError(f"rbd printed no image listing or size: {exc}") from None

    async def _entries(self) -> list[Entry]:
        # `rbd ls --long` opens every image it has listed: one whose name goes meanwhile fails
        # the whole listing with ENOENT. This service removes images through the trash (the
        # name goes at once); another user of the pool may `rbd rm` one, which keeps the name
        # until its objects have gone (15 s or more for 64 TiB). List again, for 100 s at most.
        pause, deadline = LIST_PAUSE, time.monotonic() + LIST_WAIT
        while True:
            try:
                entries = parse_listing((await self._run("listLongCmd")).text)
                self._view_volumes = {
                    _view_of(e.snap): volume
                    for e in entries
                    if e.snap is not None and (volume := self._volume_of(e.image))
                }
                return entries
            except CommandError as exc:
                gone = _IMAGE_GONE.search(exc.stderr) and not _NO_POOL.search(exc.stderr)
                if not gone or time.monotonic() + pause > deadline:
                    raise
            log.info("rbd ls: an image is being removed; listing again in %.1f s", pause)
            await asyncio.sleep(pause)
            pause = min(2 * pause, LIST_PAUSE_MAX)

    async def _tag(self, image: str, volume_id: str) -> None:
        """Mark the image as the volume's; an image that cannot be marked is removed."""
        try:
            await self._run("metaSetCmd", image=image, metaKey=META_KEY, metaValue=volume_id)
        except HostCommandError:
            await self._discard_image(image)
            raise

    async def _remove_image(self, image: str) -> None:
        """Remove an image: ``rbd trash mv`` takes its name away at once, then ``rbd trash rm``
        removes its objects (15 s for an empty 64 TiB image). A plain ``rbd rm`` keeps the
        name until the end, and every long listing of the pool fails with ENOENT meanwhile."""
        result = await self._run("infoCmd", image=image)
        try:
            image_id = str(json.loads(result.text)["id"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise BackendError(f"rbd info printed no id of {self._pool}/{image}: {exc}") from None
        await self._run("trashMoveCmd", image=image)
        await self._empty_trash(image, image_id)

    async def _empty_trash(self, image: str, image_id: str) -> None:
        result = await self._run("trashRemoveCmd", imageId=image_id, check=False)
        stderr = result.stderr.decode(errors="replace")
        if result.returncode != 0 and not _NO_TRASH_ENTRY.search(stderr):
            log.warning(
                "%s (id %s) is in the trash of pool %s, not removed from it yet: %s; removed "
                "at the next start", image, image_id, self._pool, stderr[-200:].strip(),
            )  # fmt: skip

    async def _discard_image(self, image: str) -> None:
        """Remove an image made by a call that failed, if it was made; errors only logged."""
        try:
            if await self._size_of(image) is not None:
                await self._remove_image(image)
        except (HostCommandError, BackendError) as exc:
            log.warning("cannot remove %s after a failed call: %s", image, exc)

    async def _purge_trash(self) -> None:
        """Remove this backend's images left in the pool's trash (a remove cut short)."""
        result = await self._run("trashListCmd")
        try:
            trash = [(str(e["name"]), str(e["id"])) for e in json.loads(result.text or "[]")]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise BackendError(f"rbd printed no trash listing: {exc}") from None
        for image, image_id in trash:
            if self._ours(image):
                log.info("removing %s (id %s) from the trash", image, image_id)
                await self._empty_trash(image, image_id)

    async def _require_ours(self, image: str) -> None:
        result = await self._run("metaGetCmd", image=image, metaKey=META_KEY, check=False)
        if result.returncode != 0 or result.text.strip() != self._volume_of(image):
            raise BackendError(
                f"RBD image {self._pool}/{image} is not marked {META_KEY}={image}; "
                "it is not ebsemu's and is left alone"
            )

    async def _protect(self, snap: Entry) -> None:
        """Protect one of ebsemu's snapshots for clones. Another instance sharing the pool
        may have protected it since the listing: that is as good."""
        assert snap.snap is not None
        try:
            await self._run("snapProtectCmd", image=snap.image, snap=snap.snap)
        except CommandError as exc:
            if not _ALREADY_PROTECTED.search(exc.stderr):
                raise

    async def _remove_snap(self, snap: Entry, *, gone: bool = False) -> None:
        """Remove one of ebsemu's snapshots. A protected one with clones is kept (logged):
        ``gone`` says no view needs it any more, so it is renamed ``<view>.gone``, which
        ``_collect`` removes once its last clone has been deleted."""
        assert snap.snap is not None
        if snap.protected:
            result = await self._run(
                "snapUnprotectCmd", image=snap.image, snap=snap.snap, check=False
            )
            if result.returncode != 0:
                log.info("RBD snapshot %s@%s has clones; kept until they are deleted",
                         snap.image, snap.snap)  # fmt: skip
                if gone and not snap.snap.endswith(GONE_SUFFIX):
                    await self._run(
                        "snapRenameCmd",
                        image=snap.image,
                        snap=snap.snap,
                        newSnap=_view_of(snap.snap) + GONE_SUFFIX,
                    )
                return
        try:
            await self._run("snapRemoveCmd", image=snap.image, snap=snap.snap)
        except CommandError as exc:
            # protected since the listing (by another instance sharing the pool): once more
            if snap.protected or not _PROTECTED.search(exc.stderr):
                raise
            await self._remove_snap(replace(snap, protected=True), gone=gone)

    async def _collect(self, entries: list[Entry], *, holding: str | None) -> None:
        """Remove the snapshots no longer wanted whose last clone has gone (``….gone``, and
        the bases of deleted volumes), then deleted volumes' images left with no snapshot.
        The caller holds the lock of volume ``holding``; another volume's lock is taken only
        if free, else its leftovers stay for a later call to remove."""
        parents = {e.parent for e in entries if e.parent is not None}  # clones' image@snap
        for snap in entries:
            if snap.snap is None or not self._ours(snap.image):
                continue
            unwanted = snap.snap.endswith(GONE_SUFFIX) or (
                snap.snap.endswith(BASE_SUFFIX) and snap.image.startswith(DELETED_PREFIX)
            )
            if unwanted and f"{snap.image}@{snap.snap}" not in parents:
                async with self._holding_if_free(snap.image, holding) as mine:
                    if mine:
                        await self._remove_snap(snap)
        deleted = {
            e.image for e in entries if e.snap is None and e.image.startswith(DELETED_PREFIX)
        }
        if not deleted:
            return
        entries = await self._entries()
        for image in sorted(deleted):
            if not self._ours(image) or _snaps(entries, image):
                continue
            async with self._holding_if_free(image, holding) as mine:
                if not mine:
                    continue
                try:
                    await self._require_ours(image)
                    await self._remove_image(image)
                except HostCommandError as exc:
                    log.warning("cannot remove %s yet: %s", image, exc)
                    continue
            log.info("removed %s: its last view has gone", image)

    @contextlib.asynccontextmanager
    async def _holding_if_free(self, image: str, holding: str | None) -> AsyncIterator[bool]:
        """Whether the image's volume is ``holding`` (locked by the caller already) or its
        lock was free and is now held until the block ends."""
        volume_id = self._volume_of(image)
        if volume_id is None or volume_id == holding:
            yield volume_id is not None
            return
        async with self._locks.try_hold(volume_id) as mine:
            if not mine:
                log.info("%s: its volume is busy; its leftovers are removed later", image)
            yield mine

    async def _refresh(self, doing: str) -> None:
        try:
            await self._refresh_free()
        except HostCommandError as exc:
            raise backend_error(exc, doing) from exc

    async def _refresh_free(self) -> None:
        result = await self._run("dfCmd", check=False)
        if result.returncode != 0:
            self._free_bytes = None
            return
        try:
            pools = json.loads(result.text).get("pools", [])
        except json.JSONDecodeError:
            pools = []
        stats = next((p.get("stats", {}) for p in pools if p.get("name") == self._pool), None)
        free = None if stats is None else stats.get("max_avail")
        if free is None and self._free_bytes is not None:
            log.warning("ceph df gives no statistics of pool %s (no ceph-mgr?)", self._pool)
        self._free_bytes = None if free is None else int(free)


def _view_of(snap: str) -> str:
    """The view an RBD snapshot of ebsemu's is (pending, a base, kept for clones or gone)."""
    for suffix in (BASE_SUFFIX, FSR_SUFFIX, GONE_SUFFIX):
        snap = snap.removesuffix(suffix)
    return snap


def _image(entries: Iterable[Entry], image: str) -> Entry | None:
    return next((e for e in entries if e.image == image and e.snap is None), None)


def _snaps(entries: Iterable[Entry], image: str) -> list[Entry]:
    return [e for e in entries if e.image == image and e.snap is not None]


def _find_snap(entries: Iterable[Entry], view_id: str, ours: Callable[[str], bool]) -> Entry | None:
    """The view's snapshot (pending, kept as a base or for fast restores) on one of ebsemu's
    images."""
    names = (view_id, view_id + BASE_SUFFIX, view_id + FSR_SUFFIX)
    return next((e for e in entries if e.snap in names and ours(e.image)), None)
