"""QEMU/KVM domains driven over QMP: one ``<domain>.qmp`` unix socket per VM in a directory.

Attach: ``blockdev-add`` (node ``ebs-<volume id>``) then ``device_add`` of a virtio-blk-pci disk on
a free hot-plug port (or scsi-hd on a virtio-scsi bus), device id ``ebs.<volume id>.<device>`` so
the attachment, and the device name it was made with, can be read back from ``query-block``.
Detach: ``device_del``, wait for DEVICE_DELETED, then ``blockdev-del``.

A volume exported over iSCSI (IscsiSource) opens through QEMU's iscsi block driver (libiscsi, no
kernel initiator). Its CHAP secret goes to QEMU as a ``secret`` object (``ebs-<volume id>-chap``,
added with ``object-add`` before ``blockdev-add`` and named by ``password-secret``; QEMU refuses
a plain password); it is removed when the attach is rolled back and on detach.

A volume encrypted at rest (``AttachSpec.luks``) opens through QEMU's ``luks`` block driver over
a ``raw`` node limited to the LUKS image's length (the file is zero-padded beyond it), its
passphrase in a second secret object (``ebs-<volume id>-luks``), removed in the same places. The
guest sees the plaintext; the file, and an iSCSI export of it, hold only ciphertext.

A Ceph RBD image (RbdSource) opens through QEMU's rbd block driver (librbd: pool, image, the
ceph.conf and client id); a cephx key, when given, goes in the same kind of secret object.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import stat
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from backends.base import (
    AttachedDisk,
    AttachSpec,
    Domain,
    DomainState,
    IscsiSource,
    LocalSource,
    LuksKey,
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
    NoFreeSlot,
    UnsupportedSource,
    VmmError,
)
from backends.vmm.locks import DomainLocks
from backends.vmm.naming import check_volume_id, compact_serial, device_basename
from backends.vmm.qmp import QmpClient, QmpConnectionError, QmpError, QmpGone, QmpTimeout
from hostcmds import CommandRunner, CommandTemplates
from hostcmds.runner import mask

log = logging.getLogger(__name__)

DEVICE_ID = re.compile(r"ebs\.(vol-[0-9a-f]+)\.([a-z]+)")
DOMAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
RETRY_PAUSE = 0.05
PORT_TYPES = frozenset({"pcie-root-port", "ioh3420", "xio3130-downstream"})

# query-status "status" values -> EC2 instance state.
RUN_STATES: Mapping[str, DomainState] = {
    "running": DomainState.RUNNING,
    "paused": DomainState.STOPPED,
    "suspended": DomainState.STOPPED,
    "shutdown": DomainState.STOPPED,
    "guest-panicked": DomainState.STOPPED,
    "internal-error": DomainState.STOPPED,
    "io-error": DomainState.STOPPED,
    "watchdog": DomainState.STOPPED,
    "colo": DomainState.RUNNING,
}


@dataclass(frozen=True)
class QemuConfig:
    socket_dir: Path
    bus: Literal["virtio", "scsi"] = "virtio"
    scsi_bus: str = "scsi0.0"
    ports: tuple[str, ...] = ()  # hot-plug ports to use; empty: any free one
    connect_timeout: float = 5.0
    command_timeout: float = 10.0
    detach_timeout: float = 30.0
    initiator_name: str | None = None  # iSCSI initiator name; None: QEMU's default


def node_name(volume_id: str) -> str:
    return f"ebs-{volume_id}"


def secret_id(volume_id: str) -> str:
    """The QOM id of the secret object holding the volume's CHAP secret."""
    return f"ebs-{volume_id}-chap"


def luks_secret_id(volume_id: str) -> str:
    """The QOM id of the secret object holding the volume's LUKS passphrase."""
    return f"ebs-{volume_id}-luks"


def format_blockdev(
    volume_id: str, node: str, file: dict[str, Any], key: LuksKey | None
) -> dict[str, Any]:
    """The format-level blockdev: raw, or luks over a raw node cut to the LUKS image."""
    if key is None:
        return {"driver": "raw", "node-name": node, "discard": "unmap", "file": file}
    return {
        "driver": "luks",
        "node-name": node,
        "key-secret": luks_secret_id(volume_id),
        "file": {"driver": "raw", "size": key.image_bytes, "file": file},
    }


def iscsi_url(portal: object, iqn: object, lun: object) -> str:
    """Where an iSCSI disk is, without credentials (for logs and AttachedDisk.source)."""
    return f"iscsi://{portal}/{iqn}/{lun}"


def device_id(volume_id: str, device: str) -> str:
    return f"ebs.{volume_id}.{device_basename(device)}"


def parse_device_id(qdev: str) -> tuple[str, str] | None:
    """(volume id, device name) from a qdev id or path such as
    /machine/peripheral/ebs.vol-….sdf/virtio-backend; None for disks that are not ours."""
    for part in qdev.split("/"):
        match = DEVICE_ID.fullmatch(part)
        if match:
            return match.group(1), f"/dev/{match.group(2)}"
    return None


def attached_from_query_block(blocks: list[dict[str, Any]]) -> list[AttachedDisk]:
    disks = []
    for block in blocks:
        qdev = str(block.get("qdev") or "")
        parsed = parse_device_id(qdev)
        if parsed is None:
            continue
        handle = next(p for p in qdev.split("/") if DEVICE_ID.fullmatch(p))
        inserted = block.get("inserted") or {}
        disks.append(AttachedDisk(parsed[0], parsed[1], handle, _source_of(inserted.get("file"))))
    return disks


def _source_of(filename: object) -> str | None:
    """The host path a block node opened, or for an iSCSI node its credential-free URL (QEMU
    names such a node ``json:{…}``, with the CHAP user and secret object id in it)."""
    if not filename:
        return None
    text = str(filename)
    if not text.startswith("json:"):
        return text
    try:
        options: Any = json.loads(text.removeprefix("json:"))
    except ValueError:
        return None
    while isinstance(options, dict):
        if options.get("driver") == "iscsi":
            return iscsi_url(options.get("portal"), options.get("target"), options.get("lun"))
        if options.get("driver") == "rbd":
            return rbd_url(options.get("pool"), options.get("image"))
        if "filename" in options and options.get("driver") in ("file", "host_device"):
            return str(options["filename"])
        options = options.get("file")
    return None


class QemuVmm:
    """VmmBackend for QEMU VMs with a QMP socket each in ``config.socket_dir``."""

    shares_disks = True  # a shared disk is added with share-rw: other QEMUs may write it too

    def __init__(self, config: QemuConfig) -> None:
        self._config = config
        self._lock = DomainLocks()

    @classmethod
    def from_options(
        cls, options: Mapping[str, str], *, runner: CommandRunner, templates: CommandTemplates
    ) -> QemuVmm:
        opts = Options("vmm qemu", options)
        opts.refuse_unknown(
            {"socket_dir", "bus", "scsi_bus", "ports", "initiator_name"}
            | {"connect_timeout", "command_timeout", "detach_timeout"}
        )
        bus: Literal["virtio", "scsi"] = (
            "scsi" if opts.choice("bus", ("virtio", "scsi"), "virtio") == "scsi" else "virtio"
        )
        return cls(
            QemuConfig(
                socket_dir=Path(opts.text("socket_dir")),
                bus=bus,
                scsi_bus=opts.text("scsi_bus", "scsi0.0"),
                ports=opts.words("ports"),
                connect_timeout=opts.number("connect_timeout", 5.0),
                command_timeout=opts.number("command_timeout", 10.0),
                detach_timeout=opts.number("detach_timeout", 30.0),
                initiator_name=options.get("initiator_name", "").strip() or None,
            )
        )

    def opens_luks(self) -> bool:
        return True

    # -- VmmBackend ------------------------------------------------------------------------

    async def check_setup(self) -> None:
        directory = self._config.socket_dir
        if not directory.is_dir():
            raise SetupError(f"QMP socket directory {directory} does not exist")
        if not os.access(directory, os.R_OK | os.X_OK):
            raise SetupError(f"QMP socket directory {directory} is not readable")

    async def list_domains(self) -> list[Domain]:
        domains = []
        for path in sorted(self._config.socket_dir.glob("*.qmp")):
            if path.is_socket() and DOMAIN_NAME.fullmatch(path.stem):
                domains.append(Domain(path.stem, await self._domain_state(path.stem)))
        return domains

    async def attach(self, domain: str, spec: AttachSpec) -> AttachedDisk:
        volume_id = check_volume_id(spec.volume_id)
        qdev_id = device_id(volume_id, spec.device)
        source = self._blockdev_file(spec)
        secret = _chap_secret(spec)
        hidden = [s for s in (secret, spec.luks.passphrase if spec.luks else None) if s]
        node = node_name(volume_id)
        async with self._session(domain) as qmp:
            for disk in await self._attached(qmp):
                if disk.volume_id == volume_id:
                    if disk.device == spec.device:
                        return disk
                    raise AttachError(f"{volume_id} is attached to {domain} as {disk.device}")
                if disk.device == spec.device:
                    raise DeviceInUse(f"{spec.device} on {domain} is in use by {disk.volume_id}")
            if node in await self._node_names(qmp):
                log.warning("%s: removing leftover block node %s", domain, node)
                await self._delete_node(qmp, node)
            await self._drop_secret(qmp, domain, volume_id)  # left by an interrupted attach
            device_args = await self._device_args(qmp, volume_id, qdev_id, node)
            if spec.shared:  # other QEMUs may open it for writing too (Multi-Attach)
                device_args["share-rw"] = True
            try:
                if secret:
                    await self._execute(
                        qmp,
                        "object-add",
                        {"qom-type": "secret", "id": secret_id(volume_id), "data": secret},
                    )
                if spec.luks:
                    await self._execute(
                        qmp,
                        "object-add",
                        {
                            "qom-type": "secret",
                            "id": luks_secret_id(volume_id),
                            "data": spec.luks.passphrase,
                        },
                    )
                await self._execute(
                    qmp, "blockdev-add", format_blockdev(volume_id, node, source, spec.luks)
                )
            except BaseException as exc:
                # After a timeout the node may still appear once QEMU gets to it.
                await self._roll_back(qmp, domain, volume_id, node=not isinstance(exc, QmpError))
                if isinstance(exc, QmpError | QmpTimeout | QmpConnectionError):
                    message = f"{domain}: cannot open {volume_id}: {exc}"
                    raise AttachError(mask(message, hidden)) from exc
                raise
            try:
                await self._execute(qmp, "device_add", device_args)
            except BaseException as exc:
                await self._roll_back(qmp, domain, volume_id)
                if isinstance(exc, QmpError | QmpTimeout | QmpConnectionError):
                    message = f"{domain}: device_add of {volume_id}: {exc}"
                    raise AttachError(mask(message, hidden)) from exc
                raise
        log.info("%s: attached %s as %s (%s)", domain, volume_id, spec.device, qdev_id)
        return AttachedDisk(volume_id, spec.device, qdev_id, _describe(spec))

    async def detach(self, domain: str, volume_id: str, *, force: bool = False) -> None:
        check_volume_id(volume_id)
        try:
            async with self._session(domain) as qmp:
                await self._detach(qmp, domain, volume_id)
        except DomainNotFound:
            if not force:
                raise
            log.warning("%s: domain is gone; %s counts as detached (force)", domain, volume_id)

    async def list_attached(self, domain: str) -> list[AttachedDisk]:
        async with self._session(domain) as qmp:
            return await self._attached(qmp)

    async def notify_resize(self, domain: str, volume_id: str, size_bytes: int) -> None:
        check_volume_id(volume_id)
        node = node_name(volume_id)
        async with self._session(domain) as qmp:
            nodes = await self._execute(qmp, "query-named-block-nodes", {"flat": True})
            current = next((n for n in nodes if n.get("node-name") == node), None)
            if current is None:
                raise VmmError(f"{volume_id} is not attached to {domain}")
            size_now = int(current.get("image", {}).get("virtual-size", 0))
            if size_bytes < size_now:
                raise VmmError(f"{volume_id}: will not shrink {size_now} to {size_bytes} bytes")
            if size_bytes > size_now:
                await self._execute(qmp, "block_resize", {"node-name": node, "size": size_bytes})
        log.info("%s: %s resized to %d bytes", domain, volume_id, size_bytes)

    async def pause(self, domain: str) -> bool:
        """QMP ``stop``: QEMU stops the vCPUs, then drains and flushes every block device
        before it answers, so each write the guest issued has reached the volume's file."""
        async with self._session(domain) as qmp:
            status = await self._execute(qmp, "query-status")
            if status.get("status") != "running":
                log.info("%s: %s already, not paused", domain, status.get("status"))
                return False
            await self._execute(qmp, "stop")
        log.info("%s: paused (stop)", domain)
        return True

    async def resume(self, domain: str) -> None:
        async with self._session(domain) as qmp:
            await self._execute(qmp, "cont")
        log.info("%s: resumed (cont)", domain)

    # -- internals --------------------------------------------------------------------------

    def socket_path(self, domain: str) -> Path:
        if not DOMAIN_NAME.fullmatch(domain):
            raise InvalidName(f"not a QEMU domain name: {domain!r}")
        return self._config.socket_dir / f"{domain}.qmp"

    @contextlib.asynccontextmanager
    async def _session(self, domain: str) -> AsyncIterator[QmpClient]:
        """One QMP connection, held under the domain's lock: QEMU serves one client at a time
        and attach must see a consistent set of free ports."""
        path = self.socket_path(domain)
        async with self._lock(domain):
            if not path.is_socket():
                raise DomainNotFound(f"no QMP socket for domain {domain} at {path}")
            try:
                qmp = await QmpClient.connect(path, timeout=self._config.connect_timeout)
            except QmpGone as exc:
                raise DomainNotFound(f"domain {domain} is gone: {exc}") from exc
            async with qmp:
                yield qmp

    async def _execute(
        self, qmp: QmpClient, command: str, arguments: Mapping[str, Any] | None = None
    ) -> Any:
        return await qmp.execute(command, arguments, timeout=self._config.command_timeout)

    async def _domain_state(self, domain: str) -> DomainState:
        try:
            async with self._session(domain) as qmp:
                status = await self._execute(qmp, "query-status")
        except DomainNotFound:
            return DomainState.TERMINATED
        except (QmpTimeout, QmpError, QmpConnectionError) as exc:
            # There, but not answering now (stopped, or another client holds its one QMP
            # connection): never taken for terminated, which releases the volumes.
            log.warning("%s: state unknown (%s); reported as pending", domain, exc)
            return DomainState.PENDING
        return RUN_STATES.get(str(status.get("status")), DomainState.PENDING)

    async def _attached(self, qmp: QmpClient) -> list[AttachedDisk]:
        return attached_from_query_block(await self._execute(qmp, "query-block"))

    async def _node_names(self, qmp: QmpClient) -> set[str]:
        nodes = await self._execute(qmp, "query-named-block-nodes", {"flat": True})
        return {str(n.get("node-name")) for n in nodes}

    async def _device_args(
        self, qmp: QmpClient, volume_id: str, qdev_id: str, node: str
    ) -> dict[str, Any]:
        if self._config.bus == "scsi":
            return {
                "driver": "scsi-hd",
                "id": qdev_id,
                "bus": self._config.scsi_bus,
                "drive": node,
                "serial": volume_id,
            }
        return {
            "driver": "virtio-blk-pci",
            "id": qdev_id,
            "bus": await self._free_port(qmp),
            "drive": node,
            "serial": compact_serial(volume_id),
        }

    async def _free_port(self, qmp: QmpClient) -> str:
        """The first hot-plug capable port with nothing on its bus.

        Read from QOM, not query-pci: query-pci lists a bridge's devices only once guest
        firmware has numbered its bus, which a VM that just started has not done yet."""
        for port in await self._ports(qmp):
            base = f"/machine/peripheral/{port}"
            hotplug = await self._execute(qmp, "qom-get", {"path": base, "property": "hotplug"})
            if not hotplug:
                continue
            children = await self._execute(qmp, "qom-list", {"path": f"{base}/{port}"})
            if not any(str(child.get("name", "")).startswith("child[") for child in children):
                return port
        raise NoFreeSlot("no free hot-plug port (add pcie-root-port devices to the VM)")

    async def _ports(self, qmp: QmpClient) -> list[str]:
        """Configured ports, or every PCIe hot-plug port of the VM, in natural order."""
        if self._config.ports:
            return list(self._config.ports)
        entries = await self._execute(qmp, "qom-list", {"path": "/machine/peripheral"})
        ports = [
            str(entry["name"])
            for entry in entries
            if str(entry.get("type", "")).removeprefix("child<").removesuffix(">") in PORT_TYPES
        ]
        return sorted(ports, key=_natural_key)

    async def _roll_back(
        self, qmp: QmpClient, domain: str, volume_id: str, *, node: bool = True
    ) -> None:
        """Undo a partial attach: the block node (when it may exist) and the secret object."""
        name = node_name(volume_id)
        try:
            if node:
                await self._delete_node(qmp, name)
                log.info("%s: rolled back block node %s", domain, name)
            await self._drop_secret(qmp, domain, volume_id)
        except (VmmError, OSError) as exc:
            log.error("%s: rollback of the attach of %s failed: %s", domain, volume_id, exc)

    async def _drop_secret(self, qmp: QmpClient, domain: str, volume_id: str) -> None:
        """Remove the volume's CHAP and LUKS secret objects, if QEMU holds them."""
        objects = await self._execute(qmp, "qom-list", {"path": "/objects"})
        names = {entry.get("name") for entry in objects}
        for secret in (secret_id(volume_id), luks_secret_id(volume_id)):
            if secret in names:
                await self._execute(qmp, "object-del", {"id": secret})
                log.info("%s: removed secret object %s", domain, secret)

    async def _detach(self, qmp: QmpClient, domain: str, volume_id: str) -> None:
        disk = next((d for d in await self._attached(qmp) if d.volume_id == volume_id), None)
        if disk is not None:
            handle = disk.handle
            deleted = qmp.expect_event("DEVICE_DELETED", lambda data: data.get("device") == handle)
            try:
                await self._execute(qmp, "device_del", {"id": handle})
            except QmpError as exc:
                if exc.error_class == "DeviceNotFound":
                    deleted.cancel()  # already unplugged; the node is freed below
                else:
                    # e.g. "guest is busy": an earlier unplug request is still pending.
                    log.warning("%s: device_del %s: %s; waiting for it", domain, handle, exc)
            if not deleted.cancelled():
                try:
                    async with asyncio.timeout(self._config.detach_timeout):
                        await deleted
                except TimeoutError:
                    raise DetachTimeout(
                        f"{domain}: {handle} not released after {self._config.detach_timeout:g} s"
                    ) from None
            log.info("%s: unplugged %s", domain, handle)
        node = node_name(volume_id)
        if node in await self._node_names(qmp):
            await self._delete_node(qmp, node)
            log.info("%s: removed block node %s", domain, node)
        await self._drop_secret(qmp, domain, volume_id)

    def _blockdev_file(self, spec: AttachSpec) -> dict[str, Any]:
        """The protocol-level blockdev for the volume's source."""
        source = spec.source
        if isinstance(source, IscsiSource):
            return self._iscsi_blockdev(spec.volume_id, source)
        if isinstance(source, RbdSource):
            return _rbd_blockdev(spec.volume_id, source)
        if not isinstance(source, LocalSource):
            raise UnsupportedSource(f"qemu driver cannot attach a {type(source).__name__} yet")
        try:
            mode = os.stat(source.path).st_mode
        except OSError as exc:
            raise AttachError(f"{spec.volume_id}: source {source.path}: {exc.strerror}") from exc
        driver = "host_device" if stat.S_ISBLK(mode) else "file"
        return {"driver": driver, "filename": source.path}

    def _iscsi_blockdev(self, volume_id: str, source: IscsiSource) -> dict[str, Any]:
        """QEMU's iscsi driver; CHAP through the secret object ``secret_id(volume_id)``."""
        if bool(source.chap_user) != bool(source.chap_secret):
            raise AttachError(f"{volume_id}: a CHAP user needs a secret and a secret a user")
        options: dict[str, Any] = {
            "driver": "iscsi",
            "transport": "tcp",
            "portal": source.portal,
            "target": source.iqn,
            "lun": source.lun,
        }
        if source.chap_user:
            options["user"] = source.chap_user
            options["password-secret"] = secret_id(volume_id)
        if self._config.initiator_name:
            options["initiator-name"] = self._config.initiator_name
        return options

    async def _delete_node(self, qmp: QmpClient, node: str) -> None:
        """blockdev-del, retried while the node is still held by a device being unplugged."""
        try:
            async with asyncio.timeout(self._config.detach_timeout):
                while True:
                    try:
                        await self._execute(qmp, "blockdev-del", {"node-name": node})
                        return
                    except QmpError as exc:
                        if "in use" not in exc.desc:
                            raise DetachError(f"blockdev-del {node}: {exc}") from exc
                    await asyncio.sleep(RETRY_PAUSE)
        except TimeoutError:
            raise DetachTimeout(f"block node {node} still in use") from None


def _rbd_blockdev(volume_id: str, source: RbdSource) -> dict[str, Any]:
    """QEMU's rbd driver; a cephx key through the secret object ``secret_id(volume_id)``."""
    options: dict[str, Any] = {"driver": "rbd", "pool": source.pool, "image": source.image}
    if source.conf:
        options["conf"] = source.conf
    if source.user:
        options["user"] = source.user
    if source.key:
        options["key-secret"] = secret_id(volume_id)
        options["auth-client-required"] = ["cephx"]
    return options


def _chap_secret(spec: AttachSpec) -> str | None:
    """The secret the source needs in a QEMU secret object (CHAP secret, cephx key)."""
    source = spec.source
    if isinstance(source, IscsiSource):
        return source.chap_secret
    if isinstance(source, RbdSource):
        return source.key
    return None


def _describe(spec: AttachSpec) -> str:
    """What the attached disk opened, without credentials."""
    source = spec.source
    if isinstance(source, IscsiSource):
        return iscsi_url(source.portal, source.iqn, source.lun)
    if isinstance(source, RbdSource):
        return rbd_url(source.pool, source.image)
    assert isinstance(source, LocalSource)
    return source.path


def rbd_url(pool: object, image: object) -> str:
    """How an attached RBD image is named (no conf, user or key)."""
    return f"rbd:{pool}/{image}"


def _natural_key(name: str) -> list[tuple[int, str]]:
    """rp2 before rp10."""
    return [(int(part), "") if part.isdigit() else (0, part) for part in re.split(r"(\d+)", name)]
