"""The ``tgt`` export backend: each volume is an iSCSI target of the userspace target daemon
tgtd, driven with ``tgtadm -C <control port>`` through the templates in hostcmds/tgt.ini.

Per volume:
- a target ``<iqn_prefix>:<volume id>`` with the volume's file or block device as LUN 1;
- a CHAP account of its own, user ``ebs-<16 hex>`` and a fresh random secret, bound to that
  target only (tgt accounts are global; binding makes CHAP mandatory for the target);
- an ACL admitting the attaching host only. tgt admits an initiator that matches ANY entry of a
  target's ACL, so binding both the host's address and its initiator name would let that name
  in from anywhere: the address is bound when it is known, the initiator name otherwise.

The target's configuration is kept as a record file per volume (records.py: 0600, written
atomically) before tgtd is changed, so an interrupted export can be finished or undone, a
second export of the same volume returns the same credentials, and ``restore`` can put
everything back after tgtd restarted (tgtd keeps nothing across a restart). ``restore`` takes
the caller's records (ExportInfo) as the truth, rewrites the files from them and changes only
what differs in tgtd.

The order of changes keeps a target closed while it is incomplete: tgtd refuses every initiator
while a target's ACL is empty, so the account and the LUN are set up first and the ACL is bound
last; when a target's accounts must change, its ACL is unbound first. Accounts are unbound
last-bound first: tgtd (1.0.85) corrupts its account list, and crashes, otherwise.

The CHAP secret is given to the runner as a secret (masked in logs and errors). It is on
tgtadm's command line while that one command runs (tgtadm has no other way to take it), so the
tgt host should not have untrusted local users.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from backends.base import ExportInfo, Initiator, IscsiSource
from backends.errors import SetupError
from backends.export.errors import ExportConflict, ExportError
from backends.export.records import RecordDirectory, TargetRecord, check_volume_id
from backends.export.tgtshow import LiveLun, LiveTarget, parse_accounts, parse_system, parse_targets
from backends.options import Options
from hostcmds import (
    CommandNotFound,
    CommandResult,
    CommandRunner,
    CommandTemplates,
    HostCommandError,
)
from hostcmds.templates import Value

log = logging.getLogger(__name__)

TOOL = "tgt"
TEMPLATES = (
    "showSystemCmd",
    "showAccountsCmd",
    "showTargetsCmd",
    "newTargetCmd",
    "forceDeleteTargetCmd",
    "newLunCmd",
    "deleteLunCmd",
    "lunOfflineCmd",
    "lunReopenCmd",
    "lunOnlineCmd",
    "bindAddressCmd",
    "unbindAddressCmd",
    "bindInitiatorNameCmd",
    "unbindInitiatorNameCmd",
    "newAccountCmd",
    "deleteAccountCmd",
    "bindAccountCmd",
    "unbindAccountCmd",
)
LUN = 1
DEFAULT_IQN_PREFIX = "iqn.2010-10.org.ebsemu"
IQN_PREFIX = re.compile(r"iqn\.[0-9]{4}-[0-9]{2}\.[a-z0-9]([a-z0-9.-]*[a-z0-9])?")
INITIATOR_NAME = re.compile(
    r"iqn\.[0-9]{4}-[0-9]{2}\.[A-Za-z0-9.-]+(:[A-Za-z0-9.:_-]+)?|eui\.[0-9A-Fa-f]{16}"
    r"|naa\.[0-9A-Fa-f]{16}([0-9A-Fa-f]{16})?"
)
PORTAL = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}")
CHAP_USER = re.compile(r"ebs-[0-9a-f]{16}")
MAX_CONTROL_PORT = 32767  # tgtd -C accepts 0..32767
SECRET_BYTES = 24  # 192 bits, 32 characters


@dataclass(frozen=True)
class TgtConfig:
    record_dir: Path  # where the per-volume record files go (kept 0700)
    portal: str = "127.0.0.1:3260"  # address:port the VMM hosts connect to
    control_port: int = 0  # tgtd -C N
    iqn_prefix: str = DEFAULT_IQN_PREFIX
    bs_type: str = "rdwr"  # tgt backing store type for new LUNs (rdwr, aio, rbd)
    command_timeout: float = 30.0

    def __post_init__(self) -> None:
        if not IQN_PREFIX.fullmatch(self.iqn_prefix):
            raise SetupError(f"iqn_prefix {self.iqn_prefix!r} is not iqn.YYYY-MM.reversed.domain")
        if not PORTAL.fullmatch(self.portal):
            raise SetupError(f"portal {self.portal!r} is not address:port")
        if not 0 <= self.control_port <= MAX_CONTROL_PORT:
            raise SetupError(f"control_port {self.control_port} is out of range")


def acl_entries(initiator: Initiator) -> tuple[list[str], list[str]]:
    """(addresses, initiator names) to bind for ``initiator``: its address when known (tgt
    admits a match of any one entry, and an address is harder to forge than a name)."""
    if initiator.address:
        return [initiator.address], []
    assert initiator.name is not None  # Initiator guarantees one of the two
    return [], [initiator.name]


def check_initiator(initiator: Initiator) -> Initiator:
    if initiator.address is not None:
        try:
            ipaddress.ip_address(initiator.address)
        except ValueError:
            address = initiator.address
            raise ExportError(f"initiator address {address!r} is not an IP address") from None
    if initiator.name is not None and not INITIATOR_NAME.fullmatch(initiator.name):
        raise ExportError(f"initiator name {initiator.name!r} is not an iqn./eui./naa. name")
    return initiator


def new_chap_secret() -> str:
    """A fresh random secret that can be passed as one command argument (no leading '-')."""
    while True:
        secret = secrets.token_urlsafe(SECRET_BYTES)
        if not secret.startswith("-"):
            return secret


class TgtExport:
    """ExportBackend on a tgtd reached with ``tgtadm -C <control port>``."""

    def __init__(
        self, runner: CommandRunner, templates: CommandTemplates, config: TgtConfig
    ) -> None:
        templates.require(TOOL, TEMPLATES)
        self._runner = runner
        self._templates = templates
        self._config = config
        self._records = RecordDirectory(config.record_dir)
        self._lock = asyncio.Lock()  # tids and account names are allocated under it

    @classmethod
    def from_options(
        cls, options: Mapping[str, str], *, runner: CommandRunner, templates: CommandTemplates
    ) -> TgtExport:
        opts = Options("export tgt", options)
        opts.refuse_unknown(
            {"record_dir", "portal", "control_port", "iqn_prefix", "bs_type", "command_timeout"}
        )
        control_port = opts.text("control_port", "0")
        if not control_port.isdigit():
            raise SetupError(f"[export tgt]: control_port = {control_port!r} is not a number")
        return cls(
            runner,
            templates,
            TgtConfig(
                record_dir=Path(opts.text("record_dir")),
                portal=opts.text("portal", "127.0.0.1:3260"),
                control_port=int(control_port),
                iqn_prefix=opts.text("iqn_prefix", DEFAULT_IQN_PREFIX),
                bs_type=opts.text("bs_type", "rdwr"),
                command_timeout=opts.number("command_timeout", 30.0),
            ),
        )

    def target_iqn(self, volume_id: str) -> str:
        return f"{self._config.iqn_prefix}:{check_volume_id(volume_id)}"

    # -- ExportBackend -----------------------------------------------------------------------

    async def check_setup(self) -> None:
        port = self._config.control_port
        try:
            result = await self._run("showSystemCmd")
        except CommandNotFound as exc:
            raise SetupError("tgtadm is not installed (apt-get install tgt)") from exc
        except HostCommandError as exc:
            raise SetupError(
                f"tgtd does not answer on control port {port} ({exc}); start it with "
                f"tgtd -C {port} --iscsi portal={self._config.portal}"
            ) from exc
        llds, stores = parse_system(result.text)
        if llds.get("iscsi") != "ready":
            raise SetupError(f"tgtd on control port {port}: iSCSI is not ready ({llds})")
        if self._config.bs_type not in stores:
            raise SetupError(
                f"tgtd on control port {port} has no backing store type "
                f"{self._config.bs_type!r} (it has: {', '.join(sorted(stores))})"
            )
        try:
            await asyncio.to_thread(self._records.ensure)
            removed = await asyncio.to_thread(self._records.remove_temp_files)
        except OSError as exc:
            raise SetupError(f"export record directory {self._config.record_dir}: {exc}") from exc
        if removed:
            log.info("removed %d unfinished export record file(s)", removed)

    async def export(self, volume_id: str, device_path: str, initiator: Initiator) -> ExportInfo:
        check_volume_id(volume_id)
        check_initiator(initiator)
        async with self._lock:
            previous = await asyncio.to_thread(self._records.load, volume_id)
            if previous is not None and (previous.backing_store, previous.initiator) != (
                device_path,
                initiator,
            ):
                raise ExportConflict(
                    f"{volume_id} is exported from {previous.backing_store} to "
                    f"{_describe(previous.initiator)}; unexport it first"
                )
            record = previous or TargetRecord(
                volume_id=volume_id,
                iqn=self.target_iqn(volume_id),
                lun=LUN,
                backing_store=device_path,
                bs_type=self._config.bs_type,
                initiator=initiator,
                chap_user=f"ebs-{secrets.token_hex(8)}",
                chap_secret=new_chap_secret(),
            )
            try:
                if previous is None:
                    await asyncio.to_thread(self._records.save, record)
                targets, accounts = await self._live()
                changed = await self._apply(record, previous, targets, accounts)
            except BaseException as exc:
                if previous is None:
                    await self._roll_back(record)
                if isinstance(exc, HostCommandError | OSError):
                    raise ExportError(f"export of {volume_id}: {exc}") from exc
                raise
        if changed:
            log.info(
                "exported %s as %s LUN %d to %s",
                volume_id,
                record.iqn,
                record.lun,
                _describe(initiator),
            )
        return self._info(record)

    async def unexport(self, volume_id: str) -> None:
        check_volume_id(volume_id)
        async with self._lock:
            try:
                await self._remove(volume_id)
            except (HostCommandError, OSError) as exc:
                raise ExportError(f"unexport of {volume_id}: {exc}") from exc

    async def list_exports(self) -> list[str]:
        try:
            targets = await self._targets()
        except HostCommandError as exc:
            raise ExportError(f"cannot list tgtd targets: {exc}") from exc
        prefix = f"{self._config.iqn_prefix}:"
        live = {
            iqn.removeprefix(prefix)
            for iqn in targets
            if iqn.startswith(prefix) and _is_volume_id(iqn.removeprefix(prefix))
        }
        recorded = await asyncio.to_thread(self._records.volume_ids)
        return sorted(live | set(recorded))

    async def refresh_size(self, volume_id: str) -> None:
        """tgtd reads a LUN's size when it opens the backing store: take the LUN offline, give
        it its path again (which reopens the store and reads the size), put it back online.
        Initiators' commands meanwhile get "not ready" and are retried."""
        check_volume_id(volume_id)
        async with self._lock:
            record = await asyncio.to_thread(self._records.load, volume_id)
            if record is None:
                return
            try:
                live = (await self._targets()).get(record.iqn)
                if live is None or record.lun not in live.luns:
                    return  # not in effect: restore re-applies it, at the current size
                await self._run("lunOfflineCmd", tid=live.tid, lun=record.lun)
                try:
                    await self._run(
                        "lunReopenCmd",
                        tid=live.tid,
                        lun=record.lun,
                        backingStore=record.backing_store,
                    )
                finally:
                    await self._run("lunOnlineCmd", tid=live.tid, lun=record.lun)
            except HostCommandError as exc:
                raise ExportError(f"size refresh of {volume_id}: {exc}") from exc
        log.info("%s LUN %d reopened at its new size", record.iqn, record.lun)

    async def restore(self, exports: Iterable[ExportInfo]) -> list[str]:
        records = [self._record_of(info) for info in exports]
        repaired: list[str] = []
        failed: list[str] = []
        async with self._lock:
            try:
                targets, accounts = await self._live()
            except HostCommandError as exc:
                raise ExportError(f"cannot read tgtd's targets: {exc}") from exc
            for wanted in records:
                previous = await asyncio.to_thread(self._records.load, wanted.volume_id)
                record = wanted
                if previous is not None and previous.backing_store == wanted.backing_store:
                    record = dataclasses.replace(wanted, bs_type=previous.bs_type)
                try:
                    if previous != record:
                        await asyncio.to_thread(self._records.save, record)
                    if await self._apply(record, previous, targets, accounts):
                        repaired.append(record.volume_id)
                except (HostCommandError, OSError) as exc:
                    log.error("restoring the export of %s failed: %s", record.volume_id, exc)
                    failed.append(record.volume_id)
                    try:
                        targets, accounts = await self._live()
                    except HostCommandError as again:
                        raise ExportError(f"cannot read tgtd's targets: {again}") from again
        if repaired:
            log.info("re-applied %d export(s): %s", len(repaired), ", ".join(repaired))
        if failed:
            raise ExportError(f"could not restore the exports of {', '.join(failed)}")
        return repaired

    async def health(self, volume_ids: Sequence[str]) -> dict[str, str]:
        try:
            targets = await self._targets()
        except HostCommandError as exc:
            raise ExportError(f"cannot list tgtd targets: {exc}") from exc
        problems: dict[str, str] = {}
        for volume_id in volume_ids:
            record = await asyncio.to_thread(self._records.load, check_volume_id(volume_id))
            iqn = record.iqn if record is not None else self.target_iqn(volume_id)
            problem = _export_problem(record, targets.get(iqn))
            if problem is not None:
                problems[volume_id] = problem
        return problems

    # -- internals ---------------------------------------------------------------------------

    def _info(self, record: TargetRecord) -> ExportInfo:
        return ExportInfo(
            volume_id=record.volume_id,
            device_path=record.backing_store,
            initiator=record.initiator,
            source=IscsiSource(
                portal=self._config.portal,
                iqn=record.iqn,
                lun=record.lun,
                chap_user=record.chap_user,
                chap_secret=record.chap_secret,
            ),
        )

    def _record_of(self, info: ExportInfo) -> TargetRecord:
        """The target record an ExportInfo made by this backend describes."""
        check_volume_id(info.volume_id)
        check_initiator(info.initiator)
        source = info.source
        if not isinstance(source, IscsiSource) or not (source.chap_user and source.chap_secret):
            raise ExportError(f"{info.volume_id}: not an iSCSI export with CHAP credentials")
        return TargetRecord(
            volume_id=info.volume_id,
            iqn=source.iqn,
            lun=source.lun,
            backing_store=info.device_path,
            bs_type=self._config.bs_type,
            initiator=info.initiator,
            chap_user=source.chap_user,
            chap_secret=source.chap_secret,
        )

    async def _apply(
        self,
        record: TargetRecord,
        previous: TargetRecord | None,
        targets: dict[str, LiveTarget],
        accounts: set[str],
    ) -> bool:
        """Make tgtd hold the target exactly as ``record`` says, changing only what differs.
        ``previous`` is the record saved before (its secret is the one tgtd holds, if the
        account exists); ``targets`` and ``accounts`` are tgtd's state, updated as changed.
        Returns True if anything was changed."""
        changed = False
        if previous is not None and previous.iqn != record.iqn and previous.iqn in targets:
            stale = targets.pop(previous.iqn)
            await self._run("forceDeleteTargetCmd", tid=stale.tid)
            changed = True
        stale_users = set()  # accounts of earlier credentials, deleted once unbound
        if previous is not None and previous.chap_user != record.chap_user:
            stale_users.add(previous.chap_user)
        live = targets.get(record.iqn)
        if live is None:
            live = LiveTarget(_free_tid(targets), record.iqn)
            await self._run("newTargetCmd", tid=live.tid, iqn=record.iqn)
            targets[record.iqn] = live
            changed = True
        tid = live.tid
        addresses, names = acl_entries(record.initiator)

        for address in [a for a in live.addresses if a not in addresses]:
            await self._run("unbindAddressCmd", tid=tid, initiatorAddress=address)
            live.addresses.remove(address)
            changed = True
        for name in [n for n in live.names if n not in names]:
            await self._run("unbindInitiatorNameCmd", tid=tid, initiatorName=name)
            live.names.remove(name)
            changed = True

        user = record.chap_user
        secret_known = (
            previous is not None
            and (previous.chap_user, previous.chap_secret) == (user, record.chap_secret)
            and user in accounts
        )
        if not secret_known or live.accounts != [user]:
            await self._close(live)  # no new login while the target's accounts change
            # Last bound first: tgtd (1.0.85) corrupts a target's account list, and crashes,
            # when an account other than the last one bound to it is unbound.
            for bound in reversed(live.accounts):
                await self._run("unbindAccountCmd", tid=tid, chapUser=bound)
                if bound != user and CHAP_USER.fullmatch(bound):
                    stale_users.add(bound)
            live.accounts.clear()
            if not secret_known:
                if user in accounts:
                    await self._run("deleteAccountCmd", chapUser=user)
                    accounts.discard(user)
                await self._run("newAccountCmd", chapUser=user, chapSecret=record.chap_secret)
                accounts.add(user)
            await self._run("bindAccountCmd", tid=tid, chapUser=user)
            live.accounts.append(user)
            changed = True
        for other in sorted(stale_users & accounts):
            await self._run("deleteAccountCmd", chapUser=other)
            accounts.discard(other)
            changed = True

        lun = live.luns.get(record.lun)
        if lun is not None and lun.path != record.backing_store:
            log.warning(
                "%s: LUN %d is backed by %s, not %s; replacing it",
                record.iqn,
                record.lun,
                lun.path,
                record.backing_store,
            )
            await self._run("deleteLunCmd", tid=tid, lun=record.lun)
            del live.luns[record.lun]
            lun = None
        if lun is None:
            await self._run(
                "newLunCmd",
                tid=tid,
                lun=record.lun,
                bsType=record.bs_type,
                backingStore=record.backing_store,
            )
            live.luns[record.lun] = LiveLun(record.lun, record.bs_type, record.backing_store)
            changed = True

        for address in [a for a in addresses if a not in live.addresses]:
            await self._run("bindAddressCmd", tid=tid, initiatorAddress=address)
            live.addresses.append(address)
            changed = True
        for name in [n for n in names if n not in live.names]:
            await self._run("bindInitiatorNameCmd", tid=tid, initiatorName=name)
            live.names.append(name)
            changed = True
        return changed

    async def _close(self, live: LiveTarget) -> None:
        """Unbind every ACL entry: tgtd then refuses every new login to the target."""
        for address in list(live.addresses):
            await self._run("unbindAddressCmd", tid=live.tid, initiatorAddress=address)
            live.addresses.remove(address)
        for name in list(live.names):
            await self._run("unbindInitiatorNameCmd", tid=live.tid, initiatorName=name)
            live.names.remove(name)

    async def _remove(self, volume_id: str) -> None:
        """Delete the volume's target, its CHAP account(s) and its record."""
        record = await asyncio.to_thread(self._records.load, volume_id)
        iqns = {self.target_iqn(volume_id)} | ({record.iqn} if record else set())
        targets, accounts = await self._live()
        users = {record.chap_user} if record else set()
        for iqn in sorted(iqns):
            live = targets.get(iqn)
            if live is None:
                continue
            if live.sessions:
                log.warning("%s: %d initiator(s) still logged in; removing", iqn, live.sessions)
            await self._run("forceDeleteTargetCmd", tid=live.tid)
            users.update(u for u in live.accounts if CHAP_USER.fullmatch(u))
            log.info("removed target %s (tid %d)", iqn, live.tid)
        for user in sorted(users & accounts):
            await self._run("deleteAccountCmd", chapUser=user)
        await asyncio.to_thread(self._records.remove, volume_id)

    async def _roll_back(self, record: TargetRecord) -> None:
        try:
            await self._remove(record.volume_id)
        except (HostCommandError, OSError) as exc:
            log.error("rollback of the export of %s failed: %s", record.volume_id, exc)
        else:
            log.info("rolled back the export of %s", record.volume_id)

    async def _live(self) -> tuple[dict[str, LiveTarget], set[str]]:
        targets = await self._targets()
        accounts = parse_accounts((await self._run("showAccountsCmd")).text)
        return targets, accounts

    async def _targets(self) -> dict[str, LiveTarget]:
        return parse_targets((await self._run("showTargetsCmd")).text)

    async def _run(self, key: str, **values: Value) -> CommandResult:
        argv = self._templates.render(TOOL, key, values, controlPort=self._config.control_port)
        hidden = [str(values["chapSecret"])] if "chapSecret" in values else []
        return await self._runner.run(argv, timeout=self._config.command_timeout, secrets=hidden)


def _export_problem(record: TargetRecord | None, live: LiveTarget | None) -> str | None:
    """What keeps a recorded export from serving its volume, or None."""
    if record is None:
        return "it has no export record"
    if live is None:
        return f"its iSCSI target {record.iqn} is gone from tgtd"
    lun = live.luns.get(record.lun)
    if lun is None or lun.path != record.backing_store:
        return f"its iSCSI target {record.iqn} does not serve the volume as LUN {record.lun}"
    if record.chap_user not in live.accounts:
        return f"its iSCSI target {record.iqn} lost its CHAP account"
    if not (live.addresses or live.names):
        return f"its iSCSI target {record.iqn} admits no initiator"
    return None


def _free_tid(targets: Mapping[str, LiveTarget]) -> int:
    used = {target.tid for target in targets.values()}
    tid = 1
    while tid in used:
        tid += 1
    return tid


def _is_volume_id(text: str) -> bool:
    try:
        check_volume_id(text)
    except ExportError:
        return False
    return True


def _describe(initiator: Initiator) -> str:
    return " / ".join(part for part in (initiator.address, initiator.name) if part)
