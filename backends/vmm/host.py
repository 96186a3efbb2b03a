"""The host itself as an instance: a volume attaches as a loop device over its file, or, when
it is exported over iSCSI from a storage host, as the disk of an iSCSI login on this host.

Commands come from losetup.ini and iscsiadm.ini, so the same driver serves a remote host through
an SSH runner. A loop device is recognised as a volume's by the volume id in its backing file's
path, an iSCSI disk by the volume id in its target's IQN.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from backends.base import (
    AttachedDisk,
    AttachSpec,
    Domain,
    DomainState,
    IscsiSource,
    LocalSource,
)
from backends.errors import SetupError
from backends.options import Options
from backends.vmm.errors import (
    AttachError,
    DetachError,
    DomainNotFound,
    UnsupportedSource,
    VmmError,
    translates_command_errors,
)
from backends.vmm.iscsi_login import IscsiLogin, IscsiNode, by_path_device, parse_by_path
from backends.vmm.locks import DomainLocks
from backends.vmm.naming import check_volume_id, device_parts, volume_id_in
from hostcmds import (
    CommandError,
    CommandNotFound,
    CommandResult,
    CommandRunner,
    CommandTemplates,
    CommandTimeout,
    HostCommandError,
)

log = logging.getLogger(__name__)

TOOL = "losetup"
TEMPLATES = ("versionCmd", "attachCmd", "detachCmd", "listCmd", "resizeCmd")
LOOP_DEVICE = re.compile(r"/dev/loop[0-9]+")
DELETED = " (deleted)"


@dataclass(frozen=True)
class HostConfig:
    domain: str = "host"  # the name the host has as an instance
    command_timeout: float = 30.0


@dataclass(frozen=True)
class LoopDevice:
    name: str
    back_file: str


def parse_losetup_json(text: str) -> list[LoopDevice]:
    """Parse ``losetup --json --list`` (which prints nothing at all on some versions when no
    loop device is set up)."""
    if not text.strip():
        return []
    try:
        data: Any = json.loads(text)
        entries = data.get("loopdevices", [])
        return [
            LoopDevice(str(entry["name"]), str(entry.get("back-file") or "").removesuffix(DELETED))
            for entry in entries
        ]
    except (ValueError, AttributeError, KeyError, TypeError) as exc:
        raise VmmError(f"cannot parse losetup --json output: {exc}") from exc


class HostVmm:
    """VmmBackend whose one domain is the host: attach = ``losetup --find --show``."""

    shares_disks = True  # a loop device or an iSCSI login locks no one else out

    def __init__(
        self, runner: CommandRunner, templates: CommandTemplates, config: HostConfig | None = None
    ) -> None:
        templates.require(TOOL, TEMPLATES)
        self._runner = runner
        self._templates = templates
        self._config = config or HostConfig()
        self._lock = DomainLocks()
        self._iscsi = IscsiLogin(runner, templates, self._config.command_timeout)

    @classmethod
    def from_options(
        cls, options: Mapping[str, str], *, runner: CommandRunner, templates: CommandTemplates
    ) -> HostVmm:
        opts = Options("vmm host", options)
        opts.refuse_unknown({"domain", "command_timeout"})
        config = HostConfig(
            domain=opts.text("domain", "host"),
            command_timeout=opts.number("command_timeout", 30.0),
        )
        return cls(runner, templates, config)

    async def check_setup(self) -> None:
        try:
            await self._run("versionCmd")
            await self._loops()
        except CommandNotFound as exc:
            raise SetupError("losetup is not installed (apt-get install mount)") from exc
        except (HostCommandError, VmmError) as exc:
            raise SetupError(f"loop devices are not usable on this host: {exc}") from exc

    async def list_domains(self) -> list[Domain]:
        return [Domain(self._config.domain, DomainState.RUNNING)]

    @translates_command_errors
    async def attach(self, domain: str, spec: AttachSpec) -> AttachedDisk:
        async with self._lock(domain):  # the in-use checks and the attach go together
            return await self._attach(domain, spec)

    async def _attach(self, domain: str, spec: AttachSpec) -> AttachedDisk:
        self._check_domain(domain)
        volume_id = check_volume_id(spec.volume_id)
        device_parts(spec.device)
        if isinstance(spec.source, IscsiSource):
            return await self._attach_iscsi(volume_id, spec.source)
        if not isinstance(spec.source, LocalSource):
            raise UnsupportedSource(f"host driver cannot attach a {type(spec.source).__name__}")
        path = spec.source.path
        for loop in await self._loops():
            if loop.back_file == path:
                log.info("%s already on %s", volume_id, loop.name)
                return AttachedDisk(volume_id, None, loop.name, path)
        try:
            result = await self._run("attachCmd", path=path)
        except (CommandError, CommandTimeout) as exc:
            await self._release(path)  # a timed-out losetup may still have bound a device
            raise AttachError(f"losetup of {volume_id}: {exc}") from exc
        name = result.text.strip()
        if not LOOP_DEVICE.fullmatch(name):
            await self._release(path)
            raise AttachError(f"losetup printed {name!r}, not a loop device")
        log.info("attached %s as %s", volume_id, name)
        return AttachedDisk(volume_id, None, name, path)

    async def _attach_iscsi(self, volume_id: str, source: IscsiSource) -> AttachedDisk:
        for disk in await self._iscsi_disks():
            if disk.volume_id == volume_id:
                log.info("%s already logged in as %s", volume_id, disk.handle)
                return disk
        device = await self._iscsi.login(volume_id, source)
        log.info("attached %s over iSCSI as %s", volume_id, device)
        return AttachedDisk(volume_id, None, device, device)

    @translates_command_errors
    async def detach(self, domain: str, volume_id: str, *, force: bool = False) -> None:
        async with self._lock(domain):
            await self._detach(domain, volume_id, force=force)

    async def _detach(self, domain: str, volume_id: str, *, force: bool) -> None:
        check_volume_id(volume_id)
        try:
            self._check_domain(domain)
        except DomainNotFound:
            if force:
                return
            raise
        for loop in await self._loops():
            if volume_id_in(loop.back_file) == volume_id:
                await self._detach_loop(loop)
        for node in (await self._sessions()).values():
            if volume_id_in(node.iqn) == volume_id:
                await self._iscsi.logout(node.portal, node.iqn)

    @translates_command_errors
    async def list_attached(self, domain: str) -> list[AttachedDisk]:
        self._check_domain(domain)
        disks = []
        for loop in await self._loops():
            volume_id = volume_id_in(loop.back_file)
            if volume_id is not None:
                disks.append(AttachedDisk(volume_id, None, loop.name, loop.back_file))
        return disks + await self._iscsi_disks()

    @translates_command_errors
    async def notify_resize(self, domain: str, volume_id: str, size_bytes: int) -> None:
        check_volume_id(volume_id)
        for disk in await self.list_attached(domain):
            if disk.volume_id != volume_id:
                continue
            node = parse_by_path(disk.handle)
            if node is None:
                await self._run("resizeCmd", loopDev=disk.handle)
            else:
                await self._iscsi.rescan(node.portal, node.iqn)
            log.info("%s: %s capacity re-read (%d bytes)", disk.handle, volume_id, size_bytes)
            return
        raise VmmError(f"{volume_id} is not attached to {domain}")

    async def pause(self, domain: str) -> bool:
        """The host cannot be paused: views of its volumes are taken one after another, with
        no common instant (see docs/consistency.md)."""
        self._check_domain(domain)
        log.warning("%s: cannot be paused; its volumes' views are not simultaneous", domain)
        return False

    async def resume(self, domain: str) -> None:
        self._check_domain(domain)

    # -- internals --------------------------------------------------------------------------

    def _check_domain(self, domain: str) -> None:
        if domain != self._config.domain:
            raise DomainNotFound(f"the host VMM has one domain, {self._config.domain!r}")

    async def _run(self, key: str, **values: str) -> CommandResult:
        argv = self._templates.render(TOOL, key, values)
        return await self._runner.run(argv, timeout=self._config.command_timeout)

    async def _sessions(self) -> dict[str, IscsiNode]:
        """The host's iSCSI disks; none where open-iscsi is not installed (no session can be)."""
        try:
            return await self._iscsi.session_disks()
        except CommandNotFound:
            return {}

    async def _iscsi_disks(self) -> list[AttachedDisk]:
        disks = []
        for node in (await self._sessions()).values():
            volume_id = volume_id_in(node.iqn)
            if volume_id is not None:
                device = by_path_device(IscsiSource(node.portal, node.iqn, node.lun))
                disks.append(AttachedDisk(volume_id, None, device, device))
        return disks

    async def _loops(self) -> list[LoopDevice]:
        return parse_losetup_json((await self._run("listCmd")).text)

    async def _detach_loop(self, loop: LoopDevice) -> None:
        try:
            await self._run("detachCmd", loopDev=loop.name)
        except (CommandError, CommandTimeout) as exc:
            if any(other.name == loop.name for other in await self._loops()):
                raise DetachError(f"losetup --detach {loop.name}: {exc}") from exc
        log.info("detached %s (%s)", loop.name, loop.back_file)

    async def _release(self, path: str) -> None:
        """Roll back: detach any loop device bound to ``path``."""
        try:
            for loop in await self._loops():
                if loop.back_file == path:
                    await self._detach_loop(loop)
        except (HostCommandError, VmmError) as exc:
            log.error("rollback of loop device for %s failed: %s", path, exc)
