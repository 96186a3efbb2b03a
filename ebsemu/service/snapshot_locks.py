"""Snapshot locks: LockSnapshot, UnlockSnapshot and DescribeLockedSnapshots.

Only a snapshot's owner locks, unlocks and sees its lock; a `pending` or `completed` snapshot
can be locked (Amazon EBS User Guide, "Lock an Amazon EBS snapshot"). The rules of each mode
are in ebsemu.snapshot_lock; the store judges a DeleteSnapshot against the lock in the same
transaction that marks the snapshot deleted (``locked`` is its refusal). Time comes from the
clock the service is given, so the rules can be tested at any moment.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ebsemu import errors
from ebsemu.model import SnapshotState, utcnow
from ebsemu.service import listing
from ebsemu.service.context import RequestContext
from ebsemu.service.core import Core
from ebsemu.snapshot_lock import (
    LockRequest,
    SnapshotLock,
    check_unlock,
    new_lock,
    relock,
)
from ebsemu.store.base import ListQuery

if TYPE_CHECKING:  # snapshots.py imports this module (a locked snapshot is not deleted)
    from ebsemu.service.snapshots import SnapshotService

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
LOCKABLE = {SnapshotState.PENDING, SnapshotState.COMPLETED}


class SnapshotLockService:
    def __init__(self, core: Core, snapshots: SnapshotService, clock: Clock = utcnow) -> None:
        self._core = core
        self._snapshots = snapshots
        self._clock = clock

    async def lock(
        self, ctx: RequestContext, snapshot_id: str, request: LockRequest
    ) -> tuple[SnapshotLock, datetime]:
        """Lock the caller's snapshot, or change its lock as its mode and state allow; the
        lock, and the time it was made at."""
        async with self._core.locks.hold(snapshot_id):
            now = self._clock()  # before the snapshot is read: a completion comes after it
            snapshot = await self._snapshots.get(ctx, snapshot_id)
            if snapshot.state not in LOCKABLE:
                raise errors.IncorrectState(
                    f"The snapshot '{snapshot_id}' is '{snapshot.state.value}'; only a "
                    "pending or completed snapshot can be locked."
                )
            pending = snapshot.state is SnapshotState.PENDING
            new = new_lock(snapshot_id, ctx.account_id, ctx.region, request, now, pending=pending)
            lock: SnapshotLock | None = None

            def change(current: SnapshotLock | None) -> SnapshotLock:
                nonlocal lock
                lock = relock(current, new, request, now)
                return lock

            if not await self._core.store.change_snapshot_lock(snapshot_id, change):
                raise _gone(snapshot_id)  # deleted meanwhile, by another server instance
        assert lock is not None
        log.info("snapshot %s: locked, %s", snapshot_id, lock.state(now).value)
        return lock, now

    async def unlock(self, ctx: RequestContext, snapshot_id: str) -> None:
        """Remove the caller's snapshot's lock, unless it is a compliance lock past its
        cooling-off period. A snapshot without a lock is left as it is."""
        async with self._core.locks.hold(snapshot_id):
            await self._snapshots.get(ctx, snapshot_id)
            now = self._clock()
            had_lock = False

            def change(current: SnapshotLock | None) -> None:
                nonlocal had_lock
                if current is not None:
                    check_unlock(current, now)
                    had_lock = True

            if not await self._core.store.change_snapshot_lock(snapshot_id, change):
                raise _gone(snapshot_id)
        if had_lock:
            log.info("snapshot %s: unlocked", snapshot_id)

    async def describe(
        self,
        ctx: RequestContext,
        snapshot_ids: list[str],
        raw_filters: list[dict[str, Any]] | None,
        max_results: int | None,
        next_token: str | None,
    ) -> tuple[list[SnapshotLock], datetime, str | None]:
        """One page of the caller's snapshot locks, and the time their states are read at.
        An id the caller cannot see is InvalidSnapshot.NotFound; one it sees without a lock
        of its own is left out."""
        ids = listing.check_ids("snap", snapshot_ids)
        limit = listing.page_size(
            max_results, low=5, high=1000, ids_given=bool(ids), ids_param="snapshotIdSet"
        )
        query = ListQuery(
            owner_ids=frozenset({ctx.account_id}),
            region=ctx.region,
            ids=ids,
            filters=listing.filters(raw_filters),
            after_seq=listing.decode_token("lock", next_token),
            limit=limit,
        )
        now = self._clock()
        page = await listing.fetch_page(
            lambda q: self._core.store.list_snapshot_locks(q, now), query
        )
        found = {lock.snapshot_id for lock in page.items}
        for snapshot_id in ids:
            if snapshot_id not in found:
                await self._snapshots.visible(ctx, snapshot_id)
        return page.items, now, listing.next_token("lock", page)


def locked(snapshot_id: str, lock: SnapshotLock, now: datetime) -> errors.ApiError:
    """DeleteSnapshot's refusal of a snapshot whose lock has not expired."""
    return errors.SnapshotLocked(
        f"The snapshot '{snapshot_id}' is locked ({lock.state(now).value}) and cannot be "
        "deleted until its lock expires or it is unlocked."
    )


def _gone(snapshot_id: str) -> errors.ApiError:
    return errors.InvalidSnapshotNotFound(f"The snapshot '{snapshot_id}' does not exist.")
