"""CopySnapshot: a copy of a completed snapshot, in the region the request is sent to.

The source is named by SourceRegion and SourceSnapshotId; it may be another account's snapshot
shared with the caller (or public). The copy shares the source's blocks in the block store: its
manifest rows are copied from the source's in the same transaction that inserts it, and no
block is written. Block garbage collection counts manifest rows, so deleting the source later
frees nothing the copy still names.

The copy starts `pending` with the VolumeId EC2 gives copies (vol-ffffffff); a job checks that
every block its manifest names is in the block store, raising Progress, and marks it
`completed` (or `error` with a StateMessage if a block is missing).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from backends.errors import BackendError
from ebsemu import errors
from ebsemu.model import BLOCK_SIZE, COPY_VOLUME_ID, Snapshot, SnapshotState, new_id, utcnow
from ebsemu.service import quotas
from ebsemu.service.context import RequestContext
from ebsemu.service.core import Core
from ebsemu.service.encryption import EncryptionService
from ebsemu.service.snapshots import SnapshotService
from ebsemu.store.base import QuotaReached

log = logging.getLogger(__name__)

CHECK_BATCH = 1024  # manifest rows checked per progress step
DURATION_STEP_MINUTES = 15  # CompletionDurationMinutes: 15-minute increments
DURATION_MAX_MINUTES = 2880


@dataclass(frozen=True)
class CopyRequest:
    source_region: str
    source_snapshot_id: str
    description: str | None = None
    encrypted: bool | None = None
    kms_key_id: str | None = None
    tags: dict[str, str] | None = None
    completion_minutes: int | None = None
    outpost_arn: str | None = None
    local_zone: str | None = None


def _check_request(req: CopyRequest, regions: tuple[str, ...]) -> None:
    if req.outpost_arn is not None or req.local_zone is not None:
        raise errors.UnsupportedOperation(
            "Copying snapshots to an Outpost or a Local Zone is not supported here: "
            "omit DestinationOutpostArn and DestinationAvailabilityZone."
        )
    if req.source_region not in regions:
        raise errors.InvalidParameterValue(
            f"Value ({req.source_region[:64]}) for parameter sourceRegion is invalid. "
            f"Expected one of: {', '.join(regions)}."
        )
    if req.description is not None and len(req.description) > 255:
        raise errors.InvalidParameterValue("Description must be at most 255 characters.")
    if req.kms_key_id is not None and not req.encrypted:
        raise errors.InvalidParameterDependency(
            "The parameter KmsKeyId requires the parameter Encrypted to be set."
        )
    minutes = req.completion_minutes
    if minutes is not None and not (
        DURATION_STEP_MINUTES <= minutes <= DURATION_MAX_MINUTES
        and minutes % DURATION_STEP_MINUTES == 0
    ):
        raise errors.InvalidParameterValue(
            f"Value ({minutes}) for parameter CompletionDurationMinutes is invalid. Expected "
            f"a multiple of {DURATION_STEP_MINUTES} between {DURATION_STEP_MINUTES} and "
            f"{DURATION_MAX_MINUTES}."
        )


class SnapshotCopyService:
    def __init__(
        self, core: Core, snapshots: SnapshotService, encryption: EncryptionService
    ) -> None:
        self._core = core
        self._snapshots = snapshots
        self._encryption = encryption
        core.jobs.register("copy_snapshot", self._run_copy)

    async def copy(self, ctx: RequestContext, req: CopyRequest) -> Snapshot:
        _check_request(req, self._core.config.regions)
        source_ctx = RequestContext(ctx.account_id, req.source_region, ctx.request_id)
        source = await self._snapshots.visible(source_ctx, req.source_snapshot_id)
        _check_source(source)
        if req.encrypted and not source.encrypted:
            # The copy shares the source's blocks: they are plain text, and a copy must not
            # claim what its data does not have (as CreateVolume from such a snapshot).
            raise errors.UnsupportedOperation(
                f"Cannot make an encrypted copy of the unencrypted snapshot {source.id}: "
                "this snapshot store encrypts a volume only from its creation or from an "
                "encrypted snapshot; copy it with Encrypted=false."
            )
        kms_key_id = await self._encryption.copy_key_arn(ctx, source, req.kms_key_id)
        async with quotas.counting(self._core):
            await quotas.check_snapshots(self._core, ctx)  # counted where the copy is made: here
            snapshot_id = new_id("snap")
            snapshot = Snapshot(
                id=snapshot_id,
                owner_id=ctx.account_id,
                region=ctx.region,
                volume_id=COPY_VOLUME_ID,
                volume_size_gib=source.volume_size_gib,
                state=SnapshotState.PENDING,
                start_time=utcnow(),
                description=_description(req.description, source),
                encrypted=source.encrypted,
                kms_key_id=kms_key_id,
                tags=dict(req.tags or {}),
                lineage=snapshot_id,  # a copy begins a lineage: it is not related to its source
            )
            # Under the source's lock, checked again: a DeleteSnapshot or a revoked permission that
            # came meanwhile is seen, and neither can come until the copy names the source's blocks.
            async with self._core.locks.hold(source.id):
                _check_source(await self._snapshots.visible(source_ctx, source.id))
                # An encrypted copy shares the source's ciphertext, so it keeps the same data key.
                await self._encryption.copy_data_key(source.id, snapshot.id)
                try:
                    await self._insert(ctx, snapshot, source.id)
                except BaseException:
                    await self._encryption.drop_key(snapshot.id)
                    raise
                job_id = await self._core.jobs.record("copy_snapshot", snapshot.id)
        self._core.jobs.start(job_id, "copy_snapshot", snapshot.id)
        log.info(
            "snapshot %s: copy of %s (%s -> %s), pending",
            snapshot.id,
            source.id,
            source.region,
            ctx.region,
        )
        return snapshot

    async def _insert(self, ctx: RequestContext, snapshot: Snapshot, source_id: str) -> None:
        limit = quotas.store_limit(self._core, "snapshots")
        try:
            copied = await self._core.store.insert_snapshot_copy(snapshot, source_id, limit=limit)
        except QuotaReached:  # taken meanwhile through another server instance
            raise quotas.exceeded(
                self._core, "snapshots", ctx.region, errors.SnapshotLimitExceeded
            ) from None
        if not copied:
            raise errors.IncorrectState(f"The snapshot '{source_id}' changed state; retry.")

    async def _run_copy(self, snapshot_id: str, payload: dict[str, Any]) -> None:
        store = self._core.store
        snapshot = await store.get_snapshot(snapshot_id)
        if snapshot is None or snapshot.state is not SnapshotState.PENDING:
            return
        manifest = await store.manifest(snapshot_id)
        reported = 0
        for start in range(0, len(manifest), CHECK_BATCH):
            digests = [digest for _, digest in manifest[start : start + CHECK_BATCH]]
            try:
                missing = await asyncio.to_thread(self._absent, digests)
            except (BackendError, OSError) as exc:
                missing = digests[:1]
                log.error("snapshot %s: block store check failed: %s", snapshot_id, exc)
            if missing:
                log.error(
                    "snapshot %s: copy names block %s, absent from the block store",
                    snapshot_id,
                    missing[0].hex(),
                )
                await store.transition_snapshot(
                    snapshot_id,
                    {SnapshotState.PENDING},
                    SnapshotState.ERROR,
                    "Snapshot copy failed: a block of the source is missing",
                )
                return
            progress = min(99, (start + len(digests)) * 100 // len(manifest))
            if progress > reported:
                reported = progress
                await store.set_snapshot_progress(snapshot_id, progress)
        if await store.complete_snapshot(snapshot_id, len(manifest) * BLOCK_SIZE):
            log.info("snapshot %s: copy completed, %d blocks shared", snapshot_id, len(manifest))

    def _absent(self, digests: list[bytes]) -> list[bytes]:
        """The digests the block store does not hold (blocking)."""
        return [digest for digest in digests if not self._core.blocks.contains(digest)]


def _description(given: str | None, source: Snapshot) -> str:
    """The copy's description: the one given, else EC2's ``[Copied snap-… from region]``
    followed by the source's own."""
    if given is not None:
        return given
    text = f"[Copied {source.id} from {source.region}]"
    return (f"{text} {source.description}" if source.description else text)[:255]


def _check_source(source: Snapshot) -> None:
    if source.state is not SnapshotState.COMPLETED:
        raise errors.IncorrectState(
            f"The snapshot '{source.id}' is '{source.state.value}'; "
            "only a completed snapshot can be copied."
        )
