"""The volume and snapshot quotas ([limits] max_volumes, max_snapshots). As EC2's Service
Quotas they are regional: an account's resources are counted in the region of the request,
the region a new volume or snapshot (a CopySnapshot's copy included) is made in.

Requests arriving together must not all pass a check made before any of them was counted. A
check made inside ``counting`` therefore holds the places it allows until the block ends, the
insert done: every other check counts them as taken. Nothing waits for anything: concurrent
creates of one account go on together (and share their commits). Near the limit, a check made
in the moment between another request's commit and the end of its block counts that place
twice and refuses one that would just fit; it never lets one past the quota.

That holds only if the count a check looks at is no older than the holds it adds to it. The
count of volumes is (SQLite keeps it in the process, in commit order: ``count_volumes``); the
count of snapshots is read from the database, and a commit and the end of its block can both
come while that read is under way, so that neither is seen. Each snapshot insert is therefore
also given the limit (``store_limit``), and the store counts again in the insert's own
transaction (QuotaReached, which the caller answers as ``exceeded``). The places are held in
this process only: where several server instances share the database, every insert is given
the limit, and the store counts one insert of an account, region and kind at a time across
the instances.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import AsyncIterator

from ebsemu import errors
from ebsemu.service.context import RequestContext
from ebsemu.service.core import Core

Place = tuple[str, str, str]  # (kind, account id, region)

# The places the checks of the current ``counting`` block took, to give back at its end.
_TAKEN: contextvars.ContextVar[list[tuple[Place, int]] | None] = contextvars.ContextVar(
    "quota_places_taken", default=None
)


@contextlib.asynccontextmanager
async def counting(core: Core) -> AsyncIterator[None]:
    """Hold the places the quota checks inside take until the block ends (insert inside)."""
    taken: list[tuple[Place, int]] = []
    reset = _TAKEN.set(taken)
    try:
        yield
    finally:
        _TAKEN.reset(reset)
        for place, count in taken:
            left = core.quota_holds[place] - count
            if left:
                core.quota_holds[place] = left
            else:
                del core.quota_holds[place]


async def check_volumes(core: Core, ctx: RequestContext) -> None:
    """Raise VolumeLimitExceeded when the account has max_volumes volumes in the region
    (those being made under ``counting`` included)."""
    counted = await core.store.count_volumes(ctx.account_id, ctx.region)
    _take(core, ("volumes", ctx.account_id, ctx.region), counted, 1, errors.VolumeLimitExceeded)


async def check_snapshots(
    core: Core,
    ctx: RequestContext,
    adding: int = 1,
    refusal: type[errors.ApiError] = errors.SnapshotLimitExceeded,
) -> None:
    """Raise ``refusal`` when ``adding`` more snapshots would take the account past
    max_snapshots in the region (the EBS direct API refuses with its own error)."""
    counted = await core.store.count_snapshots(ctx.account_id, ctx.region)
    _take(core, ("snapshots", ctx.account_id, ctx.region), counted, adding, refusal)


def store_limit(core: Core, kind: str) -> int | None:
    """The limit to give an insert of ``kind`` ("volumes" or "snapshots") to keep within: for
    snapshots always, for volumes on a database other server instances share; None where the
    check made in this process is exact."""
    return _limit(core, kind) if core.store.shared or kind == "snapshots" else None


def exceeded(core: Core, kind: str, region: str, refusal: type[errors.ApiError]) -> errors.ApiError:
    """The refusal of one more of ``kind`` in ``region``."""
    return refusal(f"You have reached the maximum of {_limit(core, kind)} {kind} in {region}.")


def _limit(core: Core, kind: str) -> int:
    return core.config.max_volumes if kind == "volumes" else core.config.max_snapshots


def _take(
    core: Core, place: Place, counted: int, adding: int, refusal: type[errors.ApiError]
) -> None:
    """Take ``adding`` places of ``place`` beyond the ``counted`` ones and those other
    requests hold, or raise ``refusal``. Nothing awaits between the look and the take."""
    kind, _, region = place
    held = core.quota_holds.get(place, 0)
    if counted + held + adding > _limit(core, kind):
        raise exceeded(core, kind, region, refusal)
    taken = _TAKEN.get()
    if taken is not None:
        core.quota_holds[place] = held + adding
        taken.append((place, adding))
