"""libvirt domains through virsh (commands from virsh.ini): attach-disk / detach-disk --live.

An iSCSI volume becomes a network disk (libvirt's own iSCSI client, no host login): its CHAP
secret is a libvirt secret of usage ``ebsemu-<volume id>`` with a UUID derived from the volume id,
defined before attach-device and undefined on detach or a failed attach. The secret's XML, its
value and the disk's XML reach virsh on stdin, never in argv or a file.

Each volume's disk gets the user alias ``ua-ebs-<volume id>-<device>`` and the volume id as its
serial, so ``virsh dumpxml`` tells which volume is attached under which device name.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from backends.base import (
    AttachedDisk,
    AttachSpec,
    Domain,
    DomainState,
    IscsiSource,
    LocalSource,
    RbdSource,
)
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
from backends.vmm.locks import DomainLocks
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
from hostcmds.runner import mask

log = logging.getLogger(__name__)

TOOL = "virsh"
TEMPLATES = (
    "versionCmd",
    "listCmd",
    "dumpXmlCmd",
    "attachDiskCmd",
    "attachSharedDiskCmd",
    "detachDiskCmd",
    "blockInfoCmd",
    "blockResizeCmd",
    "attachDeviceCmd",
    "secretDefineCmd",
    "secretSetValueCmd",
    "secretUndefineCmd",
    "domStateCmd",
    "suspendCmd",
    "resumeCmd",
)
STDIN = "/dev/stdin"
SECRET_NAMESPACE = uuid.UUID("4c0a2f0e-8d47-5b8e-9a52-6562736d7500")
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
    network: bool = False


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
        network = disk.get("type") == "network" and source is not None
        disks.append(
            LibvirtDisk(
                target=str(target.get("dev")),
                source=_source_text(source),
                serial=serial.strip() if serial else None,
                alias=alias.get("name") if alias is not None else None,
                network=network,
            )
        )
    return disks


def _source_text(source: ET.Element | None) -> str | None:
    """A disk's host path, or for a network disk its URL (protocol://host:port/name)."""
    if source is None:
        return None
    if source.get("protocol"):
        host = source.find("host")
        where = ""
        if host is not None and host.get("name"):
            where = str(host.get("name")) + (f":{host.get('port')}" if host.get("port") else "")
        return f"{source.get('protocol')}://{where}/{source.get('name', '')}"
    return source.get("file") or source.get("dev")


def secret_usage(volume_id: str) -> str:
    """The usage name of the libvirt secret that holds a volume's CHAP secret."""
    return f"ebsemu-{volume_id}"


def secret_uuid(volume_id: str) -> str:
    """The UUID of that secret: derived from the volume id, so detach finds it again."""
    return str(uuid.uuid5(SECRET_NAMESPACE, volume_id))


def split_portal(portal: str) -> tuple[str, str]:
    """ "10.0.0.5:3260" -> ("10.0.0.5", "3260"); "[fd00::5]:3260" -> ("fd00::5", "3260");
    no port -> iSCSI's 3260."""
    match = re.fullmatch(
        r"\[(?P<v6>[^\]]+)\](?::(?P<p6>\d+))?|(?P<host>[^:]+)(?::(?P<port>\d+))?", portal
    )
    if not match:
        raise AttachError(f"not an iSCSI portal: {portal!r}")
    host = match.group("v6") or match.group("host")
    return host, match.group("p6") or match.group("port") or "3260"


def secret_xml(volume_id: str, kind: str = "iscsi") -> str:
    """A libvirt secret for a volume: its CHAP secret (``iscsi``) or cephx key (``ceph``)."""
    root = ET.Element("secret", ephemeral="no", private="yes")
    ET.SubElement(root, "uuid").text = secret_uuid(volume_id)
    what = "CHAP secret" if kind == "iscsi" else "cephx key"
    ET.SubElement(root, "description").text = f"{what} of {volume_id}"
    usage = ET.SubElement(root, "usage", type=kind)
    ET.SubElement(usage, "target" if kind == "iscsi" else "name").text = secret_usage(volume_id)
    return ET.tostring(root, encoding="unicode")


def iscsi_disk_xml(
    volume_id: str,
    source: IscsiSource,
    *,
    target: str,
    bus: str,
    serial: str,
    alias: str,
    shared: bool = False,
) -> str:
    """One <disk type='network'> for ``virsh attach-device`` (no secret value in it)."""
    disk = ET.Element("disk", type="network", device="disk")
    ET.SubElement(disk, "driver", name="qemu", type="raw", discard="unmap")
    src = ET.SubElement(disk, "source", protocol="iscsi", name=f"{source.iqn}/{source.lun}")
    host, port = split_portal(source.portal)
    ET.SubElement(src, "host", name=host, port=port)
    if source.chap_user:
        auth = ET.SubElement(src, "auth", username=source.chap_user)
        ET.SubElement(auth, "secret", type="iscsi", usage=secret_usage(volume_id))
    return _disk_end(disk, target=target, bus=bus, serial=serial, alias=alias, shared=shared)


def rbd_disk_xml(
    volume_id: str,
    source: RbdSource,
    *,
    target: str,
    bus: str,
    serial: str,
    alias: str,
    shared: bool = False,
) -> str:
    """One <disk type='network'> with protocol='rbd' (librbd in QEMU; no key value in it)."""
    disk = ET.Element("disk", type="network", device="disk")
    ET.SubElement(disk, "driver", name="qemu", type="raw", discard="unmap")
    src = ET.SubElement(disk, "source", protocol="rbd", name=f"{source.pool}/{source.image}")
    if source.conf:
        ET.SubElement(src, "config", file=source.conf)
    if source.key:
        auth = ET.SubElement(src, "auth", username=source.user or "admin")
        ET.SubElement(auth, "secret", type="ceph", usage=secret_usage(volume_id))
    return _disk_end(disk, target=target, bus=bus, serial=serial, alias=alias, shared=shared)


def _disk_end(
    disk: ET.Element, *, target: str, bus: str, serial: str, alias: str, shared: bool
) -> str:
    """A <disk>'s target, serial and alias, and <shareable/> for one other domains may hold
    at the same time (libvirt then lets QEMU share it for writing)."""
    ET.SubElement(disk, "target", dev=target, bus=bus)
    ET.SubElement(disk, "serial").text = serial
    ET.SubElement(disk, "alias", name=alias)
    if shared:
        ET.SubElement(disk, "shareable")
    return ET.tostring(disk, encoding="unicode")


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

    shares_disks = True  # a shared disk is marked <shareable/>

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
        self._lock = DomainLocks()

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
        if not isinstance(spec.source, LocalSource | IscsiSource | RbdSource):
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
        serial = compact_serial(volume_id) if virtio else volume_id
        if isinstance(spec.source, IscsiSource):
            return await self._attach_iscsi(domain, spec, spec.source, target, serial, alias)
        if isinstance(spec.source, RbdSource):
            return await self._attach_rbd(domain, spec, spec.source, target, serial, alias)
        try:
            await self._run(
                "attachSharedDiskCmd" if spec.shared else "attachDiskCmd",
                domain=domain,
                source=spec.source.path,
                target=target,
                bus=self._config.bus,
                serial=serial,
                alias=alias,
            )
        except CommandTimeout as exc:
            await self._roll_back(domain, target)
            raise AttachError(f"{domain}: attach-disk of {volume_id} timed out") from exc
        except CommandError as exc:
            raise AttachError(f"{domain}: attach-disk of {volume_id}: {exc}") from exc
        log.info("%s: attached %s as %s (%s)", domain, volume_id, spec.device, target)
        return AttachedDisk(volume_id, spec.device, target, spec.source.path)

    async def _attach_iscsi(
        self,
        domain: str,
        spec: AttachSpec,
        source: IscsiSource,
        target: str,
        serial: str,
        alias: str,
    ) -> AttachedDisk:
        volume_id = spec.volume_id
        if bool(source.chap_user) != bool(source.chap_secret):
            raise AttachError(f"{volume_id}: a CHAP user needs a secret and a secret a user")
        xml = iscsi_disk_xml(
            volume_id,
            source,
            target=target,
            bus=self._config.bus,
            serial=serial,
            alias=alias,
            shared=spec.shared,
        )
        url = f"iscsi://{source.portal}/{source.iqn}/{source.lun}"
        secret = (source.chap_secret, source.chap_secret.encode()) if source.chap_secret else None
        return await self._attach_network(domain, spec, xml, url, target, secret, "iscsi")

    async def _attach_rbd(
        self,
        domain: str,
        spec: AttachSpec,
        source: RbdSource,
        target: str,
        serial: str,
        alias: str,
    ) -> AttachedDisk:
        volume_id = spec.volume_id
        xml = rbd_disk_xml(
            volume_id,
            source,
            target=target,
            bus=self._config.bus,
            serial=serial,
            alias=alias,
            shared=spec.shared,
        )
        secret = None
        if source.key:
            try:  # libvirt holds a cephx key's bytes; the key as Ceph prints it is base64
                secret = (source.key, base64.b64decode(source.key, validate=True))
            except ValueError:
                raise AttachError(f"{volume_id}: the cephx key is not base64") from None
        url = f"rbd://{source.pool}/{source.image}"
        return await self._attach_network(domain, spec, xml, url, target, secret, "ceph")

    async def _attach_network(
        self,
        domain: str,
        spec: AttachSpec,
        xml: str,
        url: str,
        target: str,
        secret: tuple[str, bytes] | None,
        kind: str,
    ) -> AttachedDisk:
        """Define the disk's secret (``secret``: its text, to mask, and the value libvirt
        keeps), then attach the network disk; a failure undoes both."""
        volume_id = spec.volume_id
        hidden = [secret[0]] if secret else []
        step = "secret-define"
        try:
            if secret:
                await self._run("secretDefineCmd", input=secret_xml(volume_id, kind), xmlFile=STDIN)
                step = "secret-set-value"
                await self._run(
                    "secretSetValueCmd",
                    input=secret[1],
                    secrets=hidden,
                    secretUuid=secret_uuid(volume_id),
                    valueFile=STDIN,
                )
            step = "attach-device"
            await self._run("attachDeviceCmd", input=xml, domain=domain, xmlFile=STDIN)
        except (CommandError, CommandTimeout) as exc:
            if step == "attach-device" and isinstance(exc, CommandTimeout):
                await self._roll_back(domain, target)
            if secret:
                await self._drop_secret(domain, volume_id)
            message = f"{domain}: {step} for {volume_id}: {exc}"
            raise AttachError(mask(message, hidden)) from exc
        log.info("%s: attached %s as %s (%s, %s)", domain, volume_id, spec.device, target, url)
        return AttachedDisk(volume_id, spec.device, target, url)

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
        if disk.source is not None and disk.source.startswith("iscsi://"):
            await self._drop_secret(domain, volume_id)
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

    @translates_command_errors
    async def pause(self, domain: str) -> bool:
        """``virsh suspend``: libvirt's QEMU driver stops the vCPUs and drains the disks' I/O
        before it answers."""
        async with self._lock(domain):
            try:
                state = (await self._run("domStateCmd", domain=domain)).text.strip()
            except CommandError as exc:
                if not any(d.name == domain for d in await self.list_domains()):
                    raise DomainNotFound(f"no libvirt domain {domain}") from exc
                raise
            if state != "running":
                log.info("%s: %s already, not paused", domain, state)
                return False
            await self._run("suspendCmd", domain=domain)
        log.info("%s: paused (virsh suspend)", domain)
        return True

    @translates_command_errors
    async def resume(self, domain: str) -> None:
        async with self._lock(domain):
            await self._run("resumeCmd", domain=domain)
        log.info("%s: resumed (virsh resume)", domain)

    # -- internals --------------------------------------------------------------------------

    async def _run(
        self,
        key: str,
        *,
        input: str | bytes | None = None,
        secrets: list[str] | None = None,
        **values: str,
    ) -> CommandResult:
        if "domain" in values and not DOMAIN_NAME.fullmatch(values["domain"]):
            raise InvalidName(f"not a libvirt domain name: {values['domain']!r}")
        argv = self._templates.render(TOOL, key, {"uri": self._config.uri, **values})
        return await self._runner.run(
            argv,
            timeout=self._config.command_timeout,
            input=input.encode() if isinstance(input, str) else input,
            secrets=secrets or [],
        )

    async def _drop_secret(self, domain: str, volume_id: str) -> None:
        """Undefine the volume's CHAP secret; one that is not there is not an error."""
        try:
            await self._run("secretUndefineCmd", secretUuid=secret_uuid(volume_id))
            log.info("%s: undefined the CHAP secret of %s", domain, volume_id)
        except CommandError as exc:
            log.info("%s: no CHAP secret of %s to undefine (%s)", domain, volume_id, exc)
        except CommandTimeout as exc:
            log.error("%s: undefining the CHAP secret of %s: %s", domain, volume_id, exc)

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
