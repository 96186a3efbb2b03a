"""CopySnapshot and CreateSnapshots: parsed params in, result dict out."""

from __future__ import annotations

from typing import Any

from ebsemu.api.actions import Params, Result, Services, action
from ebsemu.api.views import tag_list
from ebsemu.model import Snapshot
from ebsemu.service import validation
from ebsemu.service.context import RequestContext
from ebsemu.service.multi_snapshots import InstanceSnapshotRequest
from ebsemu.service.snapshot_copies import CopyRequest


@action
async def copy_snapshot(svc: Services, ctx: RequestContext, p: Params) -> Result:
    # PresignedUrl and DestinationRegion are accepted and not used: the copy is made in the
    # region the request is signed for, and the source is read from the shared store.
    tags = validation.spec_tags(p.get("TagSpecifications", []), "snapshot")
    request = CopyRequest(
        source_region=p["SourceRegion"],
        source_snapshot_id=p["SourceSnapshotId"],
        description=p.get("Description"),
        encrypted=p.get("Encrypted"),
        kms_key_id=p.get("KmsKeyId"),
        tags=tags,
        completion_minutes=p.get("CompletionDurationMinutes"),
        outpost_arn=p.get("DestinationOutpostArn"),
        local_zone=p.get("DestinationAvailabilityZone"),
    )
    snapshot = await svc.copies.copy(ctx, request)
    return {"SnapshotId": snapshot.id, "Tags": tag_list(snapshot.tags)}


@action
async def create_snapshots(svc: Services, ctx: RequestContext, p: Params) -> Result:
    spec = p["InstanceSpecification"]
    request = InstanceSnapshotRequest(
        instance_id=spec.get("InstanceId", ""),
        exclude_boot_volume=bool(spec.get("ExcludeBootVolume")),
        exclude_volume_ids=tuple(spec.get("ExcludeDataVolumeIds", [])),
        description=p.get("Description"),
        tags=validation.spec_tags(p.get("TagSpecifications", []), "snapshot"),
        copy_tags_from=p.get("CopyTagsFromSource"),
        outpost_arn=p.get("OutpostArn"),
        location=p.get("Location"),
    )
    snapshots = await svc.multi_snapshots.create(ctx, request)
    return {"Snapshots": [snapshot_info_view(s) for s in snapshots]}


def snapshot_info_view(snapshot: Snapshot) -> dict[str, Any]:
    """A snapshot as CreateSnapshots lists it (SnapshotInfo)."""
    return {
        "SnapshotId": snapshot.id,
        "VolumeId": snapshot.volume_id,
        "State": snapshot.state.value,
        "Progress": f"{snapshot.progress}%",
        "StartTime": snapshot.start_time,
        "OwnerId": snapshot.owner_id,
        "Description": snapshot.description,
        "VolumeSize": snapshot.volume_size_gib,
        "Encrypted": snapshot.encrypted,
        "Tags": tag_list(snapshot.tags),
    }
