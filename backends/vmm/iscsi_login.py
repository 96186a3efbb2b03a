"""Logging a VMM host in to an iSCSI target with open-iscsi (commands from iscsiadm.ini), for
drivers that hand the VMM a host block device (Xen's ``phy:``, the host's loop devices).

The device is udev's ``/dev/disk/by-path/ip-<portal>-iscsi-<iqn>-lun-<n>`` link, so the portal
and target can be read back from it at detach. Each volume has a target of its own, so logging
out of the target releases that volume only. The CHAP secret goes to iscsiadm as a node
setting and is masked in every log line and error.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from backends.base import IscsiSource
from backends.vmm.errors import AttachError, DetachError
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

TOOL = "iscsiadm"
TEMPLATES = (
    "discoveryCmd",
    "nodeUpdateCmd",
    "loginCmd",
    "logoutCmd",
    "nodeDeleteCmd",
    "sessionDetailCmd",
    "deviceWaitCmd",
    "rescanCmd",
)
BY_PATH = re.compile(r"/dev/disk/by-path/ip-(?P<portal>.+?)-iscsi-(?P<iqn>.+)-lun-(?P<lun>\d+)")
NO_OBJECTS_FOUND = 21  # iscsiadm's exit status when there is no such session or node record


@dataclass(frozen=True)
class IscsiNode:
    """One logged-in (or recorded) target LUN as the initiator sees it."""

    portal: str
    iqn: str
    lun: int


def by_path_device(source: IscsiSource) -> str:
    """The udev link of the LUN once logged in."""
    return f"/dev/disk/by-path/ip-{source.portal}-iscsi-{source.iqn}-lun-{source.lun}"


def parse_by_path(path: str) -> IscsiNode | None:
    """Inverse of by_path_device; None for any other path."""
    match = BY_PATH.fullmatch(path.strip())
    if not match:
        return None
    return IscsiNode(match.group("portal"), match.group("iqn"), int(match.group("lun")))


def parse_session_disks(text: str) -> dict[str, IscsiNode]:
    """``iscsiadm --mode session --print 3``: host disk (/dev/sdb) -> the target LUN behind it."""
    disks: dict[str, IscsiNode] = {}
    iqn = portal = None
    lun = -1
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("Target:"):
            iqn, portal, lun = line.split()[1], None, -1
        elif line.startswith("Current Portal:"):
            portal = line.split()[2].rsplit(",", 1)[0]
        elif (found := re.search(r"\bLun: (\d+)", line)) is not None:
            lun = int(found.group(1))
        elif (found := re.match(r"Attached scsi disk (\S+)", line)) and iqn and portal and lun >= 0:
            disks[f"/dev/{found.group(1)}"] = IscsiNode(portal, iqn, lun)
    return disks


class IscsiLogin:
    """iscsiadm discovery, CHAP node settings, login and logout on one host."""

    def __init__(self, runner: CommandRunner, templates: CommandTemplates, timeout: float) -> None:
        templates.require(TOOL, TEMPLATES)
        self._runner = runner
        self._templates = templates
        self._timeout = timeout

    async def login(self, volume_id: str, source: IscsiSource) -> str:
        """Log in to the volume's target and return its by-path device. A failed login is
        undone (logout, node record deleted) and raises AttachError."""
        if bool(source.chap_user) != bool(source.chap_secret):
            raise AttachError(f"{volume_id}: a CHAP user needs a secret and a secret a user")
        hidden = [source.chap_secret] if source.chap_secret else []
        node = {"portal": source.portal, "iqn": source.iqn}
        device = by_path_device(source)
        settings = []
        if source.chap_user and source.chap_secret:
            settings = [
                ("node.session.auth.authmethod", "CHAP"),
                ("node.session.auth.username", source.chap_user),
                ("node.session.auth.password", source.chap_secret),
            ]
        try:
            await self._run("discoveryCmd", hidden, **node)
            for name, value in settings:
                await self._run("nodeUpdateCmd", hidden, **node, name=name, value=value)
            await self._run("loginCmd", hidden, **node)
            await self._run("deviceWaitCmd", hidden, device=device)
        except (CommandError, CommandTimeout, CommandNotFound) as exc:
            await self.release(source.portal, source.iqn)
            message = f"{volume_id}: iSCSI login to {source.iqn} at {source.portal}: {exc}"
            raise AttachError(mask(message, hidden)) from exc
        log.info("%s: logged in to %s at %s (%s)", volume_id, source.iqn, source.portal, device)
        return device

    async def logout(self, portal: str, iqn: str) -> None:
        """Log out of the target and delete its node record (with the CHAP settings).
        Idempotent: no session or no record is not an error; any other failure is DetachError."""
        node = {"portal": portal, "iqn": iqn}
        for key in ("logoutCmd", "nodeDeleteCmd"):
            try:
                await self._run(key, [], **node)
            except CommandError as exc:
                if exc.returncode != NO_OBJECTS_FOUND:
                    raise DetachError(f"iSCSI {iqn} at {portal}: {exc}") from exc
            except CommandTimeout as exc:
                raise DetachError(f"iSCSI {iqn} at {portal}: {exc}") from exc
        log.info("logged out of %s at %s", iqn, portal)

    async def rescan(self, portal: str, iqn: str) -> None:
        """Have the host's SCSI layer re-read the capacity of the target's LUNs (after the
        target grew one)."""
        await self._run("rescanCmd", [], portal=portal, iqn=iqn)
        log.info("rescanned %s at %s", iqn, portal)

    async def release(self, portal: str, iqn: str) -> None:
        """Logout for a rollback: failures are logged, not raised."""
        try:
            await self.logout(portal, iqn)
        except (DetachError, HostCommandError) as exc:
            log.error("rollback of the iSCSI login to %s failed: %s", iqn, exc)

    async def session_disks(self) -> dict[str, IscsiNode]:
        """The host disks of every iSCSI session; none when there is no session."""
        try:
            result = await self._run("sessionDetailCmd", [])
        except CommandError as exc:
            if exc.returncode == NO_OBJECTS_FOUND:
                return {}
            raise
        return parse_session_disks(result.text)

    async def _run(self, key: str, hidden: list[str], **values: str) -> CommandResult:
        argv = self._templates.render(TOOL, key, values)
        return await self._runner.run(argv, timeout=self._timeout, secrets=hidden)
