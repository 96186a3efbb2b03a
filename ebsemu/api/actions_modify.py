"""ModifyVolume and DescribeVolumesModifications: parsed params in, result dicts out."""

from __future__ import annotations

from typing import Any

from ebsemu.api.actions import Params, Result, Services, action
from ebsemu.modification import ModificationState, VolumeModification
from ebsemu.service.context import RequestContext
from ebsemu.service.modification_rules import ModifyRequest


def modification_view(modification: VolumeModification) -> dict[str, Any]:
    """A VolumeModification as its output shape; EndTime once it has ended."""
    original, target = modification.original, modification.target
    ended = modification.state in (ModificationState.COMPLETED, ModificationState.FAILED)
    return {
        "VolumeId": modification.volume_id,
        "ModificationState": modification.state.value,
        "StatusMessage": modification.status_message,
        "TargetSize": target.size_gib,
        "TargetIops": target.iops,
        "TargetVolumeType": target.volume_type.value,
        "TargetThroughput": target.throughput,
        "TargetMultiAttachEnabled": target.multi_attach,
        "OriginalSize": original.size_gib,
        "OriginalIops": original.iops,
        "OriginalVolumeType": original.volume_type.value,
        "OriginalThroughput": original.throughput,
        "OriginalMultiAttachEnabled": original.multi_attach,
        "Progress": modification.progress,
        "StartTime": modification.start_time,
        "EndTime": modification.end_time if ended else None,
    }


@action
async def modify_volume(svc: Services, ctx: RequestContext, p: Params) -> Result:
    request = ModifyRequest(
        size_gib=p.get("Size"),
        volume_type=p.get("VolumeType"),
        iops=p.get("Iops"),
        throughput=p.get("Throughput"),
        multi_attach=p.get("MultiAttachEnabled"),
    )
    modification = await svc.modifications.modify(ctx, p["VolumeId"], request)
    return {"VolumeModification": modification_view(modification)}


@action
async def describe_volumes_modifications(svc: Services, ctx: RequestContext, p: Params) -> Result:
    found, token = await svc.modifications.describe(
        ctx, p.get("VolumeIds", []), p.get("Filters"), p.get("MaxResults"), p.get("NextToken")
    )
    return {"VolumesModifications": [modification_view(m) for m in found], "NextToken": token}
