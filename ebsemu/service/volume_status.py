"""Volume attributes (autoEnableIO, productCodes), EnableVolumeIO and DescribeVolumeStatus.

A volume's status comes from real checks, made when DescribeVolumeStatus lists it:
- storage: the storage backend still holds the volume, with its size (``health``);
- export: an attached volume served through an export backend (tgt) is still served by it.
`creating`, `deleting` and `error` volumes, volumes a job is working on (attaching, detaching,
changing), and volumes whose backend could not be asked are `insufficient-data` (AWS: the
status does not reflect a volume's error state).

AWS's I/O semantics, as modelled here:
- A failed check opens an I/O incident: the event `potential-data-inconsistency` (id `evol-…`,
  NotBefore when it was first seen); the volume is `impaired`, io-enabled `failed`.
- With autoEnableIO off (the default, as on AWS) the incident also disables I/O: the volume
  stays `impaired` with the action `enable-volume-io`, even after the check passes again (the
  data may be inconsistent: its owner should look at it first), until EnableVolumeIO.
- With autoEnableIO on, I/O is never disabled: the volume is `impaired` while the check fails
  and `ok` again, the incident closed, as soon as it passes.
- EnableVolumeIO re-enables I/O. While the check still fails the volume stays `impaired` (its
  data is still unreachable), without the action; once it passes the incident closes: `ok`.
- Disabled I/O is the status's bookkeeping only: the data path is not fenced (a volume whose
  storage or export is gone does no I/O anyway).
- io-performance is `normal` (`stalled` while a check fails) for Provisioned IOPS volumes (io1,
  io2) and `not-applicable` for the other types.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from backends.errors import BackendError
from ebsemu import errors
from ebsemu.model import GIB, AttachmentState, Volume, VolumeState, VolumeType, utcnow
from ebsemu.service import listing
from ebsemu.service.context import RequestContext
from ebsemu.service.core import Core
from ebsemu.service.volumes import VolumeService
from ebsemu.service.wildcard import Wildcard
from ebsemu.store.base import Filter, ListQuery, VolumeIo
from ebsemu.timefmt import to_wire

log = logging.getLogger(__name__)

AUTO_ENABLE_IO = "autoEnableIO"
PRODUCT_CODES = "productCodes"
ATTRIBUTES = (AUTO_ENABLE_IO, PRODUCT_CODES)

OK, IMPAIRED, INSUFFICIENT = "ok", "impaired", "insufficient-data"
EVENT_TYPE = "potential-data-inconsistency"
ACTION_CODE = "enable-volume-io"
ACTION_DESCRIPTION = "Enable volume I/O"
STORAGE_LOST = "The volume's stored data is missing or damaged; I/O to it cannot succeed."
EXPORT_LOST = "The volume's export to its instance's host is gone; the instance cannot reach it."
CHECKED = frozenset({VolumeState.AVAILABLE, VolumeState.IN_USE})
PROVISIONED_IOPS = frozenset({VolumeType.IO1, VolumeType.IO2})
PAGE_LOW, PAGE_HIGH = 5, 1000
CHUNK = 500  # volumes read and checked at a time
TOKEN_KIND = "volstatus"


@dataclass(frozen=True)
class VolumeEvent:
    event_id: str
    description: str
    since: datetime


@dataclass(frozen=True)
class VolumeStatus:
    """One volume's status: what DescribeVolumeStatus shows of it."""

    volume: Volume
    status: str
    io_enabled: str  # passed | failed | insufficient-data
    io_performance: str  # normal | stalled | not-applicable | insufficient-data
    event: VolumeEvent | None = None
    action_needed: bool = False  # I/O disabled: EnableVolumeIO
    attached_instances: tuple[str, ...] = field(default=())


FILTERS = (
    "action.code",
    "action.description",
    "action.event-id",
    "attachment-status.instance-id",
    "attachment-status.io-performance",
    "availability-zone",
    "event.description",
    "event.event-id",
    "event.event-type",
    "event.not-after",
    "event.not-before",
    "volume-status.details-name",
    "volume-status.details-status",
    "volume-status.status",
)


def check_attribute(attribute: str) -> str:
    if attribute not in ATTRIBUTES:
        raise errors.InvalidParameterValue(
            f"Value ({attribute[:64]}) for parameter attribute is invalid. Unknown attribute."
        )
    return attribute


def new_event_id() -> str:
    return f"evol-{secrets.token_hex(9)[:17]}"


def filter_fields(item: VolumeStatus) -> dict[str, list[str]]:
    """Each filter's values for one status (a filter matches when any one value does)."""
    event = item.event
    action = [ACTION_CODE] if item.action_needed else []
    return {
        "action.code": action,
        "action.description": [ACTION_DESCRIPTION] if action else [],
        "action.event-id": [event.event_id] if action and event else [],
        "attachment-status.instance-id": list(item.attached_instances),
        "attachment-status.io-performance": (
            [item.io_performance] if item.attached_instances else []
        ),
        "availability-zone": [item.volume.zone],
        "event.description": [event.description] if event else [],
        "event.event-id": [event.event_id] if event else [],
        "event.event-type": [EVENT_TYPE] if event else [],
        "event.not-after": [],  # an open incident has no end yet
        "event.not-before": [to_wire(event.since)] if event else [],
        "volume-status.details-name": ["io-enabled", "io-performance"],
        "volume-status.details-status": [item.io_enabled, item.io_performance],
        "volume-status.status": [item.status],
    }


Compiled = tuple[tuple[str, tuple[Wildcard, ...]], ...]


def compile_filters(filters: Sequence[Filter]) -> Compiled:
    """The filters' patterns, compiled once per request; an unknown name is refused."""
    for flt in filters:
        if flt.name not in FILTERS:
            raise listing.unknown_filter(flt.name)
    return tuple(
        (flt.name, tuple(Wildcard.parse(value) for value in flt.values)) for flt in filters
    )


def matches(item: VolumeStatus, filters: Compiled) -> bool:
    """Values of one filter are ORed, filters ANDed; a filter without values matches all."""
    fields = filter_fields(item)
    for name, patterns in filters:
        if patterns and not any(p.fullmatch(v) for p in patterns for v in fields[name]):
            return False
    return True


class VolumeStatusService:
    def __init__(self, core: Core, volumes: VolumeService) -> None:
        self._core = core
        self._volumes = volumes

    # ---- attributes ----------------------------------------------------------------------

    async def describe_attribute(
        self, ctx: RequestContext, volume_id: str, attribute: str
    ) -> dict[str, Any]:
        check_attribute(attribute)
        await self._volumes.get(ctx, volume_id)
        if attribute == PRODUCT_CODES:
            return {"VolumeId": volume_id, "ProductCodes": []}
        record = (await self._core.store.volume_io([volume_id]))[volume_id]
        return {"VolumeId": volume_id, "AutoEnableIO": {"Value": record.auto_enable_io}}

    async def modify_attribute(
        self, ctx: RequestContext, volume_id: str, auto_enable_io: Mapping[str, Any] | None
    ) -> None:
        listing.check_id("vol", volume_id)
        value = (auto_enable_io or {}).get("Value")
        if value is None:  # what EC2 answers a request without AutoEnableIO.Value
            raise errors.InvalidRequest("The request received was invalid.")
        await self._volumes.get(ctx, volume_id)
        await self._core.store.set_auto_enable_io(volume_id, bool(value))
        log.info("volume %s: autoEnableIO %s", volume_id, "on" if value else "off")

    async def enable_io(self, ctx: RequestContext, volume_id: str) -> None:
        await self._volumes.get(ctx, volume_id)
        await self._core.store.enable_volume_io(volume_id)
        log.info("volume %s: I/O enabled", volume_id)

    # ---- DescribeVolumeStatus ------------------------------------------------------------

    async def describe(
        self,
        ctx: RequestContext,
        volume_ids: list[str],
        raw_filters: list[dict[str, Any]] | None,
        max_results: int | None,
        next_token: str | None,
    ) -> tuple[list[VolumeStatus], str | None]:
        ids = listing.check_ids("vol", volume_ids)
        limit = listing.page_size(
            max_results, low=PAGE_LOW, high=PAGE_HIGH, ids_given=bool(ids), ids_param="volumeSet"
        )
        filters = compile_filters(listing.filters(raw_filters))
        after = listing.decode_token(TOKEN_KIND, next_token)
        found: list[VolumeStatus] = []
        seen: set[str] = set()
        while True:
            query = ListQuery(
                owner_ids=frozenset({ctx.account_id}),
                region=ctx.region,
                ids=ids,
                after_seq=after,
                limit=CHUNK,
            )
            page = await listing.fetch_page(self._core.store.list_volumes, query)
            volumes = [v for v in page.items if v.state is not VolumeState.DELETED]
            seen.update(v.id for v in volumes)
            statuses = await self.statuses(volumes)
            for position, item in enumerate(statuses):
                if not matches(item, filters):
                    continue
                found.append(item)
                if limit is not None and len(found) == limit:
                    more = position < len(statuses) - 1 or page.last_seq is not None
                    token = listing.encode_token(TOKEN_KIND, item.volume.seq) if more else None
                    return found, token
            if page.last_seq is None:
                break
            after = page.last_seq
        missing = [i for i in ids if i not in seen]
        if missing:
            shown = ", ".join(f"'{i}'" for i in missing)
            noun, verb = ("volume", "does") if len(missing) == 1 else ("volumes", "do")
            raise errors.InvalidVolumeNotFound(f"The {noun} {shown} {verb} not exist.")
        return found, None

    async def statuses(self, volumes: Sequence[Volume]) -> list[VolumeStatus]:
        """Check the volumes (one backend call per role for all of them) and settle each one's
        I/O incident; their statuses, in order."""
        jobs = self._core.jobs
        checked = [v for v in volumes if v.state in CHECKED and not jobs.busy(v.id)]
        unknown: set[str] = set()
        storage = await self._storage_problems(checked, unknown)
        exported = await self._export_problems(checked, unknown)
        records = await self._core.store.volume_io([v.id for v in checked])
        out: list[VolumeStatus] = []
        for volume in volumes:
            if volume.id not in records or volume.id in unknown:
                out.append(_insufficient(volume))
                continue
            problem = None
            if volume.id in storage:
                problem = (STORAGE_LOST, storage[volume.id])
            elif volume.id in exported:
                problem = (EXPORT_LOST, exported[volume.id])
            record = await self._settle(volume.id, records[volume.id], problem)
            out.append(_status(volume, record, failing=problem is not None))
        return out

    async def _settle(
        self, volume_id: str, record: VolumeIo, problem: tuple[str, str] | None
    ) -> VolumeIo:
        """Open an incident for a new problem; close one whose problem is gone, unless I/O
        stays disabled. ``problem``: (description for the client, detail for the log)."""
        store = self._core.store
        if problem is not None and record.event_id is None:
            description, detail = problem
            record = await store.open_io_incident(volume_id, new_event_id(), description, utcnow())
            log.warning(
                "volume %s: impaired (%s)%s",
                volume_id,
                detail,
                "; I/O disabled until EnableVolumeIO" if record.io_disabled else "",
            )
        elif problem is None and record.event_id is not None and not record.io_disabled:
            await store.close_io_incident(volume_id)
            log.info("volume %s: checks pass again; incident %s closed", volume_id, record.event_id)
            record = VolumeIo(auto_enable_io=record.auto_enable_io)
        return record

    async def _storage_problems(
        self, volumes: Sequence[Volume], unknown: set[str]
    ) -> dict[str, str]:
        if not volumes:
            return {}
        by_host: dict[str, dict[str, int]] = {}
        for volume in volumes:
            by_host.setdefault(volume.storage_host, {})[volume.id] = volume.size_gib * GIB
        problems: dict[str, str] = {}
        for host, sizes in by_host.items():
            try:
                found = await self._core.storage_hosts.backend(host).health(sizes)
            except (BackendError, OSError) as exc:
                log.warning("cannot check %d volumes on storage host %s: %s", len(sizes), host, exc)
                unknown.update(sizes)
                continue
            problems.update({vid: f"storage: {problem}" for vid, problem in found.items()})
        return problems

    async def _export_problems(
        self, volumes: Sequence[Volume], unknown: set[str]
    ) -> dict[str, str]:
        by_host: dict[str, list[str]] = {}
        for volume in volumes:
            if any(a.state is AttachmentState.ATTACHED for a in volume.attachments):
                by_host.setdefault(volume.storage_host, []).append(volume.id)
        problems: dict[str, str] = {}
        for host, attached in by_host.items():
            export = self._core.storage_hosts.entry(host).export
            if export is None:
                continue
            try:
                found = await export.health(attached)
            except (BackendError, OSError) as exc:
                log.warning(
                    "cannot check %d exports on storage host %s: %s", len(attached), host, exc
                )
                unknown.update(attached)
                continue
            problems.update({vid: f"export: {problem}" for vid, problem in found.items()})
        return problems


def _performance(volume: Volume, failing: bool) -> str:
    if volume.volume_type not in PROVISIONED_IOPS:
        return "not-applicable"
    return "stalled" if failing else "normal"


def _attached(volume: Volume) -> tuple[str, ...]:
    return tuple(a.instance_id for a in volume.attachments if a.state is AttachmentState.ATTACHED)


def _insufficient(volume: Volume) -> VolumeStatus:
    performance = INSUFFICIENT if volume.volume_type in PROVISIONED_IOPS else "not-applicable"
    return VolumeStatus(
        volume, INSUFFICIENT, INSUFFICIENT, performance, None, False, _attached(volume)
    )


def _status(volume: Volume, record: VolumeIo, *, failing: bool) -> VolumeStatus:
    event = None
    if record.event_id is not None:
        assert record.event_description is not None and record.event_since is not None
        event = VolumeEvent(record.event_id, record.event_description, record.event_since)
    io_failed = failing or record.io_disabled
    return VolumeStatus(
        volume=volume,
        status=IMPAIRED if io_failed else OK,
        io_enabled="failed" if io_failed else "passed",
        io_performance=_performance(volume, failing),
        event=event,
        action_needed=record.io_disabled,
        attached_instances=_attached(volume),
    )
