"""Block public access for snapshots: per account and region."""

from __future__ import annotations

from ebsemu.api.actions import Params, Result, Services, action
from ebsemu.service import public_access
from ebsemu.service.context import RequestContext


@action
async def enable_snapshot_block_public_access(
    svc: Services, ctx: RequestContext, p: Params
) -> Result:
    state = public_access.blocking_state(p["State"])
    return {"State": await svc.public_access.set_state(ctx, state)}


@action
async def disable_snapshot_block_public_access(
    svc: Services, ctx: RequestContext, p: Params
) -> Result:
    return {"State": await svc.public_access.set_state(ctx, public_access.State.UNBLOCKED)}


@action
async def get_snapshot_block_public_access_state(
    svc: Services, ctx: RequestContext, p: Params
) -> Result:
    return {"State": await svc.public_access.state(ctx), "ManagedBy": public_access.MANAGED_BY}
