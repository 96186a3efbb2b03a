"""One small adapter per EC2 action: parsed params in, result dict out."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ebsemu import errors
from ebsemu.api import views
from ebsemu.config import Config
from ebsemu.service import sharing, validation, zones
from ebsemu.service.attachments import AttachmentService
from ebsemu.service.context import RequestContext
from ebsemu.service.encryption import EncryptionService
from ebsemu.service.exports import ExportService
from ebsemu.service.fast_restores import FastRestoreService
from ebsemu.service.instances import InstanceService
from ebsemu.service.modifications import ModificationService
from ebsemu.service.multi_snapshots import MultiSnapshotService
from ebsemu.service.public_access import PublicAccessService
from ebsemu.service.sharing import SharingService
from ebsemu.service.snapshot_copies import SnapshotCopyService
from ebsemu.service.snapshot_locks import SnapshotLockService
from ebsemu.service.snapshots import SnapshotService
from ebsemu.service.tags import TagService
from ebsemu.service.volume_status import VolumeStatusService
from ebsemu.service.volumes import VolumeRequest, VolumeService

Params = dict[str, Any]
Result = dict[str, Any]


@dataclass(frozen=True)
class Services:
    config: Config
    volumes: VolumeService
    snapshots: SnapshotService
    tags: TagService
    instances: InstanceService
    attachments: AttachmentService
    sharing: SharingService
    exports: ExportService
    copies: SnapshotCopyService
    multi_snapshots: MultiSnapshotService
    volume_status: VolumeStatusService
    encryption: EncryptionService
    modifications: ModificationService
    fast_restores: FastRestoreService
    public_access: PublicAccessService
    snapshot_locks: SnapshotLockService


Action = Callable[[Services, RequestContext, Params], Awaitable[Result]]
ACTIONS: dict[str, Action] = {}


def action(func: Action) -> Action:
    ACTIONS[func.__name__.replace("_", " ").title().replace(" ", "")] = func
    return func


def _volume_request(
    p: Params,
    *,
    zone: str | None = None,
    zone_id: str | None = None,
    snapshot_id: str | None = None,
    source_volume_id: str | None = None,
) -> VolumeRequest:
    """The parameters CreateVolume and CopyVolumes share, and where the volume comes from."""
    return VolumeRequest(
        zone=zone,
        zone_id=zone_id,
        size_gib=p.get("Size"),
        snapshot_id=snapshot_id,
        volume_type=p.get("VolumeType"),
        iops=p.get("Iops"),
        throughput=p.get("Throughput"),
        encrypted=p.get("Encrypted"),
        kms_key_id=p.get("KmsKeyId"),
        multi_attach=bool(p.get("MultiAttachEnabled")),
        tags=validation.spec_tags(p.get("TagSpecifications", []), "volume"),
        client_token=p.get("ClientToken"),
        source_volume_id=source_volume_id,
    )


@action
async def create_volume(svc: Services, ctx: RequestContext, p: Params) -> Result:
    request = _volume_request(
        p,
        zone=p.get("AvailabilityZone"),
        zone_id=p.get("AvailabilityZoneId"),
        snapshot_id=p.get("SnapshotId"),
    )
    volume = await svc.volumes.create(ctx, request)
    return views.volume_view(volume, attachments=False)


@action
async def copy_volumes(svc: Services, ctx: RequestContext, p: Params) -> Result:
    volume = await svc.volumes.create(ctx, _volume_request(p, source_volume_id=p["SourceVolumeId"]))
    return {"Volumes": [views.volume_view(volume, attachments=False)]}


@action
async def delete_volume(svc: Services, ctx: RequestContext, p: Params) -> Result:
    await svc.volumes.delete(ctx, p["VolumeId"])
    return {}


@action
async def describe_volumes(svc: Services, ctx: RequestContext, p: Params) -> Result:
    volumes, token = await svc.volumes.describe(
        ctx, p.get("VolumeIds", []), p.get("Filters"), p.get("MaxResults"), p.get("NextToken")
    )
    return {"Volumes": [views.volume_view(v) for v in volumes], "NextToken": token}


@action
async def create_snapshot(svc: Services, ctx: RequestContext, p: Params) -> Result:
    tags = validation.spec_tags(p.get("TagSpecifications", []), "snapshot")
    snapshot = await svc.snapshots.create(ctx, p["VolumeId"], p.get("Description"), tags)
    return views.snapshot_view(snapshot)


@action
async def delete_snapshot(svc: Services, ctx: RequestContext, p: Params) -> Result:
    await svc.snapshots.delete(ctx, p["SnapshotId"])
    return {}


@action
async def describe_snapshots(svc: Services, ctx: RequestContext, p: Params) -> Result:
    snapshots, token = await svc.snapshots.describe(
        ctx,
        p.get("SnapshotIds", []),
        p.get("OwnerIds", []),
        p.get("RestorableByUserIds", []),
        p.get("Filters"),
        p.get("MaxResults"),
        p.get("NextToken"),
    )
    return {"Snapshots": [views.snapshot_view(s) for s in snapshots], "NextToken": token}


@action
async def modify_snapshot_attribute(svc: Services, ctx: RequestContext, p: Params) -> Result:
    change = sharing.permission_change(p)
    await svc.sharing.modify(ctx, p["SnapshotId"], change)
    return {}


@action
async def describe_snapshot_attribute(svc: Services, ctx: RequestContext, p: Params) -> Result:
    attribute = p["Attribute"]
    found = await svc.sharing.describe(ctx, p["SnapshotId"], attribute)
    if attribute == sharing.PRODUCT_CODES:
        return {"SnapshotId": p["SnapshotId"], "ProductCodes": found}
    return {"SnapshotId": p["SnapshotId"], "CreateVolumePermissions": found}


@action
async def reset_snapshot_attribute(svc: Services, ctx: RequestContext, p: Params) -> Result:
    await svc.sharing.reset(ctx, p["SnapshotId"], p["Attribute"])
    return {}


@action
async def create_tags(svc: Services, ctx: RequestContext, p: Params) -> Result:
    await svc.tags.create(ctx, p["Resources"], p["Tags"])
    return {}


@action
async def delete_tags(svc: Services, ctx: RequestContext, p: Params) -> Result:
    await svc.tags.delete(ctx, p["Resources"], p.get("Tags"))
    return {}


@action
async def describe_tags(svc: Services, ctx: RequestContext, p: Params) -> Result:
    tags, token = await svc.tags.describe(
        ctx, p.get("Filters"), p.get("MaxResults"), p.get("NextToken")
    )
    return {"Tags": [views.tag_view(t) for t in tags], "NextToken": token}


@action
async def describe_availability_zones(svc: Services, ctx: RequestContext, p: Params) -> Result:
    found = zones.describe_zones(
        svc.config, ctx, p.get("ZoneNames", []), p.get("ZoneIds", []), p.get("Filters")
    )
    return {"AvailabilityZones": [views.zone_view(z) for z in found]}


@action
async def describe_regions(svc: Services, ctx: RequestContext, p: Params) -> Result:
    endpoint = f"{svc.config.host}:{svc.config.port}"
    names = zones.describe_regions(svc.config, p.get("RegionNames", []), p.get("Filters"), endpoint)
    return {
        "Regions": [
            {"RegionName": name, "Endpoint": endpoint, "OptInStatus": "opt-in-not-required"}
            for name in names
        ]
    }


@action
async def describe_instances(svc: Services, ctx: RequestContext, p: Params) -> Result:
    found, token = await svc.instances.describe(
        ctx, p.get("InstanceIds", []), p.get("Filters"), p.get("MaxResults"), p.get("NextToken")
    )
    return {
        "Reservations": [views.reservation_view(i, a) for i, a in found],
        "NextToken": token,
    }


@action
async def attach_volume(svc: Services, ctx: RequestContext, p: Params) -> Result:
    attachment = await svc.attachments.attach(ctx, p["VolumeId"], p["InstanceId"], p["Device"])
    return views.attachment_view(attachment)


@action
async def detach_volume(svc: Services, ctx: RequestContext, p: Params) -> Result:
    attachment = await svc.attachments.detach(
        ctx, p["VolumeId"], p.get("InstanceId"), p.get("Device"), bool(p.get("Force"))
    )
    return views.attachment_view(attachment)


@action
async def modify_instance_attribute(svc: Services, ctx: RequestContext, p: Params) -> Result:
    mappings = p.get("BlockDeviceMappings")
    others = set(p) - {"InstanceId", "BlockDeviceMappings", "DryRun"}
    if not mappings or others:
        raise errors.UnsupportedOperation(
            "Only BlockDeviceMappings (Ebs.DeleteOnTermination) can be modified here."
        )
    values: dict[str, bool] = {}
    for mapping in mappings:
        ebs = mapping.get("Ebs") or {}
        if "DeviceName" not in mapping or "DeleteOnTermination" not in ebs:
            raise errors.MissingParameter(
                "Each block device mapping needs DeviceName and Ebs.DeleteOnTermination"
            )
        values[mapping["DeviceName"]] = ebs["DeleteOnTermination"]
    await svc.attachments.set_delete_on_termination(ctx, p["InstanceId"], values)
    return {}


# Actions kept in modules of their own register themselves when imported (after `action`).
# CopySnapshot, CreateSnapshots; ModifyVolume; volume attributes and status; fast snapshot
# restores; block public access for snapshots; snapshot locks:
from ebsemu.api import (  # noqa: E402, F401
    actions_copies,
    actions_fast_restores,
    actions_modify,
    actions_public_access,
    actions_snapshot_locks,
    actions_status,
)
