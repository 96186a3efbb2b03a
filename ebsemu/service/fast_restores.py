"""Fast snapshot restores: EnableFastSnapshotRestores, DisableFastSnapshotRestores and
DescribeFastSnapshotRestores, per account, snapshot and Availability Zone.

Enable answers `enabling`; a job then moves the zone to `optimizing` while the snapshot's
storage host prepares it, and to `enabled`. Disable answers `disabling`; the job moves it to
`disabled`. On a storage host that can keep a snapshot's point-in-time copy for clones (the
rbd backend, ``FastRestoreKeeper``), optimizing keeps the snapshot's RBD snapshot (protected,
never replaced by later views) while any account has fast restores of it in a zone that host
serves, and CreateVolume from it there is an O(1) ``rbd clone``. Elsewhere (file, lvm,
remote-file hosts; a zone the snapshot's host does not serve; an RBD snapshot whose
point-in-time copy has already gone) the states are kept and reported as AWS reports them,
and volumes are restored block by block as without fast restores: the data is the same, only
the speed differs.

Deleting a snapshot disables its fast restores (AWS: "When you delete a snapshot that you own,
fast snapshot restore is automatically disabled for that snapshot"), and so does unsharing it for
the accounts it was shared with ("If you enabled fast snapshot restore for a snapshot that is
shared with you, and the snapshot owner deletes or unshares it, fast snapshot restore is
automatically disabled for the shared snapshot in your account").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from backends.base import FastRestoreKeeper
from backends.errors import BackendError
from ebsemu import errors
from ebsemu.config import Zone
from ebsemu.fast_restore import (
    ACTIVE_STATES,
    LIFECYCLE,
    SNAPSHOT_DELETED,
    USER_INITIATED,
    FastRestore,
    FastRestoreState,
)
from ebsemu.model import Snapshot, SnapshotState, utcnow
from ebsemu.service import listing, sharing
from ebsemu.service.context import RequestContext
from ebsemu.service.core import Core
from ebsemu.store.base import ListQuery, Store

if TYPE_CHECKING:  # snapshots.py imports this module (deleting disables fast restores)
    from ebsemu.service.snapshots import SnapshotService

log = logging.getLogger(__name__)

JOB = "fast_snapshot_restore"
# AWS: "You can enable fast snapshot restore for up to 5 snapshots per Region" (a quota counted
# over snapshots in any fast snapshot restore state but disabled). The error code AWS gives
# when it is reached could not be confirmed from its documentation; this one names it.
SNAPSHOT_LIMIT = 5
LIMIT_CODE = "FastSnapshotRestoreLimitExceeded"
PREPARE_ATTEMPTS = 120  # the view may still be pending or read as a diff base: 60 s at most
PREPARE_INTERVAL = 0.5


@dataclass(frozen=True)
class ZoneError:
    """One Unsuccessful item's zone: the AWS error code and message."""

    snapshot_id: str
    zone: str | None
    zone_id: str | None
    code: str
    message: str


class FastRestoreService:
    def __init__(self, core: Core, snapshots: SnapshotService) -> None:
        self._core = core
        self._snapshots = snapshots
        core.jobs.register(JOB, self._run)

    async def enable(
        self,
        ctx: RequestContext,
        snapshot_ids: Sequence[str],
        zone_names: Sequence[str],
        zone_ids: Sequence[str],
    ) -> tuple[list[FastRestore], list[ZoneError]]:
        done: list[FastRestore] = []
        failed: list[ZoneError] = []
        wanted = _wanted(snapshot_ids, zone_names, zone_ids)
        for snapshot_id in dict.fromkeys(snapshot_ids):
            snapshot, zones, errs = await self._resolve(ctx, snapshot_id, wanted)
            failed += errs
            if snapshot is None:
                continue
            if snapshot.state is not SnapshotState.COMPLETED:
                failed += [
                    ZoneError(
                        snapshot_id,
                        zone.name,
                        zone.zone_id,
                        errors.IncorrectState.code,
                        f"The snapshot '{snapshot_id}' is not in the 'completed' state.",
                    )
                    for zone in zones
                ]
                continue
            started = False
            for zone in zones:
                record = _new_record(
                    ctx, snapshot, zone, FastRestoreState.ENABLING, enabling_time=utcnow()
                )
                outcome = await self._core.store.begin_fast_restore(record, SNAPSHOT_LIMIT)
                if outcome is None:
                    failed.append(
                        ZoneError(
                            snapshot_id,
                            zone.name,
                            zone.zone_id,
                            LIMIT_CODE,
                            f"You can enable fast snapshot restores for at most "
                            f"{SNAPSHOT_LIMIT} snapshots per Region.",
                        )
                    )
                    continue
                done.append(outcome[0])
                started = started or outcome[1]
            if started:
                await self._core.jobs.submit(JOB, snapshot_id)
        return done, failed

    async def disable(
        self,
        ctx: RequestContext,
        snapshot_ids: Sequence[str],
        zone_names: Sequence[str],
        zone_ids: Sequence[str],
    ) -> tuple[list[FastRestore], list[ZoneError]]:
        """Each zone's fast restore as it is once disabling began: `disabling` with the times
        of its earlier states; `disabled` where it was not enabled."""
        done: list[FastRestore] = []
        failed: list[ZoneError] = []
        wanted = _wanted(snapshot_ids, zone_names, zone_ids)
        for snapshot_id in dict.fromkeys(snapshot_ids):
            snapshot, zones, errs = await self._resolve(ctx, snapshot_id, wanted)
            failed += errs
            if snapshot is None:
                continue
            current = {
                r.zone: r
                for r in await self._core.store.fast_restores_of(snapshot_id, ctx.account_id)
            }
            started = False
            for zone in zones:
                now = utcnow()
                record = current.get(zone.name)
                if record is None:
                    record = _new_record(
                        ctx, snapshot, zone, FastRestoreState.DISABLED, disabled_time=now
                    )
                elif await self._core.store.transition_fast_restore(
                    record, ACTIVE_STATES, FastRestoreState.DISABLING, USER_INITIATED, now
                ):
                    record = replace(
                        record,
                        state=FastRestoreState.DISABLING,
                        reason=USER_INITIATED,
                        disabling_time=now,
                    )
                    started = True
                done.append(record)
            if started:
                await self._core.jobs.submit(JOB, snapshot_id)
        return done, failed

    async def describe(
        self,
        ctx: RequestContext,
        raw_filters: list[dict[str, Any]] | None,
        max_results: int | None,
        next_token: str | None,
    ) -> tuple[list[FastRestore], str | None]:
        if max_results is not None and not 0 <= max_results <= 200:
            raise errors.InvalidParameterValue(
                f"Value ( {max_results} ) for parameter maxResults is invalid. "
                "Expecting a value between 0 and 200."
            )
        query = ListQuery(
            owner_ids=frozenset({ctx.account_id}),
            region=ctx.region,
            filters=listing.filters(raw_filters),
            after_seq=listing.decode_token("fsr", next_token),
            limit=max(max_results, 1) if max_results is not None else None,
        )
        page = await listing.fetch_page(self._core.store.list_fast_restores, query)
        return page.items, listing.next_token("fsr", page)

    async def disable_unshared(self, snapshot: Snapshot, grantees: Collection[str]) -> None:
        """The snapshot's permissions changed: the fast restores of every account that may no
        longer create volumes from it begin disabling (the owner's are kept)."""
        started = False
        for record in await self._core.store.fast_restores_of(snapshot.id):
            if sharing.may_restore(record.account_id, snapshot, grantees):
                continue
            started |= await self._core.store.transition_fast_restore(
                record, ACTIVE_STATES, FastRestoreState.DISABLING, SNAPSHOT_DELETED, utcnow()
            )
        if started:
            log.info(
                "snapshot %s: fast restores of accounts it is no longer shared with disabling",
                snapshot.id,
            )
            await self._core.jobs.submit(JOB, snapshot.id)

    # ---- the job -------------------------------------------------------------------------

    async def _run(self, snapshot_id: str, payload: dict[str, Any]) -> None:
        """Move the snapshot's fast restores on: enabling -> optimizing -> enabled (the
        storage host keeps the snapshot for clones meanwhile, where it can), disabling ->
        disabled (the host lets it go once no account has any enabled)."""
        async with self._core.locks.hold(f"fast-restore:{snapshot_id}"):
            store = self._core.store
            records = await store.fast_restores_of(snapshot_id)
            enabling = [r for r in records if r.state is FastRestoreState.ENABLING]
            for record in enabling:
                await store.transition_fast_restore(
                    record,
                    {FastRestoreState.ENABLING},
                    FastRestoreState.OPTIMIZING,
                    LIFECYCLE,
                    utcnow(),
                )
            optimizing = [
                r
                for r in records
                if r.state in (FastRestoreState.ENABLING, FastRestoreState.OPTIMIZING)
            ]
            snapshot = await store.get_snapshot(snapshot_id)
            if optimizing and snapshot is not None:
                if snapshot.state is SnapshotState.COMPLETED:  # not one being deleted
                    await self._prepare(snapshot, {r.zone for r in optimizing})
                for record in optimizing:
                    await store.transition_fast_restore(
                        record,
                        {FastRestoreState.OPTIMIZING},
                        FastRestoreState.ENABLED,
                        LIFECYCLE,
                        utcnow(),
                    )
            # The host lets the snapshot go before the last zone answers disabled.
            active = [r for r in records if r.state in ACTIVE_STATES]
            if not active and snapshot is not None:
                await self._release(snapshot)
            for record in records:
                if record.state is FastRestoreState.DISABLING:
                    await store.transition_fast_restore(
                        record,
                        {FastRestoreState.DISABLING},
                        FastRestoreState.DISABLED,
                        LIFECYCLE,
                        utcnow(),
                    )

    async def _prepare(self, snapshot: Snapshot, zones: set[str]) -> None:
        """Keep the snapshot's point-in-time copy for clones on its storage host, when that
        host can and serves one of ``zones``; otherwise restores stay block by block."""
        storage = self._keeper(snapshot, zones)
        if storage is None:
            log.info("snapshot %s: fast restores without a clone path here", snapshot.id)
            return
        for _ in range(PREPARE_ATTEMPTS):
            try:
                kept = await storage.keep_for_fast_restores(snapshot.id)
            except BackendError as exc:
                log.warning("snapshot %s: cannot keep its view for clones: %s", snapshot.id, exc)
                return
            if kept is not None:
                if not kept:
                    log.info(
                        "snapshot %s: its point-in-time copy has gone from %s; fast restores "
                        "restore its blocks",
                        snapshot.id,
                        snapshot.storage_host,
                    )
                return
            await asyncio.sleep(PREPARE_INTERVAL)
        log.warning("snapshot %s: its view could not be kept for clones in time", snapshot.id)

    async def _release(self, snapshot: Snapshot) -> None:
        storage = self._keeper(snapshot, None)
        if storage is None:
            return
        try:
            await storage.release_fast_restores(snapshot.id)
        except BackendError as exc:  # dropped with the snapshot's view when it is deleted
            log.warning("snapshot %s: cannot release its view: %s", snapshot.id, exc)

    def _keeper(self, snapshot: Snapshot, zones: set[str] | None) -> FastRestoreKeeper | None:
        hosts = self._core.storage_hosts
        if snapshot.storage_host not in hosts.names():
            return None
        entry = hosts.entry(snapshot.storage_host)
        if zones is not None and entry.zone is not None and entry.zone not in zones:
            return None
        return entry.backend if isinstance(entry.backend, FastRestoreKeeper) else None

    # ---- helpers -------------------------------------------------------------------------

    async def _resolve(
        self, ctx: RequestContext, snapshot_id: str, wanted: list[tuple[str | None, str | None]]
    ) -> tuple[Snapshot | None, list[Zone], list[ZoneError]]:
        """The snapshot (one the caller owns or may restore) and the zones asked for; an
        error item per zone for what is not found."""
        failed: list[ZoneError] = []
        snapshot: Snapshot | None = None
        try:
            snapshot = await self._snapshots.visible(ctx, snapshot_id)
        except errors.ApiError as exc:
            failed += [ZoneError(snapshot_id, n, i, exc.code, exc.message) for n, i in wanted]
        zones: list[Zone] = []
        for name, zone_id in wanted:
            try:
                zone = self._core.zone(ctx.region, name, zone_id)
            except errors.ApiError as exc:
                if snapshot is not None:
                    failed.append(ZoneError(snapshot_id, name, zone_id, exc.code, exc.message))
                continue
            if zone not in zones:
                zones.append(zone)
        return snapshot, zones, failed


async def disable_deleted(store: Store, snapshot_id: str) -> None:
    """A snapshot is being deleted: each account's fast restores of it become disabled."""
    for record in await store.fast_restores_of(snapshot_id):
        await store.transition_fast_restore(
            record,
            {*ACTIVE_STATES, FastRestoreState.DISABLING},
            FastRestoreState.DISABLED,
            SNAPSHOT_DELETED,
            utcnow(),
        )


def _wanted(
    snapshot_ids: Sequence[str], zone_names: Sequence[str], zone_ids: Sequence[str]
) -> list[tuple[str | None, str | None]]:
    if not snapshot_ids:
        raise errors.MissingParameter("The request must contain the parameter SourceSnapshotId")
    wanted: list[tuple[str | None, str | None]] = [(n, None) for n in dict.fromkeys(zone_names)]
    wanted += [(None, i) for i in dict.fromkeys(zone_ids)]
    if not wanted:
        raise errors.MissingParameter(
            "The request must contain the parameter AvailabilityZone or AvailabilityZoneId"
        )
    return wanted


def _new_record(
    ctx: RequestContext,
    snapshot: Snapshot,
    zone: Zone,
    state: FastRestoreState,
    *,
    enabling_time: datetime | None = None,
    disabled_time: datetime | None = None,
) -> FastRestore:
    """The caller's fast restore of ``snapshot`` in ``zone``, new in ``state`` (a user's
    request) with the time of that state."""
    return FastRestore(
        account_id=ctx.account_id,
        snapshot_id=snapshot.id,
        zone=zone.name,
        zone_id=zone.zone_id,
        region=ctx.region,
        state=state,
        reason=USER_INITIATED,
        snapshot_owner_id=snapshot.owner_id,
        enabling_time=enabling_time,
        disabled_time=disabled_time,
    )
