"""Volume attributes and status: DescribeVolumeAttribute, ModifyVolumeAttribute,
EnableVolumeIO, DescribeVolumeStatus."""

from __future__ import annotations

from typing import Any

from ebsemu.api.actions import Params, Result, Services, action
from ebsemu.service.context import RequestContext
from ebsemu.service.volume_status import (
    ACTION_CODE,
    ACTION_DESCRIPTION,
    EVENT_TYPE,
    VolumeStatus,
)


def volume_status_view(item: VolumeStatus) -> dict[str, Any]:
    """A VolumeStatusItem (member names as boto3 shows them)."""
    event = item.event
    view: dict[str, Any] = {
        "VolumeId": item.volume.id,
        "AvailabilityZone": item.volume.zone,
        "AvailabilityZoneId": item.volume.zone_id or None,
        "VolumeStatus": {
            "Status": item.status,
            "Details": [
                {"Name": "io-enabled", "Status": item.io_enabled},
                {"Name": "io-performance", "Status": item.io_performance},
            ],
        },
        "Events": [],
        "Actions": [],
    }
    if event is not None:
        view["Events"].append(
            {
                "EventId": event.event_id,
                "EventType": EVENT_TYPE,
                "Description": event.description,
                "NotBefore": event.since,
            }
        )
        if item.action_needed:
            view["Actions"].append(
                {
                    "Code": ACTION_CODE,
                    "Description": ACTION_DESCRIPTION,
                    "EventId": event.event_id,
                    "EventType": EVENT_TYPE,
                }
            )
    if item.attached_instances:
        view["AttachmentStatuses"] = [
            {"InstanceId": instance_id, "IoPerformance": item.io_performance}
            for instance_id in item.attached_instances
        ]
    return view


@action
async def describe_volume_attribute(svc: Services, ctx: RequestContext, p: Params) -> Result:
    return await svc.volume_status.describe_attribute(ctx, p["VolumeId"], p["Attribute"])


@action
async def modify_volume_attribute(svc: Services, ctx: RequestContext, p: Params) -> Result:
    await svc.volume_status.modify_attribute(ctx, p["VolumeId"], p.get("AutoEnableIO"))
    return {}


@action
async def enable_volume_i_o(svc: Services, ctx: RequestContext, p: Params) -> Result:
    await svc.volume_status.enable_io(ctx, p["VolumeId"])
    return {}


@action
async def describe_volume_status(svc: Services, ctx: RequestContext, p: Params) -> Result:
    statuses, token = await svc.volume_status.describe(
        ctx, p.get("VolumeIds", []), p.get("Filters"), p.get("MaxResults"), p.get("NextToken")
    )
    return {"VolumeStatuses": [volume_status_view(s) for s in statuses], "NextToken": token}
