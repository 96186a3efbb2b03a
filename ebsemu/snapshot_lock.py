"""A snapshot's lock (EC2's LockSnapshot), and the rules of locking, relocking and unlocking.

A lock is `governance` (its owner may change or remove it at any time) or `compliance`: during
its cooling-off period (CoolOffPeriod hours from the request, state `compliance-cooloff`) it
may still be changed or removed; after that it can only be extended (API reference,
LockSnapshot and UnlockSnapshot). Either mode keeps the snapshot from being deleted until the
lock expires (state `expired`), LockDuration days after its start or at its ExpirationDate.
A lock put on a `pending` snapshot starts its duration when the snapshot completes
(LockedSnapshotsInfo.LockDurationStartTime); until then a duration has no expiry yet.

Every rule takes "now" from its caller, so the service's clock decides.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from ebsemu import errors


class LockMode(enum.StrEnum):
    GOVERNANCE = "governance"
    COMPLIANCE = "compliance"


class LockState(enum.StrEnum):
    COMPLIANCE_COOLOFF = "compliance-cooloff"
    GOVERNANCE = "governance"
    COMPLIANCE = "compliance"
    EXPIRED = "expired"


# Allowed values, from the API reference (botocore checks only the minimums).
MAX_LOCK_DAYS = 36500
MAX_COOL_OFF_HOURS = 72


@dataclass(frozen=True)
class LockRequest:
    """A LockSnapshot call's lock settings, as given."""

    mode: str
    duration_days: int | None = None
    expiration: datetime | None = None
    cool_off_hours: int | None = None


@dataclass(frozen=True)
class SnapshotLock:
    snapshot_id: str
    owner_id: str
    region: str
    mode: LockMode
    created_on: datetime
    duration_days: int | None = None  # None when locked until an ExpirationDate
    duration_start: datetime | None = None  # None while the snapshot is pending
    expires_on: datetime | None = None  # None while a duration has not started
    cool_off_hours: int | None = None
    cool_off_expires_on: datetime | None = None
    seq: int = 0

    def state(self, now: datetime) -> LockState:
        if self.expires_on is not None and now >= self.expires_on:
            return LockState.EXPIRED
        if self.mode is LockMode.GOVERNANCE:
            return LockState.GOVERNANCE
        if self.cool_off_expires_on is not None and now < self.cool_off_expires_on:
            return LockState.COMPLIANCE_COOLOFF
        return LockState.COMPLIANCE

    def protects(self, now: datetime) -> bool:
        """Whether the lock keeps its snapshot from being deleted at ``now``."""
        return self.state(now) is not LockState.EXPIRED

    def started(self, start: datetime | None) -> SnapshotLock:
        """The lock with its duration started at ``start`` (the snapshot's completion), if it
        had not started yet. Never before the lock was made: a completion stamped just before
        a lock on the snapshot, still seen pending, is committed after it."""
        if self.duration_start is not None or start is None:
            return self
        start = max(start, self.created_on)
        expires = self.expires_on
        if self.duration_days is not None:
            expires = start + timedelta(days=self.duration_days)
        return replace(self, duration_start=start, expires_on=expires)


def relock(
    current: SnapshotLock | None,
    new: SnapshotLock,
    request: LockRequest,
    now: datetime,
) -> SnapshotLock:
    """The snapshot's lock after a LockSnapshot call: ``new`` (built by ``new_lock``), unless
    a compliance lock past its cooling-off period is in place: then that one, extended, if the
    call only extends it (anything else is refused)."""
    if current is None or current.state(now) is not LockState.COMPLIANCE:
        if current is not None and current.state(now) is not LockState.EXPIRED:
            return replace(new, created_on=current.created_on)
        return new
    if request.mode != LockMode.COMPLIANCE:
        raise errors.IncorrectState(
            f"The snapshot '{current.snapshot_id}' is locked in compliance mode and its "
            "cooling-off period has expired: its lock mode cannot be changed."
        )
    if request.cool_off_hours is not None:
        raise errors.InvalidParameterCombination(
            "CoolOffPeriod cannot be given for a snapshot locked in compliance mode after its "
            "cooling-off period has expired."
        )
    extended = _extended(current, request)
    if _shorter(extended, current):
        raise errors.IncorrectState(
            f"The snapshot '{current.snapshot_id}' is locked in compliance mode and its "
            "cooling-off period has expired: its lock can only be extended."
        )
    return extended


def new_lock(
    snapshot_id: str,
    owner_id: str,
    region: str,
    request: LockRequest,
    now: datetime,
    *,
    pending: bool,
) -> SnapshotLock:
    """A lock as ``request`` asks for, made at ``now`` (checked first: see ``check``)."""
    mode = check(request, now)
    start = None if pending else now
    expires = request.expiration
    if request.duration_days is not None and start is not None:
        expires = start + timedelta(days=request.duration_days)
    cool_off = request.cool_off_hours
    return SnapshotLock(
        snapshot_id=snapshot_id,
        owner_id=owner_id,
        region=region,
        mode=mode,
        created_on=now,
        duration_days=request.duration_days,
        duration_start=start,
        expires_on=expires,
        cool_off_hours=cool_off,
        cool_off_expires_on=None if cool_off is None else now + timedelta(hours=cool_off),
    )


def check(request: LockRequest, now: datetime) -> LockMode:
    """The request's mode, once its settings are found valid."""
    try:
        mode = LockMode(request.mode)
    except ValueError:
        raise errors.InvalidParameterValue(
            f"Value ({request.mode[:64]}) for parameter LockMode is invalid. "
            "Expecting governance or compliance."
        ) from None
    if request.duration_days is not None and request.expiration is not None:
        raise errors.InvalidParameterCombination(
            "LockDuration and ExpirationDate cannot both be given."
        )
    if request.duration_days is None and request.expiration is None:
        raise errors.MissingParameter(
            "The request must contain the parameter LockDuration or ExpirationDate"
        )
    _check_range("LockDuration", request.duration_days, MAX_LOCK_DAYS)
    _check_range("CoolOffPeriod", request.cool_off_hours, MAX_COOL_OFF_HOURS)
    if mode is LockMode.GOVERNANCE and request.cool_off_hours is not None:
        raise errors.InvalidParameterCombination(
            "CoolOffPeriod can be given only with LockMode compliance."
        )
    if request.expiration is not None:
        if request.expiration <= now:
            raise errors.InvalidParameterValue("ExpirationDate must be in the future.")
        if request.expiration > now + timedelta(days=MAX_LOCK_DAYS):
            raise errors.InvalidParameterValue(
                f"ExpirationDate must be at most {MAX_LOCK_DAYS} days in the future."
            )
    return mode


def check_unlock(lock: SnapshotLock, now: datetime) -> None:
    """Refuse to remove a compliance lock past its cooling-off period."""
    if lock.state(now) is LockState.COMPLIANCE:
        raise errors.IncorrectState(
            f"The snapshot '{lock.snapshot_id}' is locked in compliance mode and its "
            "cooling-off period has expired: it cannot be unlocked."
        )


def _check_range(name: str, value: int | None, most: int) -> None:
    if value is not None and not 1 <= value <= most:
        raise errors.InvalidParameterValue(
            f"Value ({value}) for parameter {name} is invalid. "
            f"Expecting a value between 1 and {most}."
        )


def _extended(current: SnapshotLock, request: LockRequest) -> SnapshotLock:
    """A compliance lock with the duration or expiration date the request gives it."""
    if request.expiration is not None:
        return replace(current, duration_days=None, expires_on=request.expiration)
    days = request.duration_days
    assert days is not None  # check() wants one of the two
    start = current.duration_start
    return replace(
        current,
        duration_days=days,
        expires_on=None if start is None else start + timedelta(days=days),
    )


def _shorter(extended: SnapshotLock, current: SnapshotLock) -> bool:
    if extended.expires_on is not None and current.expires_on is not None:
        return extended.expires_on < current.expires_on
    if extended.duration_days is not None and current.duration_days is not None:
        return extended.duration_days < current.duration_days
    return False
