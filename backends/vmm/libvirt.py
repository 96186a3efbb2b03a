"""libvirt domains through virsh (commands from virsh.ini): attach-disk / detach-disk --live.

Each volume's disk gets the user alias ``ua-ebs-<volume id>-<device>`` and the volume id as its
serial, so ``virsh dumpxml`` tells which volume is attached under which device name.
"""

from __future__ import annotations

import asyncio
import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from backends.base import AttachedDisk, AttachSpec, Domain, DomainState, LocalSource
from backends.errors import SetupError
from backends.options import Options
from backends.vmm.errors import (
    AttachError,
    DetachError,
    DetachTimeout,
    DeviceInUse,
    DomainNotFound,
    InvalidName,
    UnsupportedSource,
    VmmError,
    translates_command_errors,
)
from backends.vmm.naming import (
    check_volume_id,
    compact_serial,
    device_parts,
    volume_id_from_serial,
)
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

TOOL = "virsh"
TEMPLATES = (
    "versionCmd",
    "listCmd",
    "dumpXmlCmd",
    "attachDiskCmd",
    "detachDiskCmd",
    "blockInfoCmd",
    "blockResizeCmd",
)
ALIAS = re.compile(r"ua-ebs-(vol-[0-9a-f]+)-([a-z]+)")
DOMAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
POLL_INTERVAL = 0.2

# virsh list's state column -> EC2 instance state (longest names first: "shut off" vs "off").
VIRSH_STATES: Mapping[str, DomainState] = {
    "in shutdown": DomainState.STOPPING,
    "pmsuspended": DomainState.STOPPED,
    "shut off": DomainState.STOPPED,
    "crashed": DomainState.STOPPED,
    "running": DomainState.RUNNING,
    "blocked": DomainState.RUNNING,
    "paused": DomainState.STOPPED,
    "dying": DomainState.SHUTTING_DOWN,
    "idle": DomainState.RUNNING,
}


@dataclass(frozen=True)
class LibvirtConfig:
    uri: str = "qemu:///system"
    bus: Literal["virtio", "scsi"] = "virtio"
    command_timeout: float = 60.0
    detach_timeout: float = 30.0


@dataclass(frozen=True)
class LibvirtDisk:
    """One <disk> of a domain's live XML."""

    target: str
    source: str | None
    serial: str | None
    alias: str | None


def parse_domain_list(text: str) -> list[Domain]:
    """Rows of ``virsh list --all`` (`` Id   Name   State``)."""
    domains = []
    for line in text.splitlines():
        fields = line.strip().split(None, 1)
        if len(fields) != 2 or not (fields[0].isdigit() or fields[0] == "-"):
            continue
        rest = fields[1].rstrip()
        for state, ec2_state in VIRSH_STATES.items():
            if rest.endswith(" " + state):
                domains.append(Domain(rest[: -len(state)].strip(), ec2_state))
                break
    return domains


def parse_disks(domain_xml: str) -> list[LibvirtDisk]:
    """The disks of ``virsh dumpxml`` output."""
    try:
        root = ET.fromstring(domain_xml)
    except ET.ParseError as exc:
        raise VmmError(f"cannot parse domain XML: {exc}") from exc
    disks = []
    for disk in root.iterfind("./devices/disk"):
        target = disk.find("target")
        if target is None or not target.get("dev"):
            continue
        source = disk.find("source")
        serial = disk.findtext("serial")
        alias = disk.find("alias")
        disks.append(
            LibvirtDisk(
                target=str(target.get("dev")),
                source=(source.get("file") or source.get("dev")) if source is not None else None,
                serial=serial.strip() if serial else None,
                alias=alias.get("name") if alias is not None else None,
            )
        )
    return disks


def attached_disk(disk: LibvirtDisk) -> AttachedDisk | None:
    """The volume a disk carries, from its alias (or failing that its serial)."""
    match = ALIAS.fullmatch(disk.alias or "")
    if match:
        return AttachedDisk(match.group(1), f"/dev/{match.group(2)}", disk.target, disk.source)
    volume_id = volume_id_from_serial(disk.serial or "")
    if volume_id is not None:
        return AttachedDisk(volume_id, None, disk.target, disk.source)
    return None


class LibvirtVmm:
    """VmmBackend for libvirt domains on ``config.uri``."""

    def __init__(
        self,
        runner: CommandRunner,
        templates: CommandTemplates,
        config: LibvirtConfig | None = None,
    ) -> None:
        templates.require(TOOL, TEMPLATES)
        self._runner = runner
        self._templates = templates
        self._config = config or LibvirtConfig()
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, domain: str) -> asyncio.Lock:
        return self._locks.setdefault(domain, asyncio.Lock())

    @classmethod
    def from_options(
        cls, options: Mapping[str, str], *, runner: CommandRunner, templates: CommandTemplates
    ) -> LibvirtVmm:
        opts = Options("vmm libvirt", options)
        opts.refuse_unknown({"uri", "bus", "command_timeout", "detach_timeout"})
        bus: Literal["virtio", "scsi"] = (
            "scsi" if opts.choice("bus", ("virtio", "scsi"), "virtio") == "scsi" else "virtio"
        )
        config = LibvirtConfig(
            uri=opts.text("uri", "qemu:///system"),
            bus=bus,
            command_timeout=opts.number("command_timeout", 60.0),
            detach_timeout=opts.number("detach_timeout", 30.0),
        )
        return cls(runner, templates, config)

    async def check_setup(self) -> None:
        try:
            await self._run("versionCmd")
        except CommandNotFound as exc:
            raise SetupError("virsh is not installed (apt-get install libvirt-clients)") from exc
        except HostCommandError as exc:
            raise SetupError(f"libvirt at {self._config.uri} does not answer: {exc}") from exc

    @translates_command_errors
    async def list_domains(self) -> list[Domain]:
        return parse_domain_list((await self._run("listCmd")).text)

    @translates_command_errors
    async def attach(self, domain: str, spec: AttachSpec) -> AttachedDisk:
        async with self._lock(domain):  # the in-use checks and the attach go together
            return await self._attach(domain, spec)

    async def _attach(self, domain: str, spec: AttachSpec) -> AttachedDisk:
        volume_id = check_volume_id(spec.volume_id)
        prefix, letters = device_parts(spec.device)
        if not isinstance(spec.source, LocalSource):
            raise UnsupportedSource(f"libvirt driver cannot attach a {type(spec.source).__name__}")
        virtio = self._config.bus == "virtio"
        target = ("vd" if virtio else "sd") + letters
        alias = f"ua-ebs-{volume_id}-{prefix}{letters}"
        for disk in await self._disks(domain):
            found = attached_disk(disk)
            if found is not None and found.volume_id == volume_id:
                if found.device == spec.device:
                    return found
                raise AttachError(f"{volume_id} is attached to {domain} as {found.device}")
            if disk.target == target:
                raise DeviceInUse(f"{spec.device} ({target}) on {domain} is in use")
        values = {
            "domain": domain,
            "source": spec.source.path,
            "target": target,
            "bus": self._config.bus,
            "serial": compact_serial(volume_id) if virtio else volume_id,
            "alias": alias,
        }
        try:
            await self._run("attachDiskCmd", **values)
        except CommandTimeout as exc:
            await self._roll_back(domain, target)
            raise AttachError(f"{domain}: attach-disk of {volume_id} timed out") from exc
        except CommandError as exc:
            raise AttachError(f"{domain}: attach-disk of {volume_id}: {exc}") from exc
        log.info("%s: attached %s as %s (%s)", domain, volume_id, spec.device, target)
        return AttachedDisk(volume_id, spec.device, target, spec.source.path)

    @translates_command_errors
    async def detach(self, domain: str, volume_id: str, *, force: bool = False) -> None:
        async with self._lock(domain):
            await self._detach(domain, volume_id, force=force)

    async def _detach(self, domain: str, volume_id: str, *, force: bool) -> None:
        check_volume_id(volume_id)
        try:
            disk = await self._find(domain, volume_id)
        except DomainNotFound:
            if not force:
                raise
            log.warning("%s: domain is gone; %s counts as detached (force)", domain, volume_id)
            return
        if disk is None:
            return
        try:
            await self._run("detachDiskCmd", domain=domain, target=disk.handle)
        except (CommandError, CommandTimeout) as exc:
            if await self._find(domain, volume_id) is not None:
                raise DetachError(f"{domain}: detach-disk {disk.handle}: {exc}") from exc
        # virsh may return once the unplug is requested; wait until the guest let go.
        try:
            async with asyncio.timeout(self._config.detach_timeout):
                while await self._find(domain, volume_id) is not None:
                    await asyncio.sleep(POLL_INTERVAL)
        except TimeoutError:
            raise DetachTimeout(f"{domain}: {disk.handle} still attached") from None
        log.info("%s: detached %s (%s)", domain, volume_id, disk.handle)

    @translates_command_errors
    async def list_attached(self, domain: str) -> list[AttachedDisk]:
        return [d for d in map(attached_disk, await self._disks(domain)) if d is not None]

    @translates_command_errors
    async def notify_resize(self, domain: str, volume_id: str, size_bytes: int) -> None:
        disk = await self._find(domain, volume_id)
        if disk is None:
            raise VmmError(f"{volume_id} is not attached to {domain}")
        info = (await self._run("blockInfoCmd", domain=domain, target=disk.handle)).text
        capacity = re.search(r"^Capacity:\s*(\d+)", info, re.MULTILINE)
        if capacity and size_bytes < int(capacity.group(1)):
            raise VmmError(f"{volume_id}: will not shrink {capacity.group(1)} to {size_bytes}")
        await self._run(
            "blockResizeCmd", domain=domain, target=disk.handle, sizeBytes=str(size_bytes)
        )
        log.info("%s: %s resized to %d bytes", domain, volume_id, size_bytes)

    # -- internals --------------------------------------------------------------------------

    async def _run(self, key: str, **values: str) -> CommandResult:
        if "domain" in values and not DOMAIN_NAME.fullmatch(values["domain"]):
            raise InvalidName(f"not a libvirt domain name: {values['domain']!r}")
        argv = self._templates.render(TOOL, key, {"uri": self._config.uri, **values})
        return await self._runner.run(argv, timeout=self._config.command_timeout)

    async def _disks(self, domain: str) -> list[LibvirtDisk]:
        try:
            return parse_disks((await self._run("dumpXmlCmd", domain=domain)).text)
        except CommandError as exc:
            if not any(d.name == domain for d in await self.list_domains()):
                raise DomainNotFound(f"no libvirt domain {domain}") from exc
            raise

    async def _find(self, domain: str, volume_id: str) -> AttachedDisk | None:
        for disk in await self.list_attached(domain):
            if disk.volume_id == volume_id:
                return disk
        return None

    async def _roll_back(self, domain: str, target: str) -> None:
        try:
            await self._run("detachDiskCmd", domain=domain, target=target)
        except HostCommandError as exc:
            log.error("%s: rollback of %s failed: %s", domain, target, exc)
