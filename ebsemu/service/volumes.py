"""Volumes: create (empty, from a snapshot, or as a copy of a volume), delete, describe — with
AWS's state machine.

creating -> available <-> in-use; available | error -> deleting -> deleted (then NotFound).
API calls answer at once; jobs carry out the work on the storage backend.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from backends.base import StorageBackend, ViewCloner
from backends.errors import BackendError, CapacityError
from ebsemu import errors, faults
from ebsemu.model import (
    BLOCK_SIZE,
    GIB,
    Snapshot,
    SnapshotState,
    Volume,
    VolumeState,
    new_id,
    utcnow,
)
from ebsemu.service import (
    lineage,
    listing,
    quotas,
    sharing,
    snapshot_data,
    validation,
    volume_copies,
    volume_waits,
)
from ebsemu.service.context import RequestContext
from ebsemu.service.core import Core
from ebsemu.service.encryption import EncryptionService
from ebsemu.service.jobs import CURRENT_JOB
from ebsemu.service.steps import Step, run_steps
from ebsemu.service.storage_hosts import host_unreachable, until_reachable
from ebsemu.store.base import (
    ClientTokenRetired,
    ListQuery,
    QuotaReached,
    RestoreSourceGone,
    VolumeNotSnapshottable,
)

log = logging.getLogger(__name__)

DELETABLE = {VolumeState.AVAILABLE, VolumeState.ERROR}


@dataclass(frozen=True)
class VolumeRequest:
    zone: str | None
    zone_id: str | None
    size_gib: int | None
    snapshot_id: str | None
    volume_type: str | None
    iops: int | None
    throughput: int | None
    encrypted: bool | None
    kms_key_id: str | None
    multi_attach: bool
    tags: Mapping[str, str]
    client_token: str | None
    source_volume_id: str | None = None  # CopyVolumes

    def digest(self) -> str:
        """What identifies the request for ClientToken idempotency (all but the token; a
        CreateVolume's as it was before CopyVolumes)."""
        fields = {k: v for k, v in self.__dict__.items() if k != "client_token"}
        if self.source_volume_id is None:
            del fields["source_volume_id"]
        fields["tags"] = sorted(self.tags.items())
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


class VolumeService:
    def __init__(self, core: Core, encryption: EncryptionService) -> None:
        self._core = core
        self._encryption = encryption
        self._created: dict[str, Volume] = {}  # just inserted, until its create job starts
        core.jobs.register("create_volume", self._run_create)
        core.jobs.register("delete_volume", self._run_delete)

    # ---- API operations ------------------------------------------------------------------

    async def create(self, ctx: RequestContext, req: VolumeRequest) -> Volume:
        if req.client_token is not None and len(req.client_token) > 64:
            raise errors.InvalidParameterValue("ClientToken must be at most 64 characters.")
        try:
            if req.source_volume_id is not None:
                return await self._copy(ctx, req)
            async with quotas.counting(self._core):
                volume = await self._validated(ctx, req)
                hosts = self._core.storage_hosts
                if volume.snapshot_id is None:
                    volume = dataclasses.replace(volume, storage_host=hosts.place(volume.zone, 0))
                    stored, job_id = await self._insert(volume, req)
                else:
                    async with self._core.locks.hold(volume.snapshot_id):
                        needed = await self._restore_bytes(ctx, volume.snapshot_id)
                        host = hosts.place(volume.zone, needed)
                        volume = dataclasses.replace(volume, storage_host=host)
                        stored, job_id = await self._insert(volume, req)
        except errors.ApiError:
            # A retry of a request that succeeded gets its volume even where the request would
            # fail now (that volume counts against the limit, or its snapshot is gone).
            earlier = await self._earlier_use(ctx, req)
            if earlier is None:
                raise
            return earlier
        if job_id is None:  # the ClientToken was used before, or by a concurrent request
            return self._idempotent(stored, req)
        self._start(stored, job_id)
        log.info(
            "volume %s: creating (%d GiB %s) on storage host %s",
            stored.id,
            stored.size_gib,
            stored.volume_type.value,
            stored.storage_host,
        )
        return stored

    async def _copy(self, ctx: RequestContext, req: VolumeRequest) -> Volume:
        """CopyVolumes: under the source's lock, the copy is recorded and made; its create
        job grows it to its size and marks it available (volume_copies)."""
        assert req.source_volume_id is not None
        async with self._core.locks.hold(req.source_volume_id):
            async with quotas.counting(self._core):
                volume = await self._validated(ctx, req)
                stored, job_id = await self._insert(volume, req)
            if job_id is None:
                return self._idempotent(stored, req)
            source = await self.get(ctx, req.source_volume_id)
            # Held until started or failed: its lease is renewed however long the copy takes.
            self._core.jobs.recorded(job_id)
            await faults.reach("copy_volume.recorded")
            try:
                await volume_copies.copy(self._core, source, stored.id)
            except (BackendError, OSError) as exc:
                log.error("volume %s: copy of %s failed: %s", stored.id, source.id, exc)
                await self._core.jobs.fail(job_id, f"copy failed: {exc}")
                await self._core.store.transition_volume(
                    stored.id, {VolumeState.CREATING}, VolumeState.ERROR, _creation_failure(exc)
                )
                return await self._core.store.get_volume(stored.id) or stored
        self._start(stored, job_id)
        log.info("volume %s: creating as a copy of %s", stored.id, source.id)
        return stored

    def _start(self, volume: Volume, job_id: int) -> None:
        self._created[volume.id] = volume  # the job starts from it instead of reading it again
        self._core.jobs.start(job_id, "create_volume", volume.id)

    async def delete(self, ctx: RequestContext, volume_id: str) -> None:
        volume = await self.get(ctx, volume_id)
        if volume.state in (VolumeState.DELETING, VolumeState.DELETED):
            return  # a retried delete is harmless
        if volume.state is VolumeState.IN_USE:
            raise errors.VolumeInUse(f"Volume {volume_id} is currently attached to an instance")
        async with self._core.locks.hold(volume_id):
            if not await self._core.store.transition_volume(
                volume_id, DELETABLE, VolumeState.DELETING
            ):
                current = await self.get(ctx, volume_id)
                if current.state in (VolumeState.DELETING, VolumeState.DELETED):
                    return
                raise errors.IncorrectState(
                    f"The volume '{volume_id}' is '{current.state.value}' and cannot be deleted."
                )
        await self._core.jobs.submit("delete_volume", volume_id)

    async def get(self, ctx: RequestContext, volume_id: str) -> Volume:
        """The caller's volume, or InvalidVolume.NotFound (also for another owner's volume, and
        for a deleted one: DescribeVolumes still shows it for a while, nothing else acts on it).
        """
        listing.check_id("vol", volume_id)
        volume = await self._core.store.get_volume(volume_id)
        if volume is None or not self._visible(ctx, volume) or volume.state is VolumeState.DELETED:
            raise errors.InvalidVolumeNotFound(f"The volume '{volume_id}' does not exist.")
        return volume

    async def describe(
        self,
        ctx: RequestContext,
        volume_ids: list[str],
        raw_filters: list[dict[str, Any]] | None,
        max_results: int | None,
        next_token: str | None,
    ) -> tuple[list[Volume], str | None]:
        ids = listing.check_ids("vol", volume_ids)
        limit = listing.page_size(
            max_results, low=5, high=500, ids_given=bool(ids), ids_param="volumeSet"
        )
        query = ListQuery(
            owner_ids=frozenset({ctx.account_id}),
            region=ctx.region,
            ids=ids,
            filters=listing.filters(raw_filters),
            after_seq=listing.decode_token("vol", next_token),
            limit=limit,
        )
        page = await listing.fetch_page(self._core.store.list_volumes, query)
        volumes = [v for v in page.items if self._visible(ctx, v)]
        if ids:
            # An id the filters leave out is no error; one that names no volume is.
            found = {v.id for v in volumes}
            missing = [i for i in ids if i not in found and not await self._exists(ctx, i)]
            if missing:
                shown = ", ".join(f"'{i}'" for i in missing)
                noun = "volume" if len(missing) == 1 else "volumes"
                verb = "does" if len(missing) == 1 else "do"
                raise errors.InvalidVolumeNotFound(f"The {noun} {shown} {verb} not exist.")
        token = listing.next_token("vol", page)
        return volumes, token

    # ---- jobs ----------------------------------------------------------------------------

    async def _run_create(self, volume_id: str, payload: dict[str, Any]) -> bool:
        """Steps: allocate storage (a copy, made in the request, is grown to its size; undo:
        delete it) -> restore the snapshot's data, if any; then one write marks the volume
        available, logs the steps and closes the job. A failure leaves it `error`, its
        storage deleted."""
        store = self._core.store
        volume = self._created.pop(volume_id, None) or await store.get_volume(volume_id)
        if volume is None or volume.state is not VolumeState.CREATING:
            return False
        storage = self._core.storage_for(volume)
        snapshot_id = volume.snapshot_id
        cloned: list[bool] = []

        async def allocate() -> None:
            if volume.source_volume_id is not None:
                if not volume.encrypted:  # an encrypted copy has its source's size
                    await storage.extend(volume_id, volume.size_gib * GIB)
            elif volume.encrypted:
                await self._encryption.create_storage(volume)
            elif await self._cloned(volume, storage):
                cloned.append(True)  # the clone holds the snapshot's data: nothing to restore
            else:
                await storage.create(volume_id, volume.size_gib * GIB)
            await faults.reach("create_volume.allocated")

        async def restore() -> None:
            assert snapshot_id is not None
            if cloned:
                return
            await snapshot_data.restore(self._core, snapshot_id, volume_id, storage)
            await faults.reach("create_volume.restored")

        async def mark_available(done: Sequence[str]) -> None:
            await store.transition_volume_closing_job(
                volume_id,
                {VolumeState.CREATING},
                VolumeState.AVAILABLE,
                CURRENT_JOB.get(),
                [*done, "mark-available"],
            )
            log.info("volume %s: available", volume_id)

        async def failed(exc: Exception | None) -> None:
            log.error(
                "volume %s: creation on storage host %s failed: %s",
                volume_id,
                volume.storage_host,
                exc,
            )
            message = (
                _creation_failure(exc) if exc is not None else "Creation failed: backend error"
            )
            await store.transition_volume(
                volume_id, {VolumeState.CREATING}, VolumeState.ERROR, message
            )

        plan = [Step("allocate", allocate, undo=lambda: storage.delete(volume_id))]
        if snapshot_id is not None:
            plan.append(Step("restore", restore))
        label = f"create_volume {volume_id}"
        return await run_steps(store, label, plan, failed, close=mark_available)

    async def _cloned(self, volume: Volume, storage: StorageBackend) -> bool:
        """Create a volume from a snapshot as a clone of the snapshot's view, where its
        storage host still holds that view (RBD); False when the blocks are to be restored."""
        if volume.snapshot_id is None or not isinstance(storage, ViewCloner):
            return False
        cloned = await storage.clone_from_view(volume.snapshot_id, volume.id, volume.size_gib * GIB)
        if cloned:
            log.info("volume %s: cloned from the view of %s", volume.id, volume.snapshot_id)
        return cloned

    async def _run_delete(self, volume_id: str, payload: dict[str, Any]) -> None:
        volume = await self._core.store.get_volume(volume_id)
        if volume is None or volume.state is not VolumeState.DELETING:
            return
        storage = self._core.storage_for(volume)

        async def remove() -> None:
            await volume_waits.after_freezes(self._core, storage, volume_id)
            await volume_waits.after_copies(self._core, volume_id)
            await volume_waits.after_grow(self._core, volume_id)
            await storage.delete(volume_id)

        # A volume stays `deleting` while its host cannot be reached; any other failure leaves
        # it `error`, so that DeleteVolume can be tried again.
        try:
            await until_reachable(
                volume.storage_host,
                f"volume {volume_id}: stays deleting until its bytes are removed",
                remove,
            )
        except (BackendError, OSError) as exc:
            log.error("volume %s: deletion failed: %s", volume_id, exc)
            await self._core.store.transition_volume(
                volume_id,
                {VolumeState.DELETING},
                VolumeState.ERROR,
                "Deletion failed: backend error; delete the volume again",
            )
            return
        await self._encryption.drop_key(volume_id)
        await faults.reach("delete_volume.removed")
        await self._core.store.transition_volume(
            volume_id, {VolumeState.DELETING}, VolumeState.DELETED
        )
        log.info("volume %s: deleted", volume_id)

    # ---- helpers -------------------------------------------------------------------------

    async def _insert(self, volume: Volume, req: VolumeRequest) -> tuple[Volume, int | None]:
        """Insert the volume (its data key prepared) with its create job; an earlier volume of
        the same ClientToken and no job, instead, when there is one."""
        await self._encryption.prepare_key(volume)
        limit = quotas.store_limit(self._core, "volumes")
        try:
            stored, job_id = await self._core.store.insert_volume_with_job(
                volume, "create_volume", limit=limit
            )
        except QuotaReached:  # taken meanwhile through another server instance
            await self._encryption.drop_key(volume.id)
            raise quotas.exceeded(
                self._core, "volumes", volume.region, errors.VolumeLimitExceeded
            ) from None
        except ClientTokenRetired:
            await self._encryption.drop_key(volume.id)
            raise _token_mismatch(req) from None
        except RestoreSourceGone:  # deleted meanwhile, through another server instance
            await self._encryption.drop_key(volume.id)
            raise _snapshot_not_found(req.snapshot_id) from None
        except VolumeNotSnapshottable as exc:  # the copy's source: as RestoreSourceGone
            await self._encryption.drop_key(volume.id)
            source = await self._core.store.get_volume(exc.volume_id)
            state = VolumeState.DELETED if source is None else source.state
            raise volume_copies.not_copyable(exc.volume_id, state) from None
        if job_id is None:
            await self._encryption.drop_key(volume.id)
        return stored, job_id

    async def _earlier_use(self, ctx: RequestContext, req: VolumeRequest) -> Volume | None:
        """The volume an earlier request with this ClientToken created, if any (and that
        request was this one: IdempotentParameterMismatch otherwise, or if it is gone)."""
        token = ctx.scoped_token(req.client_token)
        if token is None:
            return None
        existing, retired = await self._core.store.client_token_use(ctx.account_id, token)
        if retired is not None:
            raise _token_mismatch(req)  # its volume was deleted and purged
        return None if existing is None else self._idempotent(existing, req)

    async def _exists(self, ctx: RequestContext, volume_id: str) -> bool:
        volume = await self._core.store.get_volume(volume_id)
        return volume is not None and self._visible(ctx, volume)

    @staticmethod
    def _visible(ctx: RequestContext, volume: Volume) -> bool:
        """A deleted volume stays visible to DescribeVolumes until the store purges it."""
        return volume.owner_id == ctx.account_id and volume.region == ctx.region

    @staticmethod
    def _idempotent(existing: Volume, req: VolumeRequest) -> Volume:
        if existing.state in (VolumeState.DELETING, VolumeState.DELETED):
            raise _token_mismatch(req)
        if existing.request_digest != req.digest():
            raise _token_mismatch(req)
        return existing

    async def _validated(self, ctx: RequestContext, req: VolumeRequest) -> Volume:
        store = self._core.store
        source = None
        if req.source_volume_id is not None:  # a copy: in its source's zone, on its host
            source = await self.get(ctx, req.source_volume_id)
            zone = self._core.zone(ctx.region, source.zone, None)
        else:
            if req.zone is not None and req.zone_id is not None:
                raise errors.InvalidParameterCombination(
                    "Only one of AvailabilityZone or AvailabilityZoneId can be specified."
                )
            if req.zone is None and req.zone_id is None:
                raise errors.MissingParameter(
                    "The request must contain the parameter availabilityZone or availabilityZoneId"
                )
            zone = self._core.zone(ctx.region, req.zone, req.zone_id)
        vtype = validation.volume_type(req.volume_type)
        if req.kms_key_id is not None and not req.encrypted:
            raise errors.InvalidParameterDependency(
                "The parameter KmsKeyId requires the parameter Encrypted to be set."
            )
        if req.multi_attach and not validation.LIMITS[vtype].multi_attach:
            raise errors.InvalidParameterCombination(
                f"Multi-Attach is not supported for {vtype.value} volumes."
            )
        size = req.size_gib
        snapshot = None
        if source is not None:
            size = volume_copies.check_source(source, self._core.storage_for(source), size)
        elif req.snapshot_id is not None:
            snapshot = await self._snapshot_for_restore(ctx, req.snapshot_id)
            if size is None:
                size = snapshot.volume_size_gib
            elif size < snapshot.volume_size_gib:
                raise errors.InvalidParameterValue(
                    f"Volume of {size}GiB is smaller than snapshot '{snapshot.id}', "
                    f"expect size >= {snapshot.volume_size_gib}GiB"
                )
        if size is None:
            raise errors.MissingParameter(
                "The request must contain the parameter size or snapshotId"
            )
        validation.check_size(vtype, size)
        iops, throughput = validation.performance(vtype, size, req.iops, req.throughput)
        encryption = await self._encryption.for_new_volume(
            ctx, zone.name, req.encrypted, req.kms_key_id, snapshot or source
        )
        if source is not None:
            volume_copies.check_encrypted_size(source, size)
        await quotas.check_volumes(self._core, ctx)
        volume_id = new_id("vol")
        return Volume(
            id=volume_id,
            owner_id=ctx.account_id,
            region=ctx.region,
            zone=zone.name,
            zone_id=zone.zone_id,
            size_gib=size,
            volume_type=vtype,
            state=VolumeState.CREATING,
            create_time=utcnow(),
            iops=iops,
            throughput=throughput,
            encrypted=encryption.encrypted,
            kms_key_id=encryption.kms_key_id,
            snapshot_id=req.snapshot_id,
            multi_attach=req.multi_attach,
            client_token=ctx.scoped_token(req.client_token),
            request_digest=req.digest() if req.client_token is not None else None,
            tags=dict(req.tags),
            lineage=volume_id if snapshot is None else await lineage.of(store, snapshot),
            storage_host=source.storage_host if source is not None else "default",
            source_volume_id=req.source_volume_id,
        )

    async def _snapshot_for_restore(self, ctx: RequestContext, snapshot_id: str) -> Snapshot:
        """A snapshot the caller may create volumes from: its own, shared with it, or public."""
        listing.check_id("snap", snapshot_id)
        store = self._core.store
        snapshot = await store.get_snapshot(snapshot_id)
        allowed = snapshot is not None and (
            snapshot.owner_id == ctx.account_id
            or sharing.may_restore(
                ctx.account_id, snapshot, await store.effective_snapshot_grantees(snapshot_id)
            )
        )
        if snapshot is None or snapshot.region != ctx.region or not allowed:
            raise _snapshot_not_found(snapshot_id)
        if snapshot.state is not SnapshotState.COMPLETED:
            raise errors.IncorrectState(
                f"Snapshot '{snapshot_id}' is {snapshot.state.value}; "
                "a volume can be created only from a completed snapshot."
            )
        return snapshot

    async def _restore_bytes(self, ctx: RequestContext, snapshot_id: str) -> int:
        """Under the snapshot's lock: it still exists; the bytes its data takes on a volume."""
        await self._snapshot_for_restore(ctx, snapshot_id)
        return await self._core.store.manifest_block_count(snapshot_id) * BLOCK_SIZE


def _creation_failure(exc: BaseException) -> str:
    """The volume's StateMessage for a failed creation (no host detail: that is logged)."""
    if isinstance(exc, CapacityError):
        return "Creation failed: insufficient capacity"
    if isinstance(exc, BackendError) and host_unreachable(exc):
        return "Creation failed: storage host unreachable"
    return "Creation failed: backend error"


def _snapshot_not_found(snapshot_id: str | None) -> errors.ApiError:
    return errors.InvalidSnapshotNotFound(f"The snapshot '{snapshot_id}' does not exist.")


def _token_mismatch(req: VolumeRequest) -> errors.ApiError:
    return errors.IdempotentParameterMismatch(
        "The client token you have provided is associated with a resource that is "
        f"already deleted or has different parameters: {req.client_token}"
    )
