"""Records to the dicts of their EC2 output shapes (member names as boto3 shows them)."""

from __future__ import annotations

import hashlib
from typing import Any

from ebsemu.config import Zone
from ebsemu.model import (
    Attachment,
    AttachmentState,
    Instance,
    Snapshot,
    SnapshotState,
    TagRecord,
    Volume,
)
from ebsemu.service.instances import STATE_CODES


def tag_list(tags: dict[str, str]) -> list[dict[str, str]] | None:
    """EC2 omits tagSet for an untagged resource."""
    return [{"Key": key, "Value": value} for key, value in tags.items()] or None


def volume_view(volume: Volume, *, attachments: bool = True) -> dict[str, Any]:
    view: dict[str, Any] = {
        "VolumeId": volume.id,
        "OwnerId": volume.owner_id,
        "Size": volume.size_gib,
        "SnapshotId": volume.snapshot_id or "",  # EC2 always sends it; some clients rely on it
        "AvailabilityZone": volume.zone,
        "AvailabilityZoneId": volume.zone_id or None,
        "State": volume.state.value,
        "CreateTime": volume.create_time,
        "Encrypted": volume.encrypted,
        "KmsKeyId": volume.kms_key_id,
        "VolumeType": volume.volume_type.value,
        "Iops": volume.iops,
        "Throughput": volume.throughput,
        "MultiAttachEnabled": volume.multi_attach,
        "SourceVolumeId": volume.source_volume_id,
        "Tags": tag_list(volume.tags),
    }
    if attachments:
        view["Attachments"] = [attachment_view(a) for a in volume.attachments]
    return view


def attachment_view(attachment: Attachment) -> dict[str, Any]:
    return {
        "VolumeId": attachment.volume_id,
        "InstanceId": attachment.instance_id,
        "Device": attachment.device,
        "State": attachment.state.value,
        "AttachTime": attachment.attach_time,
        "DeleteOnTermination": attachment.delete_on_termination,
    }


def _mapping_status(state: AttachmentState) -> str:
    """An instance's block device mapping knows no `busy` (a volume's attachment does): the
    volume is still attached."""
    return AttachmentState.ATTACHED.value if state is AttachmentState.BUSY else state.value


def reservation_view(instance: Instance, attachments: list[Attachment]) -> dict[str, Any]:
    """One reservation per instance: VMM domains are not launched in groups."""
    reservation = hashlib.sha256(instance.id.encode()).hexdigest()[:17]
    return {
        "ReservationId": f"r-{reservation}",
        "OwnerId": instance.owner_id,
        "Groups": [],
        "Instances": [
            {
                "InstanceId": instance.id,
                "State": {"Code": STATE_CODES[instance.state], "Name": instance.state},
                "Placement": {"AvailabilityZone": instance.zone, "Tenancy": "default"},
                "LaunchTime": instance.launch_time,
                "VirtualizationType": "hvm",
                "RootDeviceType": "ebs",
                "BlockDeviceMappings": [
                    {
                        "DeviceName": a.device,
                        "Ebs": {
                            "AttachTime": a.attach_time,
                            "DeleteOnTermination": a.delete_on_termination,
                            "Status": _mapping_status(a.state),
                            "VolumeId": a.volume_id,
                        },
                    }
                    for a in attachments
                ],
                "Tags": tag_list(instance.tags),
            }
        ],
    }


def snapshot_view(snapshot: Snapshot) -> dict[str, Any]:
    completed = snapshot.state is SnapshotState.COMPLETED
    return {
        "SnapshotId": snapshot.id,
        "VolumeId": snapshot.volume_id,
        "State": snapshot.state.value,
        "StateMessage": snapshot.state_message,
        "StartTime": snapshot.start_time,
        "Progress": f"{snapshot.progress}%",
        "OwnerId": snapshot.owner_id,
        "Description": snapshot.description,
        "VolumeSize": snapshot.volume_size_gib,
        "Encrypted": snapshot.encrypted,
        "KmsKeyId": snapshot.kms_key_id,
        "StorageTier": "standard",
        "CompletionTime": snapshot.completion_time if completed else None,
        "FullSnapshotSizeInBytes": snapshot.full_size_bytes if completed else None,
        "Tags": tag_list(snapshot.tags),
    }


def tag_view(tag: TagRecord) -> dict[str, str]:
    return {
        "ResourceId": tag.resource_id,
        "ResourceType": tag.resource_type,
        "Key": tag.key,
        "Value": tag.value,
    }


def zone_view(zone: Zone) -> dict[str, Any]:
    return {
        "ZoneName": zone.name,
        "ZoneId": zone.zone_id,
        "RegionName": zone.region,
        "State": "available",
        "OptInStatus": "opt-in-not-required",
        "ZoneType": "availability-zone",
        "GroupName": zone.region,
        "GroupLongName": zone.region,
        "NetworkBorderGroup": zone.region,
        "Messages": [],
    }
