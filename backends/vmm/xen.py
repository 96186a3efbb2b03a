"""Xen domains through the xl toolstack, or the legacy xm one: the profile names the template
section (xen-xl.ini, xen-xm.ini, or a user-defined one) — the commands are data, not code.

A volume attaches as ``phy:<dom0 device>``; ``block-list`` gives each virtual device's backend
path and the backend's ``params`` (read with xenstore-read) names the dom0 device, which holds the
volume id.
An iSCSI volume is logged in to first (iscsi_login.py) and attached as its by-path device, whose
name carries the target's IQN and so the volume id; detach logs out of the target again.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass

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
    DeviceInUse,
    DomainNotFound,
    InvalidName,
    UnsupportedSource,
    VmmError,
    translates_command_errors,
)
from backends.vmm.iscsi_login import IscsiLogin, parse_by_path
from backends.vmm.locks import DomainLocks
from backends.vmm.naming import check_volume_id, device_basename, volume_id_in
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

TEMPLATES = (
    "infoCmd",
    "listCmd",
    "blockAttachCmd",
    "blockDetachCmd",
    "blockForceDetachCmd",
    "blockListCmd",
    "backendParamsCmd",
)
# Needed by pause/resume only, so that a profile written before them still attaches volumes.
PAUSE_TEMPLATES = ("pauseCmd", "unpauseCmd")
DOMAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
VDEV_NAME = re.compile(r"(xvd|sd|hd)([a-z]+)")

# Linux block majors Xen uses for sd disks 16..127 (sdq..sddx), 16 disks each.
SD_EXTRA_MAJORS = range(65, 72)
HD_MAJORS = (3, 22)  # hda/hdb, hdc/hdd
XVD_MAJOR = 202
SD_MAJOR = 8
EXTENDED = 1 << 28


@dataclass(frozen=True)
class XenConfig:
    profile: str = "xen-xl"  # template section: xen-xl, xen-xm, or a user-defined one
    command_timeout: float = 60.0


@dataclass(frozen=True)
class BlockDevice:
    """One row of ``xl block-list``."""

    vdev: int
    backend_domain: int
    state: int
    backend_path: str


# -- virtual device numbers (Xen's xen-vbd-interface numbering) -----------------------------


def _letters_to_index(letters: str) -> int:
    """a -> 0, z -> 25, aa -> 26 (Linux disk naming)."""
    index = 0
    for ch in letters:
        index = index * 26 + (ord(ch) - ord("a") + 1)
    return index - 1


def _index_to_letters(index: int) -> str:
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("a") + rest) + letters
    return letters


def vdev_number(name: str) -> int:
    """The Xen virtual device number of a whole-disk name: xvdf -> 51792, sdf -> 2128."""
    match = VDEV_NAME.fullmatch(name)
    if not match:
        raise InvalidName(f"not a Xen virtual disk name: {name!r}")
    kind, disk = match.group(1), _letters_to_index(match.group(2))
    if kind == "xvd":
        return (XVD_MAJOR << 8) | (disk << 4) if disk < 16 else EXTENDED | (disk << 8)
    if kind == "sd":
        if disk < 16:
            return (SD_MAJOR << 8) | (disk << 4)
        if disk < 128:
            return ((SD_EXTRA_MAJORS[0] + (disk - 16) // 16) << 8) | (((disk - 16) % 16) << 4)
        return EXTENDED | (disk << 8)
    if disk < 4:
        return (HD_MAJORS[disk // 2] << 8) | ((disk % 2) << 6)
    raise InvalidName(f"no Xen virtual device for {name!r}")


def vdev_name(number: int) -> str | None:
    """The whole-disk name of a virtual device number; None for a partition or unknown major."""
    if number & EXTENDED:
        disk, part = (number >> 8) & 0xFFFFF, number & 0xFF
        return None if part else "xvd" + _index_to_letters(disk)
    major, minor = number >> 8, number & 0xFF
    if major == XVD_MAJOR and not minor & 0xF:
        return "xvd" + _index_to_letters(minor >> 4)
    if major == SD_MAJOR and not minor & 0xF:
        return "sd" + _index_to_letters(minor >> 4)
    if major in SD_EXTRA_MAJORS and not minor & 0xF:
        return "sd" + _index_to_letters(16 + (major - SD_EXTRA_MAJORS[0]) * 16 + (minor >> 4))
    if major in HD_MAJORS and not minor & 0x3F:
        return "hd" + _index_to_letters(HD_MAJORS.index(major) * 2 + (minor >> 6))
    return None


# -- parsing tool output ----------------------------------------------------------------------


def parse_block_list(text: str) -> list[BlockDevice]:
    """Rows of ``xl block-list`` / ``xm block-list``:
    ``Vdev BE handle state evt-ch ring-ref BE-path``."""
    devices = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 7 or not fields[0].isdigit():
            continue  # header, blank or unknown line
        try:
            devices.append(BlockDevice(int(fields[0]), int(fields[1]), int(fields[3]), fields[6]))
        except ValueError:
            log.warning("block-list: unreadable row %r", line)
    return devices


def domain_state(flags: str) -> DomainState:
    """xl/xm list's state flags (r b p s c d, '-' for unset)."""
    if "d" in flags:
        return DomainState.SHUTTING_DOWN
    if any(flag in flags for flag in "spc"):
        return DomainState.STOPPED
    return DomainState.RUNNING


def domain_flags(text: str, domain: str) -> str | None:
    """The state flags of ``domain`` in ``xl list`` / ``xm list`` output; None if not listed."""
    for line in text.splitlines():
        fields = line.rsplit(None, 5)
        if len(fields) == 6 and fields[1].isdigit() and fields[0].strip() == domain:
            return fields[4]
    return None


def parse_domain_list(text: str) -> list[Domain]:
    """Rows of ``xl list`` / ``xm list`` (Name ID Mem VCPUs State Time(s)); dom0 is left out:
    the host itself is the ``host`` VMM's instance."""
    domains = []
    for line in text.splitlines():
        fields = line.rsplit(None, 5)
        if len(fields) != 6 or not fields[1].isdigit():
            continue
        name, domid, flags = fields[0].strip(), int(fields[1]), fields[4]
        if domid == 0:
            continue
        domains.append(Domain(name, domain_state(flags)))
    return domains


class XenVmm:
    """VmmBackend for Xen guests, commands from the profile's templates."""

    # A dom0 device goes to one guest for writing: Xen's block script refuses one that another
    # guest has open writable, so a Multi-Attach volume is attached to one Xen guest only.
    shares_disks = False

    def __init__(
        self, runner: CommandRunner, templates: CommandTemplates, config: XenConfig | None = None
    ) -> None:
        self._config = config or XenConfig()
        self._lock = DomainLocks()
        templates.require(self._config.profile, TEMPLATES)
        self._runner = runner
        self._templates = templates
        self._iscsi = IscsiLogin(runner, templates, self._config.command_timeout)

    @classmethod
    def from_options(
        cls, options: Mapping[str, str], *, runner: CommandRunner, templates: CommandTemplates
    ) -> XenVmm:
        opts = Options("vmm xen", options)
        opts.refuse_unknown({"profile", "command_timeout"})
        config = XenConfig(
            profile=opts.text("profile", "xen-xl"),
            command_timeout=opts.number("command_timeout", 60.0),
        )
        return cls(runner, templates, config)

    async def check_setup(self) -> None:
        try:
            await self._run("infoCmd")
        except CommandNotFound as exc:
            raise SetupError(f"{self._config.profile}: {exc.argv[0]} is not installed") from exc
        except HostCommandError as exc:
            raise SetupError(f"{self._config.profile}: Xen is not running here: {exc}") from exc

    @translates_command_errors
    async def list_domains(self) -> list[Domain]:
        return parse_domain_list((await self._run("listCmd")).text)

    @translates_command_errors
    async def attach(self, domain: str, spec: AttachSpec) -> AttachedDisk:
        async with self._lock(domain):  # the in-use checks and the attach go together
            return await self._attach(domain, spec)

    async def _attach(self, domain: str, spec: AttachSpec) -> AttachedDisk:
        _check_domain(domain)
        volume_id = check_volume_id(spec.volume_id)
        name = device_basename(spec.device)
        vdev = vdev_number(name)
        if not isinstance(spec.source, LocalSource | IscsiSource):
            raise UnsupportedSource(f"xen driver needs a dom0 block device, not {spec.source}")
        for disk in await self.list_attached(domain):
            same_device = disk.device is not None and vdev_number(disk.handle) == vdev
            if disk.volume_id == volume_id:
                if same_device:
                    return disk
                raise AttachError(f"{volume_id} is attached to {domain} as {disk.device}")
            if same_device:
                raise DeviceInUse(f"{spec.device} on {domain} is in use by {disk.volume_id}")
        source = spec.source
        if isinstance(source, IscsiSource):
            path = await self._iscsi.login(volume_id, source)
        else:
            path = source.path
        try:
            await self._run("blockAttachCmd", domUId=domain, dom0Dev=path, domUDev=name)
        except CommandTimeout as exc:
            await self._roll_back(domain, name)
            await self._log_out(source)
            raise AttachError(f"{domain}: block-attach of {volume_id} timed out") from exc
        except CommandError as exc:
            await self._log_out(source)
            raise AttachError(f"{domain}: block-attach of {volume_id}: {exc}") from exc
        log.info("%s: attached %s (%s) as %s", domain, volume_id, path, name)
        return AttachedDisk(volume_id, f"/dev/{name}", name, path)

    @translates_command_errors
    async def detach(self, domain: str, volume_id: str, *, force: bool = False) -> None:
        async with self._lock(domain):
            await self._detach(domain, volume_id, force=force)

    async def _detach(self, domain: str, volume_id: str, *, force: bool) -> None:
        _check_domain(domain)
        check_volume_id(volume_id)
        try:
            disks = await self.list_attached(domain)
        except DomainNotFound:
            if force:
                log.warning("%s: domain is gone; %s counts as detached (force)", domain, volume_id)
                return
            raise
        key = "blockForceDetachCmd" if force else "blockDetachCmd"
        for disk in disks:
            if disk.volume_id != volume_id:
                continue
            try:
                await self._run(key, domUId=domain, domUDev=disk.handle)
            except (CommandError, CommandTimeout) as exc:
                raise DetachError(f"{domain}: block-detach of {volume_id}: {exc}") from exc
            log.info("%s: detached %s (vdev %s)", domain, volume_id, disk.handle)
            node = parse_by_path(disk.source or "")
            if node is not None:
                await self._iscsi.logout(node.portal, node.iqn)

    @translates_command_errors
    async def list_attached(self, domain: str) -> list[AttachedDisk]:
        _check_domain(domain)
        try:
            rows = parse_block_list((await self._run("blockListCmd", domUId=domain)).text)
        except CommandError as exc:
            await self._check_exists(domain)
            raise VmmError(f"{domain}: block-list: {exc}") from exc
        if not rows:
            # xl prints only the header, exit 0, for a domain that does not exist.
            await self._check_exists(domain)
        disks = []
        for row in rows:
            params = (await self._run("backendParamsCmd", bePath=row.backend_path)).text.strip()
            volume_id = volume_id_in(params)
            if volume_id is None:
                continue  # a disk that is not a volume (the guest's root disk)
            name = vdev_name(row.vdev)
            device = f"/dev/{name}" if name else None
            disks.append(AttachedDisk(volume_id, device, name or str(row.vdev), params))
        return disks

    @translates_command_errors
    async def notify_resize(self, domain: str, volume_id: str, size_bytes: int) -> None:
        # There is no xl (or xm) command for it: dom0's blkback notices that its physical
        # device grew, writes the new size to xenstore and the guest's blkfront takes it. Only
        # the device in dom0 must grow: an LV does by itself, an iSCSI disk once dom0's SCSI
        # layer re-reads the LUN's capacity (iscsiadm rescan).
        disk = next((d for d in await self.list_attached(domain) if d.volume_id == volume_id), None)
        if disk is None:
            raise VmmError(f"{volume_id} is not attached to {domain}")
        node = parse_by_path(disk.source or "")
        if node is not None:
            await self._iscsi.rescan(node.portal, node.iqn)
        log.info("%s: %s grew to %d bytes; blkback propagates it", domain, volume_id, size_bytes)

    @translates_command_errors
    async def pause(self, domain: str) -> bool:
        """``xl pause``: the vCPUs are descheduled; requests already queued to blkback still
        complete, new ones are not issued."""
        _check_domain(domain)
        missing = sorted(set(PAUSE_TEMPLATES) - set(self._templates.keys(self._config.profile)))
        if missing:
            raise VmmError(
                f"{self._config.profile}: no {' or '.join(missing)} template; "
                "add them to the profile to pause domains"
            )
        async with self._lock(domain):
            flags = domain_flags((await self._run("listCmd")).text, domain)
            if flags is None:
                raise DomainNotFound(f"no Xen domain {domain}")
            if "p" in flags:
                log.info("%s: paused already, not paused", domain)
                return False
            await self._run("pauseCmd", domUId=domain)
        log.info("%s: paused (%s)", domain, self._config.profile)
        return True

    @translates_command_errors
    async def resume(self, domain: str) -> None:
        _check_domain(domain)
        async with self._lock(domain):
            await self._run("unpauseCmd", domUId=domain)
        log.info("%s: resumed (%s)", domain, self._config.profile)

    async def _check_exists(self, domain: str) -> None:
        if not any(d.name == domain for d in await self.list_domains()):
            raise DomainNotFound(f"no Xen domain {domain}")

    async def _run(self, key: str, **values: str) -> CommandResult:
        argv = self._templates.render(self._config.profile, key, values)
        return await self._runner.run(argv, timeout=self._config.command_timeout)

    async def _log_out(self, source: LocalSource | IscsiSource) -> None:
        if isinstance(source, IscsiSource):
            await self._iscsi.release(source.portal, source.iqn)

    async def _roll_back(self, domain: str, name: str) -> None:
        try:
            await self._run("blockForceDetachCmd", domUId=domain, domUDev=name)
        except HostCommandError as exc:
            log.error("%s: rollback of %s failed: %s", domain, name, exc)


def _check_domain(domain: str) -> None:
    if not DOMAIN_NAME.fullmatch(domain):
        raise InvalidName(f"not a Xen domain name: {domain!r}")
