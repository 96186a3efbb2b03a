"""CreateSnapshots: one snapshot of each volume attached to an instance, at one instant.

The instance's VMM pauses the guest (QEMU `stop`, `virsh suspend`, `xl pause`), every selected
volume's point-in-time view is taken (the storage backend's freeze: a reflink clone or sparse
copy with the file backend), and the guest resumes — always, even when a view fails. The views
then hold the volumes as they were at one moment: crash-consistent across the volumes. A VMM
that cannot pause (the host driver) gets views taken one after another, consistent per volume
only (docs/consistency.md).

All or nothing: if any view fails, the views already taken are dropped and no snapshot is
created. Once every view exists, the snapshots are inserted in one transaction, `pending`, and
the usual capture job streams each view into the block store. A volume that has not changed
since its last snapshot may have no view (snapshot_freeze): its snapshot completes at once.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from backends.errors import BackendError
from ebsemu import errors
from ebsemu.model import SNAPSHOTTABLE, Attachment, AttachmentState, Snapshot, utcnow
from ebsemu.service import guest_pause, listing, quotas, snapshot_data, snapshot_freeze, validation
from ebsemu.service.attachments import ATTACHABLE_INSTANCE_STATES
from ebsemu.service.context import RequestContext
from ebsemu.service.core import Core
from ebsemu.service.encryption import EncryptionService
from ebsemu.service.instances import InstanceService
from ebsemu.service.snapshot_freeze import Frozen
from ebsemu.service.snapshots import complete_unchanged, not_snapshottable, pending_snapshot
from ebsemu.service.volumes import VolumeService
from ebsemu.store.base import QuotaReached, VolumeNotSnapshottable

log = logging.getLogger(__name__)

# Device names EC2 gives an instance's root volume; a volume attached there is the boot volume.
ROOT_DEVICES = frozenset({"/dev/sda1", "/dev/sda", "/dev/xvda", "/dev/vda", "xvda"})
MAX_EXCLUDED_VOLUMES = 40
COPY_TAGS_SOURCES = ("volume",)
SNAPSHOT_ATTACHMENT_STATES = {AttachmentState.ATTACHED, AttachmentState.BUSY}


@dataclass(frozen=True)
class InstanceSnapshotRequest:
    instance_id: str
    exclude_boot_volume: bool = False
    exclude_volume_ids: tuple[str, ...] = ()
    description: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    copy_tags_from: str | None = None
    outpost_arn: str | None = None
    location: str | None = None


def check_request(req: InstanceSnapshotRequest) -> None:
    if req.outpost_arn is not None:
        raise errors.UnsupportedOperation(
            "There are no Outposts here: omit OutpostArn to create the snapshots in the "
            "instance's Region."
        )
    if req.location not in (None, "regional"):
        raise errors.UnsupportedOperation(
            "There are no Local Zones here: omit Location (or give regional)."
        )
    if req.description is not None and len(req.description) > 255:
        raise errors.InvalidParameterValue("Description must be at most 255 characters.")
    if req.copy_tags_from is not None and req.copy_tags_from not in COPY_TAGS_SOURCES:
        raise errors.InvalidParameterValue(
            f"Value ({req.copy_tags_from[:64]}) for parameter CopyTagsFromSource is invalid. "
            f"Expected: {', '.join(COPY_TAGS_SOURCES)}."
        )
    if len(req.exclude_volume_ids) > MAX_EXCLUDED_VOLUMES:
        raise errors.InvalidParameterValue(
            f"At most {MAX_EXCLUDED_VOLUMES} volume IDs can be excluded, "
            f"not {len(req.exclude_volume_ids)}."
        )
    listing.check_ids("vol", req.exclude_volume_ids)


def select_volumes(
    attachments: Sequence[Attachment], exclude_boot_volume: bool, excluded: Sequence[str]
) -> list[Attachment]:
    """The attachments to snapshot, in device order. Naming the boot volume among the
    excluded data volumes is an error, as in EC2 (ExcludeBootVolume is the way)."""
    for attachment in attachments:
        if attachment.device in ROOT_DEVICES and attachment.volume_id in excluded:
            raise errors.InvalidParameterValue(
                f"The volume '{attachment.volume_id}' is the instance's root volume; "
                "exclude it with ExcludeBootVolume, not ExcludeDataVolumeIds."
            )
    chosen = [
        a
        for a in attachments
        if a.state in SNAPSHOT_ATTACHMENT_STATES
        and a.volume_id not in excluded
        and not (exclude_boot_volume and a.device in ROOT_DEVICES)
    ]
    return sorted(chosen, key=lambda a: a.device)


class MultiSnapshotService:
    def __init__(
        self,
        core: Core,
        volumes: VolumeService,
        instances: InstanceService,
        encryption: EncryptionService,
    ) -> None:
        self._core = core
        self._volumes = volumes
        self._instances = instances
        self._encryption = encryption

    async def create(self, ctx: RequestContext, req: InstanceSnapshotRequest) -> list[Snapshot]:
        check_request(req)
        instance = await self._instances.get(ctx, req.instance_id)
        if instance.state not in ATTACHABLE_INSTANCE_STATES:
            raise errors.IncorrectInstanceState(
                f"The instance '{instance.id}' is not in a valid state for this operation."
            )
        store = self._core.store
        current = (await store.attachments_of_instances([instance.id])).get(instance.id, [])
        chosen = select_volumes(current, req.exclude_boot_volume, req.exclude_volume_ids)
        if not chosen:
            return []
        volume_ids = [a.volume_id for a in chosen]
        async with contextlib.AsyncExitStack() as held:
            for volume_id in sorted(volume_ids):
                await held.enter_async_context(self._core.locks.hold(volume_id))
            await held.enter_async_context(quotas.counting(self._core))
            await quotas.check_snapshots(self._core, ctx, adding=len(chosen))
            snapshots = await self._records(ctx, req, instance.id, volume_ids)
            guest = (instance.vmm, instance.domain)
            frozen = await self._views_at_one_instant(guest, snapshots)
            try:
                for snapshot in snapshots:  # an encrypted volume's snapshot keeps its data key
                    volume = await store.get_volume(snapshot.volume_id)
                    if volume is not None:
                        await self._encryption.keep_snapshot_key(volume, snapshot.id)
                await store.insert_snapshots(
                    snapshots, limit=quotas.store_limit(self._core, "snapshots")
                )
            except BaseException as exc:
                await self._drop_views(snapshots, frozen)
                for snapshot in snapshots:
                    await self._encryption.drop_key(snapshot.id)
                if isinstance(exc, QuotaReached):  # taken meanwhile through another instance
                    raise quotas.exceeded(
                        self._core, "snapshots", ctx.region, errors.SnapshotLimitExceeded
                    ) from None
                if isinstance(exc, VolumeNotSnapshottable):  # as above
                    raise not_snapshottable(await self._volumes.get(ctx, exc.volume_id)) from None
                raise
            captured = [s for s in snapshots if frozen[s.id].has_view]
            job_ids = [await self._core.jobs.record("capture_snapshot", s.id) for s in captured]
            for snapshot_id, done in frozen.items():
                if done.unchanged_blocks is not None:
                    await complete_unchanged(self._core, snapshot_id, done.unchanged_blocks)
        for job_id, snapshot in zip(job_ids, captured, strict=True):
            self._core.jobs.start(job_id, "capture_snapshot", snapshot.id)
        log.info(
            "instance %s: snapshots %s of %s, pending",
            instance.id,
            ", ".join(s.id for s in snapshots),
            ", ".join(volume_ids),
        )
        return snapshots

    async def _records(
        self,
        ctx: RequestContext,
        req: InstanceSnapshotRequest,
        instance_id: str,
        volume_ids: list[str],
    ) -> list[Snapshot]:
        """The snapshots to insert, once every volume is checked (under the volumes' locks)."""
        attached = (await self._core.store.attachments_of_instances([instance_id])).get(
            instance_id, []
        )
        still = {a.volume_id for a in attached if a.state in SNAPSHOT_ATTACHMENT_STATES}
        started = utcnow()
        snapshots = []
        for volume_id in volume_ids:
            volume = await self._volumes.get(ctx, volume_id)
            if volume.state not in SNAPSHOTTABLE or volume_id not in still:
                raise errors.IncorrectState(
                    f"The volume '{volume_id}' is no longer attached to '{instance_id}'; retry."
                )
            tags = dict(volume.tags) if req.copy_tags_from == "volume" else {}
            tags.update(req.tags)
            validation.check_tags(tags)
            snapshots.append(
                await pending_snapshot(self._core, ctx, volume, req.description, tags, started)
            )
        return snapshots

    async def _views_at_one_instant(
        self, guest: guest_pause.Guest, snapshots: list[Snapshot]
    ) -> dict[str, Frozen]:
        """Pause the domain, freeze every volume, resume it; what each snapshot's freeze left
        (snapshot_freeze), by snapshot id. On any failure the views taken are
        dropped, those manifests swept, and InternalError is raised: nothing is left half
        made (a crash meanwhile leaves manifests of no snapshot, which reconciliation sweeps)."""
        domain = guest[1]
        began = time.monotonic()
        taken: list[Snapshot] = []
        frozen: dict[str, Frozen] = {}
        try:
            async with guest_pause.paused(self._core, [guest]) as ours:
                for snapshot in snapshots:
                    storage = self._core.storage_for(snapshot)
                    frozen[snapshot.id] = await snapshot_freeze.freeze(
                        self._core, storage, snapshot.volume_id, snapshot.id
                    )
                    taken.append(snapshot)
        except guest_pause.PauseFailed as exc:
            log.error("no snapshot taken: %s", exc)
            raise errors.InternalError(
                "The instance could not be paused for its snapshots; none was created."
            ) from None
        except BaseException as exc:
            await self._drop_views(taken, frozen)
            if not isinstance(exc, BackendError | OSError):
                raise
            failed = snapshots[len(taken)].volume_id
            log.error("domain %s: view of %s failed, views dropped: %s", domain, failed, exc)
            raise errors.InternalError(
                f"The volume '{failed}' could not be frozen; no snapshot was created."
            ) from None
        log.info(
            "domain %s: %d views taken in %.3f s, %s",
            domain,
            len(taken),
            time.monotonic() - began,
            "paused meanwhile" if ours else "not paused",
        )
        return frozen

    async def _drop_views(
        self, snapshots: Sequence[Snapshot], frozen: Mapping[str, Frozen]
    ) -> None:
        """Drop the views the snapshots' freezes made, and sweep the manifests they seeded."""
        for snapshot in snapshots:
            done = frozen[snapshot.id]
            if done.has_view:
                try:
                    await self._core.storage_for(snapshot).drop_view(snapshot.id)
                except (BackendError, OSError) as exc:
                    log.error("view %s: could not be dropped: %s", snapshot.id, exc)
            if done.seeded:
                await snapshot_data.sweep(self._core, snapshot.id)
