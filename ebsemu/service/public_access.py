"""Block public access for snapshots, as EC2 has it: one setting per account and region.

unblocked (the default): the owner may share snapshots with everyone (group `all`).
block-new-sharing: new public sharing is refused; snapshots shared publicly before stay public.
block-all-sharing: new public sharing is refused too, and the snapshots shared publicly before
are treated as private — others no longer see or restore them through the public grant, while
DescribeSnapshotAttribute still shows it to the owner. The grant is kept: back to unblocked or
to block-new-sharing, those snapshots are public again. Sharing with accounts is never blocked.
"""

from __future__ import annotations

import logging

from ebsemu import errors
from ebsemu.model import Snapshot, SnapshotBlockPublicAccessState
from ebsemu.service.context import RequestContext
from ebsemu.service.core import Core
from ebsemu.store.base import Store

log = logging.getLogger(__name__)

State = SnapshotBlockPublicAccessState
MANAGED_BY = "account"  # no declarative policy (AWS Organizations) manages the setting here
BLOCKING = (State.BLOCK_ALL_SHARING, State.BLOCK_NEW_SHARING)


def blocking_state(value: str) -> State:
    """EnableSnapshotBlockPublicAccess's State: one of the two blocking modes."""
    valid = " and ".join(f"'{s.value}'" for s in BLOCKING)
    if value == State.UNBLOCKED:
        # EC2 answers so for the model's third value: DisableSnapshotBlockPublicAccess unblocks.
        raise errors.InvalidRequest(
            f"Value '{value}' for State is not valid. Valid values are {valid}."
        )
    try:
        return State(value)
    except ValueError:
        raise errors.InvalidParameterValue(
            f"Value ({value[:64]}) for parameter State is invalid. Valid values are {valid}."
        ) from None


async def check_public_sharing(store: Store, snapshot: Snapshot) -> None:
    """Refuse to share the snapshot with everyone (the group `all`) while its owner blocks
    public sharing in its region."""
    state = await store.snapshot_block_public_access(snapshot.owner_id, snapshot.region)
    if state in BLOCKING:
        raise errors.OperationNotPermitted(
            "You can't publicly share this snapshot because block public access for snapshots "
            f"is enabled for this account in {snapshot.region} ({state.value}). To publicly "
            "share the snapshot, you must call the DisableSnapshotBlockPublicAccess API."
        )


class PublicAccessService:
    """EnableSnapshotBlockPublicAccess, DisableSnapshotBlockPublicAccess,
    GetSnapshotBlockPublicAccessState."""

    def __init__(self, core: Core) -> None:
        self._core = core

    async def state(self, ctx: RequestContext) -> State:
        return await self._core.store.snapshot_block_public_access(ctx.account_id, ctx.region)

    async def set_state(self, ctx: RequestContext, state: State) -> State:
        await self._core.store.set_snapshot_block_public_access(ctx.account_id, ctx.region, state)
        log.info(
            "account %s in %s: block public access for snapshots %s",
            ctx.account_id,
            ctx.region,
            state.value,
        )
        return state
