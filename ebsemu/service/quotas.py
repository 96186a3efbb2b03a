"""The volume and snapshot quotas ([limits] max_volumes, max_snapshots). As EC2's Service
Quotas they are regional: an account's resources are counted in the region of the request,
the region a new volume or snapshot (a CopySnapshot's copy included) is made in.

A check and the insert it allows are made under ``counting``: two requests of one account in
one region never both take its last place (each would see the count before the other's insert).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Literal

from ebsemu import errors
from ebsemu.service.context import RequestContext
from ebsemu.service.core import Core

Counted = Literal["volumes", "snapshots"]


@contextlib.asynccontextmanager
async def counting(core: Core, ctx: RequestContext, kind: Counted) -> AsyncIterator[None]:
    """Hold the account's count of ``kind`` in the region: check the quota and insert the new
    resources inside. A volume's lock is taken before it, a snapshot's inside it: no two
    requests then wait for each other."""
    async with core.locks.hold(f"quota/{kind}/{ctx.account_id}/{ctx.region}"):
        yield


async def check_volumes(core: Core, ctx: RequestContext) -> None:
    """Raise VolumeLimitExceeded when the account has max_volumes volumes in the region
    (under ``counting(core, ctx, "volumes")``)."""
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
    max_snapshots in the region (the EBS direct API refuses with its own error); under
    ``counting(core, ctx, "snapshots")``."""
    limit = core.config.max_snapshots
    if await core.store.count_snapshots(ctx.account_id, ctx.region) + adding > limit:
        raise refusal(_reached(limit, "snapshots", ctx.region))


def _reached(limit: int, kind: str, region: str) -> str:
    return f"You have reached the maximum of {limit} {kind} in {region}."
