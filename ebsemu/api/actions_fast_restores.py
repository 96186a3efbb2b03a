"""EnableFastSnapshotRestores, DisableFastSnapshotRestores, DescribeFastSnapshotRestores."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ebsemu.api.actions import Params, Result, Services, action
from ebsemu.fast_restore import FastRestore
from ebsemu.service.context import RequestContext
from ebsemu.service.fast_restores import ZoneError


def fast_restore_view(record: FastRestore) -> dict[str, Any]:
    """A (Describe|Enable|Disable)FastSnapshotRestoreSuccessItem."""
    return {
        "SnapshotId": record.snapshot_id,
        "AvailabilityZone": record.zone,
        "AvailabilityZoneId": record.zone_id,
        "State": record.state.value,
        "StateTransitionReason": record.reason,
        "OwnerId": record.account_id,
        "EnablingTime": record.enabling_time,
        "OptimizingTime": record.optimizing_time,
        "EnabledTime": record.enabled_time,
        "DisablingTime": record.disabling_time,
        "DisabledTime": record.disabled_time,
    }


def error_items(failed: Sequence[ZoneError]) -> list[dict[str, Any]]:
    """Unsuccessful items: one per snapshot, its zones' errors in it."""
    by_snapshot: dict[str, list[dict[str, Any]]] = {}
    for error in failed:
        by_snapshot.setdefault(error.snapshot_id, []).append(
            {
                "AvailabilityZone": error.zone,
                "AvailabilityZoneId": error.zone_id,
                "Error": {"Code": error.code, "Message": error.message},
            }
        )
    return [
        {"SnapshotId": snapshot_id, "FastSnapshotRestoreStateErrors": zones}
        for snapshot_id, zones in by_snapshot.items()
    ]


def _zone_answer(done: list[FastRestore], failed: list[ZoneError]) -> Result:
    return {"Successful": [fast_restore_view(r) for r in done], "Unsuccessful": error_items(failed)}


def _targets(p: Params) -> tuple[Any, Any, Any]:
    """The snapshots and zones an Enable or Disable call names."""
    return (
        p.get("SourceSnapshotIds", []),
        p.get("AvailabilityZones", []),
        p.get("AvailabilityZoneIds", []),
    )


@action
async def enable_fast_snapshot_restores(svc: Services, ctx: RequestContext, p: Params) -> Result:
    return _zone_answer(*await svc.fast_restores.enable(ctx, *_targets(p)))


@action
async def disable_fast_snapshot_restores(svc: Services, ctx: RequestContext, p: Params) -> Result:
    return _zone_answer(*await svc.fast_restores.disable(ctx, *_targets(p)))


@action
async def describe_fast_snapshot_restores(svc: Services, ctx: RequestContext, p: Params) -> Result:
    found, token = await svc.fast_restores.describe(
        ctx, p.get("Filters"), p.get("MaxResults"), p.get("NextToken")
    )
    return {"FastSnapshotRestores": [fast_restore_view(r) for r in found], "NextToken": token}
