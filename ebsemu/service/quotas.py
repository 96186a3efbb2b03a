"""The volume and snapshot quotas ([limits] max_volumes, max_snapshots). As EC2's Service
Quotas they are regional: an account's resources are counted in the region of the request,
the region a new volume or snapshot (a CopySnapshot's copy included) is made in."""

from __future__ import annotations

from ebsemu import errors
from ebsemu.service.context import RequestContext
from ebsemu.service.core import Core


async def check_volumes(core: Core, ctx: RequestContext) -> None:
    """Raise VolumeLimitExceeded when the account has max_volumes volumes in the region."""
    limit = core.config.max_volumes
    if await core.store.count_volumes(ctx.account_id, ctx.region) >= limit:
        raise errors.VolumeLimitExceeded(_reached(limit, "volumes", ctx.region))


async def check_snapshots(
    core: Core,
    ctx: RequestContext,
    adding: int = 1,
    refusal: type[errors.ApiError] = errors.SnapshotLimitExceeded,
) -> None:
    """Raise ``refusal`` when ``adding`` more snapshots would take the account past
    max_snapshots in the region (the EBS direct API refuses with its own error)."""
    limit = core.config.max_snapshots
    if await core.store.count_snapshots(ctx.account_id, ctx.region) + adding > limit:
        raise refusal(_reached(limit, "snapshots", ctx.region))


def _reached(limit: int, kind: str, region: str) -> str:
    return f"You have reached the maximum of {limit} {kind} in {region}."
