"""Snapshots: point-in-time copies of volumes, kept in the block store.

CreateSnapshot freezes the volume's bytes before it answers (reflink clone, backend snapshot,
sparse copy, or a copy of only the blocks that differ from its last snapshot: snapshot_freeze);
a job then streams the frozen view into the block store, raising Progress, and the
snapshot becomes `completed` (or `error` with a StatusMessage). Where the volume has not
changed since that last snapshot, the copy finds no block to take and makes no view: the
snapshot completes before the request answers (`pending`, as always).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from backends.base import ViewKeeper
from backends.errors import BackendError
from ebsemu import errors, faults
from ebsemu.model import (
    BLOCK_SIZE,
    SNAPSHOTTABLE,
    Snapshot,
    SnapshotState,
    Volume,
    new_id,
    utcnow,
)
from ebsemu.service import (
    fast_restores,
    guest_pause,
    lineage,
    listing,
    quotas,
    sharing,
    snapshot_data,
    snapshot_freeze,
    snapshot_locks,
)
from ebsemu.service.context import RequestContext
from ebsemu.service.core import Core
from ebsemu.service.encryption import EncryptionService
from ebsemu.service.jobs import CURRENT_JOB
from ebsemu.service.steps import Step, run_steps
from ebsemu.service.storage_hosts import until_reachable
from ebsemu.service.volumes import VolumeService
from ebsemu.store.base import ListQuery, QuotaReached, VolumeNotSnapshottable

log = logging.getLogger(__name__)


def not_snapshottable(volume: Volume) -> errors.ApiError:
    return errors.IncorrectState(
        f"The volume '{volume.id}' is '{volume.state.value}'; "
        "only an available or in-use volume can be snapshotted."
    )


async def pending_snapshot(
    core: Core,
    ctx: RequestContext,
    volume: Volume,
    description: str | None,
    tags: dict[str, str],
    started: datetime,
) -> Snapshot:
    """A new snapshot of ``volume``, pending, to be frozen and read on the volume's host; of
    the volume's lineage."""
    return Snapshot(
        id=new_id("snap"),
        owner_id=ctx.account_id,
        region=ctx.region,
        volume_id=volume.id,
        volume_size_gib=volume.size_gib,
        state=SnapshotState.PENDING,
        start_time=started,
        description=description or "",
        encrypted=volume.encrypted,
        kms_key_id=volume.kms_key_id,
        tags=tags,
        storage_host=volume.storage_host,  # where its view is frozen and read
        lineage=await lineage.of(core.store, volume),
    )


async def complete(
    core: Core,
    snapshot_id: str,
    blocks: int,
    job_id: int | None,
    steps_done: Sequence[str] = (),
    how: str = "",
) -> None:
    """Mark a pending snapshot of ``blocks`` blocks completed, closing its capture job (if
    any) in the same write."""
    if await core.store.complete_snapshot_closing_job(
        snapshot_id, blocks * BLOCK_SIZE, job_id, steps_done
    ):
        log.info("snapshot %s: completed, %d blocks%s", snapshot_id, blocks, how)
        await faults.reach("snapshot.completed")


async def complete_unchanged(
    core: Core, snapshot_id: str, blocks: int, job_id: int | None = None
) -> None:
    """Complete a snapshot whose volume has not changed since the snapshot its manifest was
    seeded with (closing ``job_id``, its recorded capture job, if any): the freeze made no
    view, and there is nothing to capture. Its request still answers `pending`, as every
    CreateSnapshot does."""
    await complete(core, snapshot_id, blocks, job_id, how=", none changed")


class SnapshotService:
    def __init__(
        self,
        core: Core,
        volumes: VolumeService,
        encryption: EncryptionService,
        clock: snapshot_locks.Clock = utcnow,
    ) -> None:
        self._core = core
        self._volumes = volumes
        self._encryption = encryption
        self._clock = clock  # when a snapshot's lock is asked whether it has expired
        core.jobs.register("capture_snapshot", self._run_capture)
        core.jobs.register("delete_snapshot", self._run_delete)

    # ---- API operations ------------------------------------------------------------------

    async def create(
        self, ctx: RequestContext, volume_id: str, description: str | None, tags: dict[str, str]
    ) -> Snapshot:
        if description is not None and len(description) > 255:
            raise errors.InvalidParameterValue("Description must be at most 255 characters.")
        async with self._core.locks.hold(volume_id):
            volume = await self._volumes.get(ctx, volume_id)
            async with quotas.counting(self._core):
                await quotas.check_snapshots(self._core, ctx)
                if volume.state not in SNAPSHOTTABLE:
                    raise not_snapshottable(volume)
                snapshot = await pending_snapshot(
                    self._core, ctx, volume, description, tags, utcnow()
                )
                await self._encryption.keep_snapshot_key(volume, snapshot.id)
                try:
                    job_id = await self._core.store.insert_snapshot_with_job(
                        snapshot,
                        "capture_snapshot",
                        limit=quotas.store_limit(self._core, "snapshots"),
                    )
                except QuotaReached:  # taken meanwhile through another server instance
                    await self._encryption.drop_key(snapshot.id)
                    raise quotas.exceeded(
                        self._core, "snapshots", ctx.region, errors.SnapshotLimitExceeded
                    ) from None
                except VolumeNotSnapshottable:  # its deletion began through another instance
                    await self._encryption.drop_key(snapshot.id)
                    raise not_snapshottable(await self._volumes.get(ctx, volume_id)) from None
            self._core.jobs.recorded(job_id)
            await faults.reach("snapshot.recorded")
            storage = self._core.storage_for(volume)
            try:
                guests = await guest_pause.writers(self._core, volume, storage)
                async with guest_pause.paused(self._core, guests):
                    frozen = await snapshot_freeze.freeze(
                        self._core, storage, volume_id, snapshot.id
                    )
            except (BackendError, OSError) as exc:
                log.error("snapshot %s of %s: freeze failed: %s", snapshot.id, volume_id, exc)
                await self._core.jobs.fail(job_id, f"freeze failed: {exc}")
                await self._fail(snapshot.id, "Snapshot failed: the volume could not be frozen")
                failed = await self._core.store.get_snapshot(snapshot.id)
                assert failed is not None
                return failed
        await faults.reach("snapshot.frozen")
        if frozen.unchanged_blocks is None:
            self._core.jobs.start(job_id, "capture_snapshot", snapshot.id)
            log.info("snapshot %s of %s: pending", snapshot.id, volume_id)
        else:
            try:
                await complete_unchanged(self._core, snapshot.id, frozen.unchanged_blocks, job_id)
            finally:
                self._core.jobs.closed(job_id)
        return snapshot

    async def delete(self, ctx: RequestContext, snapshot_id: str) -> None:
        await self.get(ctx, snapshot_id)
        async with self._core.locks.hold(snapshot_id):
            now = self._clock()
            deletion = await self._core.store.mark_snapshot_deleted(snapshot_id, now)
            if deletion.kept_by is not None:
                raise snapshot_locks.locked(snapshot_id, deletion.kept_by, now)
            if deletion.in_use_by is not None:
                raise errors.InvalidSnapshotInUse(
                    f"The snapshot {snapshot_id} is currently in use by "
                    f"{await self._volume_name(ctx, deletion.in_use_by)}"
                )
            if not deletion.marked:
                return  # deleted meanwhile by a concurrent request
            await self._core.store.clear_snapshot_grantees(snapshot_id)
        await self._core.jobs.submit("delete_snapshot", snapshot_id)

    async def get(self, ctx: RequestContext, snapshot_id: str) -> Snapshot:
        """The caller's own snapshot. One it can see without owning it (shared with it, or
        public) is UnauthorizedOperation; one it cannot see, InvalidSnapshot.NotFound."""
        snapshot = await self.visible(ctx, snapshot_id)
        if snapshot.owner_id != ctx.account_id:
            raise errors.UnauthorizedOperation(
                f"You are not authorized to perform this operation on snapshot {snapshot_id}; "
                "only its owner can."
            )
        return snapshot

    async def visible(self, ctx: RequestContext, snapshot_id: str) -> Snapshot:
        """A snapshot the caller may create volumes from (its own, shared with it, or public)
        in the caller's region; InvalidSnapshot.NotFound for any other id."""
        listing.check_id("snap", snapshot_id)
        snapshot = await self._core.store.get_snapshot(snapshot_id)
        if snapshot is None or snapshot.region != ctx.region:
            raise _not_found(snapshot_id)
        if snapshot.owner_id != ctx.account_id:
            grantees = await self._core.store.effective_snapshot_grantees(snapshot_id)
            if not sharing.may_restore(ctx.account_id, snapshot, grantees):
                raise _not_found(snapshot_id)
        return snapshot

    async def describe(
        self,
        ctx: RequestContext,
        snapshot_ids: list[str],
        owner_ids: list[str],
        restorable_by: list[str],
        raw_filters: list[dict[str, Any]] | None,
        max_results: int | None,
        next_token: str | None,
    ) -> tuple[list[Snapshot], str | None]:
        ids = listing.check_ids("snap", snapshot_ids)
        limit = listing.page_size(
            max_results, low=5, high=1000, ids_given=bool(ids), ids_param="snapshotSet"
        )
        query = ListQuery(
            owner_ids=frozenset({ctx.account_id}),
            region=ctx.region,
            ids=ids,
            filters=listing.filters(raw_filters),
            after_seq=listing.decode_token("snap", next_token),
            limit=limit,
            reach=sharing.reach(ctx.account_id, owner_ids, restorable_by),
            viewer=ctx.account_id,
        )
        page = await listing.fetch_page(self._core.store.list_snapshots, query)
        if ids:
            # An id the filters or owners leave out is no error; one the caller cannot see is.
            found = {s.id for s in page.items}
            for snapshot_id in ids:
                if snapshot_id not in found:
                    await self.visible(ctx, snapshot_id)
        token = listing.next_token("snap", page)
        # Tags belong to the account that put them on: the owner's are not shared.
        shown = [
            s if s.owner_id == ctx.account_id else dataclasses.replace(s, tags={})
            for s in page.items
        ]
        return shown, token

    # ---- jobs ----------------------------------------------------------------------------

    async def _run_capture(self, snapshot_id: str, payload: dict[str, Any]) -> bool:
        """Steps (the view was frozen in the request): capture the view into the block store
        and the manifest (undo: sweep them); then one write marks the snapshot completed, logs
        the step and closes the job; then the view is dropped (or kept as the volume's base).
        A failure leaves the snapshot `error` with a StatusMessage, its blocks swept, its view
        dropped. A view a crash leaves behind after the job closed goes to the periodic sweep
        (ebsemu.service.reconcile.drop_stale_views)."""
        store = self._core.store
        snapshot = await store.get_snapshot(snapshot_id)
        if snapshot is None or snapshot.state is not SnapshotState.PENDING:
            # Resumed after a crash that came once the state was settled: only the view is left.
            host = await store.snapshot_storage_host(snapshot_id)
            if host is not None:
                await self._drop_view(host, snapshot_id)
            return False
        storage = self._core.storage_for(snapshot)
        counted: list[int] = []  # the manifest's blocks, once captured here

        async def capture() -> None:
            stats = await snapshot_data.capture(self._core, snapshot_id, storage)
            counted.append(stats.blocks)
            log.info(
                "snapshot %s: captured %d blocks, %d new, %d read%s",
                snapshot_id,
                stats.blocks,
                stats.new_blocks,
                stats.read_blocks,
                f" (changes since {stats.base_id})" if stats.base_id else "",
            )
            await faults.reach("snapshot.captured")

        async def sweep() -> None:
            await snapshot_data.sweep(self._core, snapshot_id)

        async def mark_completed(done: Sequence[str]) -> None:
            # Counted before the write (a large manifest's count would hold the writer).
            blocks = counted[0] if counted else await store.manifest_block_count(snapshot_id)
            await complete(self._core, snapshot_id, blocks, CURRENT_JOB.get(), done)

        async def failed(exc: Exception | None) -> None:
            await self._fail(snapshot_id, "Snapshot failed: the volume data could not be read")
            await self._drop_view(snapshot.storage_host, snapshot_id)

        plan = [Step("capture", capture, undo=sweep)]
        label = f"snapshot {snapshot_id}"
        if not await run_steps(store, label, plan, failed, close=mark_completed):
            return False
        # Keep the view as the base of the volume's next snapshot where the backend can
        # (RBD, reflinked files), else drop it.
        if not (
            isinstance(storage, ViewKeeper)
            and await self._keep_view(storage, snapshot.storage_host, snapshot_id)
        ):
            await self._drop_view(snapshot.storage_host, snapshot_id)
        return True

    async def _run_delete(self, snapshot_id: str, payload: dict[str, Any]) -> None:
        await self._core.jobs.cancel("capture_snapshot", snapshot_id)
        await fast_restores.disable_deleted(self._core.store, snapshot_id)
        host = await self._core.store.snapshot_storage_host(snapshot_id)
        if host is not None:
            await self._drop_view(host, snapshot_id)
        await snapshot_data.sweep(self._core, snapshot_id)
        await faults.reach("delete_snapshot.swept")
        await self._core.store.remove_snapshot(snapshot_id)
        await self._encryption.drop_key(snapshot_id)
        await self._core.store.clear_snapshot_grantees(snapshot_id)  # if a crash left any
        log.info("snapshot %s: deleted", snapshot_id)

    # ---- helpers -------------------------------------------------------------------------

    async def _drop_view(self, host: str, snapshot_id: str) -> None:
        """Remove the snapshot's frozen view from its storage host, waiting for the host
        while it cannot be reached (a view left behind would hold the host's space). If the
        backend fails otherwise, the view is left to the periodic sweep
        (ebsemu.service.reconcile.drop_stale_views). Copies and snapshots written through the
        EBS direct API never had a view: their host may be one that is not configured."""
        if host not in self._core.storage_hosts.names():
            log.debug("snapshot %s: no view on storage host %s", snapshot_id, host)
            return
        storage = self._core.storage_hosts.backend(host)
        try:
            await until_reachable(
                host, f"snapshot {snapshot_id}: its view", lambda: storage.drop_view(snapshot_id)
            )
        except (BackendError, OSError) as exc:
            log.warning(
                "snapshot %s: dropping its view failed, left for the sweep: %s", snapshot_id, exc
            )

    async def _keep_view(self, storage: ViewKeeper, host: str, snapshot_id: str) -> bool:
        """Keep a completed snapshot's view as the base of its volume's next snapshot; False
        (logged) when that fails, and the view is to be dropped instead."""
        try:
            await until_reachable(
                host, f"snapshot {snapshot_id}: its view", lambda: storage.keep_view(snapshot_id)
            )
        except BackendError as exc:
            log.warning("snapshot %s: its view cannot be kept as a base: %s", snapshot_id, exc)
            return False
        return True

    async def _fail(self, snapshot_id: str, message: str) -> None:
        await self._core.store.transition_snapshot(
            snapshot_id, {SnapshotState.PENDING}, SnapshotState.ERROR, message
        )

    async def _volume_name(self, ctx: RequestContext, volume_id: str) -> str:
        """The volume's id if it is the caller's; another account's volume goes unnamed."""
        volume = await self._core.store.get_volume(volume_id)
        if volume is not None and volume.owner_id == ctx.account_id:
            return volume_id
        return "a volume being created from it"


def _not_found(snapshot_id: str) -> errors.ApiError:
    return errors.InvalidSnapshotNotFound(f"The snapshot '{snapshot_id}' does not exist.")
