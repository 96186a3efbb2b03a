"""The ``lvm`` storage backend: volumes as logical volumes in one LVM volume group.

Volumes are thin LVs in a thin pool by default (``lv_type = thin``): creating one takes the
same instant for 1 GiB as for 16 TiB, unwritten blocks take no space, and a deleted volume's
blocks go back to the pool without being zeroed, because the pool zeroes every block it hands
out again (check_setup insists on a pool with zeroing on). With ``lv_type = linear`` volumes are
plain LVs with all their extents allocated up front; extents come from the volume group's free
space with whatever bytes an earlier LV left there, so a new linear volume, and the range a
linear volume grows by, is zeroed (``zeroCmd``) before the volume is used.

An LV is named after its volume (``vol-…``) or view (``snap-…``) and carries a tag saying what
it holds, so ebsemu's LVs, and any orphans among them, are found in a shared volume group:

    ebsemu_vol_<volume id>     a volume
    ebsemu_view_<view id>      a frozen view of a volume (an LVM snapshot)
    ebsemu_new_<volume id>     a linear volume whose zeroing has not finished (instead of
                               ebsemu_vol_, which replaces it in one metadata update when done)
    ebsemu_grow_<bytes>        on a linear volume: grown, and the range from <bytes> to its end
                               not zeroed yet

An interrupted create or extend leaves its tag behind and the next call finishes the zeroing,
so no volume ever shows bytes it was not given.

A view is an LVM snapshot named after the view: a thin snapshot of a thin volume (no size, no
copy), a copy-on-write snapshot of a linear one, sized ``cow_snapshot_percent`` of the volume
(when writes to the volume fill it while the view is being read, the snapshot turns invalid and
the read fails). ``open_view`` activates the snapshot (``lvchange --activate y
--ignoreactivationskip``: thin snapshots skip activation by default) and reads its block device,
/dev/<vg>/<view>; ``drop_view`` removes it. A linear volume cannot be removed without its
copy-on-write snapshots, so deleting one removes its views too (a snapshot being taken of it then
fails); thin snapshots do not depend on their origin.

Every command comes from the ``lvm`` command templates (hostcmds/lvm.ini) and runs through the
injected runner; ``lvm_config`` (for example ``global{activation=0}`` or a devices filter) is
appended to each LVM command as ``--config <string>``. The data path (open_view, write_blocks)
runs in worker threads: it hands its one command (the activation) to the event loop the control
path runs on and waits for it, then opens the device node on this host, so the volume group
must be local to the service. Volumes are active from lvcreate on; after a reboot the host's
own LVM autoactivation, or write_blocks itself, activates them again.

Free space (``free_bytes``, which the service asks on its event loop, where no command can run)
is the figure learned by the last command that reported it: the volume group's free space for
linear volumes, the thin pool's unused data space for thin ones. Every control-path call that
changes space refreshes it; a thin pool also fills as volumes are written, which it learns at
the next call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from backends.errors import BackendError, SetupError, command_failure
from backends.lvm_config import LvmConfig, config_from_options
from backends.lvm_device import DeviceView, write_device_blocks
from backends.lvm_report import (
    GROW_TAG,
    NEW_TAG,
    VIEW_TAG,
    VOLUME_TAG,
    LogicalVolume,
    VolumeGroup,
    check_name,
    parse_lvs,
    parse_vgs,
)
from ebsemu.model import BLOCK_SIZE
from hostcmds import (
    CommandError,
    CommandResult,
    CommandRunner,
    CommandTemplates,
    HostCommandError,
)

log = logging.getLogger(__name__)

TOOL = "lvm"
TEMPLATES = (
    "versionCmd",
    "vgsCmd",
    "lvsCmd",
    "lvCreateCmd",
    "lvCreateThinCmd",
    "lvExtendCmd",
    "lvReduceCmd",
    "lvRemoveCmd",
    "lvSnapshotCmd",
    "lvThinSnapshotCmd",
    "lvActivateCmd",
    "lvAddTagCmd",
    "lvDelTagCmd",
    "lvRetagCmd",
    "zeroCmd",
)
# What LVM says when the volume group or thin pool cannot hold what was asked.
_NO_SPACE = re.compile(r"insufficient (free|suitable)|reached threshold|not enough free", re.I)

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


def translates_command_errors(
    method: Callable[P, Awaitable[R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """The backend boundary: a host command error escaping a method becomes a BackendError
    (a CapacityError when LVM said it lacked space)."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except HostCommandError as exc:
            raise backend_error(exc) from exc

    return wrapper


def backend_error(exc: HostCommandError, doing: str = "") -> BackendError:
    """The BackendError for a failed command (its stderr's last line is in ``exc``)."""
    return command_failure(exc, doing, _NO_SPACE)


def _check_id(name: str) -> str:
    return check_name(name, "logical volume")


def _check_size(size_bytes: int) -> None:
    if size_bytes <= 0 or size_bytes % BLOCK_SIZE:
        raise BackendError(f"volume size {size_bytes} is not a positive multiple of {BLOCK_SIZE}")


def _named(lvs: Iterable[LogicalVolume], name: str) -> LogicalVolume | None:
    return next((lv for lv in lvs if lv.name == name), None)


def _volume(lvs: Iterable[LogicalVolume], volume_id: str) -> LogicalVolume | None:
    """The LV holding ``volume_id``: named after it and tagged with it."""
    lv = _named(lvs, volume_id)
    return lv if lv is not None and lv.volume_id == volume_id else None


def _view(lvs: Iterable[LogicalVolume], view_id: str) -> LogicalVolume | None:
    lv = _named(lvs, view_id)
    return lv if lv is not None and lv.view_id == view_id else None


class LvmStorage:
    """StorageBackend on LVM. Build it with ``from_options`` from the ``[storage]`` section."""

    def __init__(
        self, runner: CommandRunner, templates: CommandTemplates, config: LvmConfig
    ) -> None:
        templates.require(TOOL, TEMPLATES)
        self._runner = runner
        self._templates = templates
        self._config = config
        self._extent_bytes: int | None = None
        self._free_bytes: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_options(
        cls, options: Mapping[str, str], *, runner: CommandRunner, templates: CommandTemplates
    ) -> LvmStorage:
        config = config_from_options(options)
        return cls(runner, templates, config)

    @property
    def config(self) -> LvmConfig:
        return self._config

    # -- control path ---------------------------------------------------------------------

    async def check_setup(self) -> None:
        vg = self._config.vg
        try:
            await self._run("versionCmd")
        except HostCommandError as exc:
            if isinstance(exc, CommandError) and exc.returncode == 127:  # CommandNotFound too
                raise SetupError("lvm2 is not installed (apt-get install lvm2)") from exc
            raise SetupError(f"lvm does not run on this host: {exc}") from exc
        try:
            group = await self._volume_group()
        except (HostCommandError, BackendError) as exc:
            raise SetupError(
                f"volume group {vg} is not usable ({exc}); create it with "
                f"`vgcreate {vg} DEVICE…` or set vg = … in [storage]"
            ) from exc
        if not self._config.thin:
            self._free_bytes = group.free_bytes
            return
        pool_name = self._config.thin_pool
        try:
            pool = _named(await self._lvs(), pool_name)
            if pool is None or not pool.is_thin_pool:
                raise SetupError(
                    f"{vg}/{pool_name} is not a thin pool; create it with `lvcreate --type "
                    f"thin-pool --extents 90%FREE --name {pool_name} {vg}`, set thin_pool = … "
                    "or lv_type = linear in [storage]"
                )
            if pool.attr[7:8] != "z":
                raise SetupError(
                    f"thin pool {vg}/{pool_name} does not zero the blocks it allocates, so new "
                    f"volumes would show deleted ones' bytes: `lvchange --zero y {vg}/{pool_name}`"
                )
            await self._run("lvActivateCmd", lv=pool_name)
            await self._refresh_free()
        except HostCommandError as exc:
            raise SetupError(f"thin pool {vg}/{pool_name} is not usable: {exc}") from exc

    @translates_command_errors
    async def create(self, volume_id: str, size_bytes: int) -> None:
        name = _check_id(volume_id)
        _check_size(size_bytes)
        existing = _named(await self._lvs(), name)
        if existing is not None:
            await self._keep_existing(existing, volume_id, size_bytes)
            return
        try:
            if self._config.thin:
                await self._run(
                    "lvCreateThinCmd", lv=name, sizeBytes=size_bytes, tag=VOLUME_TAG + volume_id
                )
            elif self._config.zero_linear:
                await self._run("lvCreateCmd", lv=name, sizeBytes=size_bytes, tag=NEW_TAG + name)
                await self._zero(name, 0, await self._rounded(size_bytes))
                await self._run("lvRetagCmd", lv=name, tag=VOLUME_TAG + name, oldTag=NEW_TAG + name)
            else:
                await self._run("lvCreateCmd", lv=name, sizeBytes=size_bytes, tag=VOLUME_TAG + name)
        except (HostCommandError, BackendError) as exc:
            await self._roll_back(name, f"create of volume {volume_id}")
            if isinstance(exc, HostCommandError):
                raise backend_error(exc, f"cannot create volume {volume_id}") from exc
            raise
        await self._refresh_free()
        log.info("created %s volume %s of %d bytes", self._config.lv_type, volume_id, size_bytes)

    @translates_command_errors
    async def delete(self, volume_id: str) -> None:
        name = _check_id(volume_id)
        lvs = await self._lvs()
        lv = _volume(lvs, volume_id)
        if lv is None:
            log.info("volume %s: no LV; nothing to delete", volume_id)
            return
        if not lv.is_thin:  # copy-on-write snapshots cannot outlive their origin
            for view in lvs:
                if view.view_id is not None and view.origin == name:
                    log.warning("removing view %s with its linear origin %s", view.name, name)
                    await self._remove(view.name)
        await self._remove(name)
        await self._refresh_free()
        log.info("deleted volume %s", volume_id)

    @translates_command_errors
    async def extend(self, volume_id: str, size_bytes: int, *, one_device: bool = False) -> None:
        # An LV is one device at any size: ``one_device`` needs nothing more.
        name = _check_id(volume_id)
        _check_size(size_bytes)
        lv = await self._require_volume(volume_id)
        if lv.unzeroed_from is not None:
            await self._finish_pending(lv)
        target = await self._rounded(size_bytes)
        if target < lv.size_bytes:
            raise BackendError(
                f"volume {volume_id} has {lv.size_bytes} bytes; cannot shrink to {size_bytes}"
            )
        if target == lv.size_bytes:
            log.info("volume %s already has %d bytes", volume_id, lv.size_bytes)
            return
        if lv.is_thin or not self._config.zero_linear:
            await self._run("lvExtendCmd", lv=name, sizeBytes=size_bytes)
        else:
            grow_tag = f"{GROW_TAG}{lv.size_bytes}"
            await self._run("lvAddTagCmd", lv=name, tag=grow_tag)
            try:
                await self._run("lvExtendCmd", lv=name, sizeBytes=size_bytes)
                await self._zero(name, lv.size_bytes, target)
                await self._run("lvDelTagCmd", lv=name, tag=grow_tag)
            except HostCommandError as exc:
                await self._undo_extend(name, lv.size_bytes, grow_tag)
                raise backend_error(exc, f"cannot extend volume {volume_id}") from exc
        await self._refresh_free()
        log.info("extended volume %s from %d to %d bytes", volume_id, lv.size_bytes, target)

    @translates_command_errors
    async def health(self, sizes: Mapping[str, int]) -> dict[str, str]:
        lvs = await self._lvs()
        problems: dict[str, str] = {}
        for volume_id, size_bytes in sizes.items():
            lv = _volume(lvs, _check_id(volume_id))
            if lv is None:
                problems[volume_id] = f"its logical volume {self._config.vg}/{volume_id} is missing"
            elif lv.size_bytes < size_bytes:
                problems[volume_id] = (
                    f"its logical volume holds {lv.size_bytes} bytes, not {size_bytes}"
                )
        return problems

    @translates_command_errors
    async def list_volumes(self) -> list[str]:
        return sorted({lv.volume_id for lv in await self._lvs() if lv.volume_id is not None})

    @translates_command_errors
    async def freeze(self, volume_id: str, view_id: str) -> None:
        name, view = _check_id(volume_id), _check_id(view_id)
        lvs = await self._lvs()
        taken = _named(lvs, view)
        if taken is not None:
            if taken.view_id != view_id:
                raise BackendError(f"an LV named {view} exists in {self._config.vg} and is no view")
            log.info("view %s already exists; kept", view_id)
            return
        origin = _volume(lvs, volume_id)
        if origin is None:
            raise BackendError(f"no volume {volume_id} in volume group {self._config.vg}")
        if origin.unzeroed_from is not None:
            raise BackendError(
                f"volume {volume_id} has a range not zeroed yet (an interrupted extend); "
                "extend it again before freezing it"
            )
        try:
            if origin.is_thin:
                await self._run("lvThinSnapshotCmd", snapshot=view, lv=name, tag=VIEW_TAG + view)
            else:
                cow = await self._rounded(
                    max(1, int(origin.size_bytes * self._config.cow_snapshot_percent / 100))
                )
                await self._run(
                    "lvSnapshotCmd", snapshot=view, lv=name, sizeBytes=cow, tag=VIEW_TAG + view
                )
        except HostCommandError as exc:
            await self._roll_back(view, f"freeze of {volume_id} as {view_id}")
            raise backend_error(exc, f"cannot freeze volume {volume_id} as view {view_id}") from exc
        if not origin.is_thin:
            await self._refresh_free()
        log.info("froze volume %s as view %s", volume_id, view_id)

    @translates_command_errors
    async def drop_view(self, view_id: str) -> None:
        view = _check_id(view_id)
        if _view(await self._lvs(), view_id) is None:
            return
        await self._remove(view)
        await self._refresh_free()
        log.info("dropped view %s", view_id)

    @translates_command_errors
    async def list_views(self) -> list[str]:
        return sorted({lv.view_id for lv in await self._lvs() if lv.view_id is not None})

    # -- data path (blocking; run in worker threads) --------------------------------------

    def open_view(self, view_id: str) -> DeviceView:
        """Activate the view's snapshot LV, then open its block device."""
        view = _check_id(view_id)
        self._call_on_loop(lambda: self._activate(view))
        return DeviceView(self._device(view))

    def write_blocks(self, volume_id: str, blocks: Iterable[tuple[int, bytes]]) -> None:
        name = _check_id(volume_id)
        self._call_on_loop(lambda: self._activate(name))
        written = write_device_blocks(self._device(name), blocks, volume_id)
        log.info("wrote %d blocks into volume %s", written, volume_id)

    def free_bytes(self) -> int:
        if self._free_bytes is None:
            raise BackendError("free space is not known before check_setup has run")
        return self._free_bytes

    def device_path(self, volume_id: str) -> str:
        return str(self._device(_check_id(volume_id)))

    # -- implementation -------------------------------------------------------------------

    def _at(self, name: str) -> tuple[str, str]:
        return self._config.vg, name

    def _device(self, name: str) -> Path:
        return self._config.dev_dir / self._config.vg / name

    async def _run(
        self, key: str, *, timeout: float | None = None, **values: str | int
    ) -> CommandResult:
        self._loop = asyncio.get_running_loop()  # the loop the data path's commands run on
        argv = self._templates.render(
            TOOL, key, {"vg": self._config.vg, "pool": self._config.thin_pool, **values}
        )
        if key != "zeroCmd" and self._config.lvm_config is not None:
            argv += ["--config", self._config.lvm_config]
        return await self._runner.run(argv, timeout=timeout or self._config.command_timeout)

    async def _lvs(self) -> list[LogicalVolume]:
        lvs = parse_lvs((await self._run("lvsCmd")).text)
        if self._config.thin:
            pool = _named(lvs, self._config.thin_pool)
            if pool is not None and pool.data_percent is not None:
                self._free_bytes = int(pool.size_bytes * (100 - pool.data_percent) / 100)
        return lvs

    async def _volume_group(self) -> VolumeGroup:
        groups = parse_vgs((await self._run("vgsCmd")).text)
        group = next((g for g in groups if g.name == self._config.vg), None)
        if group is None:
            raise BackendError(f"vgs does not report volume group {self._config.vg}")
        self._extent_bytes = group.extent_bytes
        return group

    async def _refresh_free(self) -> None:
        if self._config.thin:
            await self._lvs()
        else:
            self._free_bytes = (await self._volume_group()).free_bytes

    async def _rounded(self, size_bytes: int) -> int:
        """``size_bytes`` rounded up to whole extents, as LVM allocates it."""
        if self._extent_bytes is None:
            await self._volume_group()
        assert self._extent_bytes is not None
        return -(-size_bytes // self._extent_bytes) * self._extent_bytes

    async def _require_volume(self, volume_id: str) -> LogicalVolume:
        lv = _volume(await self._lvs(), volume_id)
        if lv is None:
            raise BackendError(f"no volume {volume_id} in volume group {self._config.vg}")
        return lv

    async def _keep_existing(self, lv: LogicalVolume, volume_id: str, size_bytes: int) -> None:
        """Keep an LV a previous create left, finishing its zeroing; refuse anything else."""
        if lv.volume_id != volume_id:
            raise BackendError(
                f"an LV named {lv.name} exists in {self._config.vg} without the tag "
                f"{VOLUME_TAG}{volume_id}: it is not this volume"
            )
        if lv.size_bytes != await self._rounded(size_bytes):
            raise BackendError(
                f"volume {volume_id} exists with {lv.size_bytes} bytes, not {size_bytes}"
            )
        if lv.unzeroed_from is not None:
            log.info("volume %s exists; finishing its zeroing", volume_id)
            await self._finish_pending(lv)
        else:
            log.info("volume %s already exists with that size", volume_id)

    async def _zero(self, name: str, start: int, end: int) -> None:
        """Write zeros over bytes ``start`` to ``end`` of the LV."""
        if end > start:
            await self._run(
                "zeroCmd",
                device=str(self._device(name)),
                offset=start,
                length=end - start,
                timeout=self._config.zero_timeout,
            )

    async def _finish_pending(self, lv: LogicalVolume) -> None:
        """Finish what an interrupted create or extend of a linear volume left: zero the range
        its tag names, then drop that tag (a new volume's tag becomes its volume tag)."""
        assert lv.unzeroed_from is not None
        await self._zero(lv.name, lv.unzeroed_from, lv.size_bytes)
        if NEW_TAG + lv.name in lv.tags:
            await self._run(
                "lvRetagCmd", lv=lv.name, tag=VOLUME_TAG + lv.name, oldTag=NEW_TAG + lv.name
            )
        for tag in sorted(t for t in lv.tags if t.startswith(GROW_TAG)):
            await self._run("lvDelTagCmd", lv=lv.name, tag=tag)

    async def _undo_extend(self, name: str, old_size: int, grow_tag: str) -> None:
        """After a failed linear extend: shrink back to the old size, then drop the grow tag.
        Left as it is if that fails: the tag makes the next extend finish the zeroing."""
        try:
            lv = _named(await self._lvs(), name)
            if lv is not None and lv.size_bytes > old_size:
                await self._run("lvReduceCmd", lv=name, sizeBytes=old_size)
            await self._run("lvDelTagCmd", lv=name, tag=grow_tag)
        except (HostCommandError, BackendError) as exc:
            log.error("volume %s: undoing the extend failed (%s); tag %s kept", name, exc, grow_tag)

    async def _remove(self, name: str) -> None:
        """lvremove; a failure is an error only if the LV is still there afterwards."""
        try:
            await self._run("lvRemoveCmd", lv=name)
        except HostCommandError:
            if _named(await self._lvs(), name) is not None:
                raise
            log.info("%s/%s was removed meanwhile", *self._at(name))

    async def _roll_back(self, name: str, what: str) -> None:
        """Remove what a failed create or freeze left behind: an LV of that name with one of
        the backend's tags for it (an LV of someone else's is never touched)."""
        try:
            lv = _named(await self._lvs(), name)
            if lv is not None and name in (lv.volume_id, lv.view_id):
                log.warning("%s failed; removing the LV it left, %s/%s", what, *self._at(name))
                await self._remove(name)
        except (HostCommandError, BackendError) as exc:
            log.error("%s failed and so did removing %s/%s: %s", what, *self._at(name), exc)

    @translates_command_errors
    async def _activate(self, name: str) -> None:
        await self._run("lvActivateCmd", lv=name)

    def _call_on_loop(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run a coroutine from the blocking data path: on the event loop the control path
        ran on (the runner may hold connections bound to it), from this worker thread; with no
        such loop running, on a loop of this thread's own."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise BackendError("the lvm data path blocks: call it from a worker thread")
        loop = self._loop
        if loop is None or loop.is_closed() or not loop.is_running():
            return asyncio.run(make())
        future = asyncio.run_coroutine_threadsafe(make(), loop)
        try:
            return future.result(self._config.command_timeout + 5.0)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise BackendError("the event loop did not run the lvm command in time") from None
