"""LockSnapshot, UnlockSnapshot, DescribeLockedSnapshots."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ebsemu.api.actions import Params, Result, Services, action
from ebsemu.service.context import RequestContext
from ebsemu.snapshot_lock import LockRequest, SnapshotLock


def lock_view(lock: SnapshotLock, now: datetime) -> dict[str, Any]:
    """A LockedSnapshotsInfo, with the lock's state at ``now``."""
    return {
        "OwnerId": lock.owner_id,
        "SnapshotId": lock.snapshot_id,
        "LockState": lock.state(now).value,
        "LockDuration": lock.duration_days,
        "CoolOffPeriod": lock.cool_off_hours,
        "CoolOffPeriodExpiresOn": lock.cool_off_expires_on,
        "LockCreatedOn": lock.created_on,
        "LockDurationStartTime": lock.duration_start,
        "LockExpiresOn": lock.expires_on,
    }


@action
async def lock_snapshot(svc: Services, ctx: RequestContext, p: Params) -> Result:
    request = LockRequest(
        mode=p["LockMode"],
        duration_days=p.get("LockDuration"),
        expiration=p.get("ExpirationDate"),
        cool_off_hours=p.get("CoolOffPeriod"),
    )
    lock, now = await svc.snapshot_locks.lock(ctx, p["SnapshotId"], request)
    view = lock_view(lock, now)
    del view["OwnerId"]  # not a member of LockSnapshot's output
    return view


@action
async def unlock_snapshot(svc: Services, ctx: RequestContext, p: Params) -> Result:
    await svc.snapshot_locks.unlock(ctx, p["SnapshotId"])
    return {"SnapshotId": p["SnapshotId"]}


@action
async def describe_locked_snapshots(svc: Services, ctx: RequestContext, p: Params) -> Result:
    locks, now, token = await svc.snapshot_locks.describe(
        ctx, p.get("SnapshotIds", []), p.get("Filters"), p.get("MaxResults"), p.get("NextToken")
    )
    return {"Snapshots": [lock_view(lock, now) for lock in locks], "NextToken": token}
