"""The rules of snapshot locks at chosen moments (a clock the test sets): a compliance lock
past its cooling-off period cannot be unlocked, shortened or turned to governance, and can be
extended; until then, and in governance mode, the lock can be changed or removed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ebsemu import errors
from ebsemu.snapshot_lock import (
    LockRequest,
    LockState,
    SnapshotLock,
    check_unlock,
    new_lock,
    relock,
)

LOCKED_AT = datetime(2026, 1, 1, tzinfo=UTC)
COOL_OFF = LockRequest("compliance", duration_days=30, cool_off_hours=24)
AFTER_COOL_OFF = LOCKED_AT + timedelta(hours=25)


def _lock(request: LockRequest, now: datetime, current: SnapshotLock | None) -> SnapshotLock:
    new = new_lock("snap-0123456789abcdef0", "000000000000", "us-east-1", request, now,
                   pending=False)  # fmt: skip
    return relock(current, new, request, now)


def _compliance() -> SnapshotLock:
    return _lock(COOL_OFF, LOCKED_AT, None)


def test_a_compliance_lock_leaves_its_cooling_off_period_as_the_clock_passes_it() -> None:
    lock = _compliance()
    assert lock.state(LOCKED_AT + timedelta(hours=23)) is LockState.COMPLIANCE_COOLOFF
    assert lock.state(AFTER_COOL_OFF) is LockState.COMPLIANCE
    assert lock.state(LOCKED_AT + timedelta(days=30)) is LockState.EXPIRED
    assert lock.protects(AFTER_COOL_OFF)
    assert not lock.protects(LOCKED_AT + timedelta(days=30))


def test_after_its_cooling_off_period_a_compliance_lock_cannot_be_unlocked() -> None:
    lock = _compliance()
    check_unlock(lock, LOCKED_AT + timedelta(hours=1))  # still cooling off: allowed
    with pytest.raises(errors.IncorrectState):
        check_unlock(lock, AFTER_COOL_OFF)
    check_unlock(lock, LOCKED_AT + timedelta(days=31))  # expired: nothing left to keep


@pytest.mark.parametrize(
    "request_",
    [
        LockRequest("compliance", duration_days=29),
        LockRequest("compliance", expiration=LOCKED_AT + timedelta(days=10)),
        LockRequest("governance", duration_days=60),
    ],
)
def test_after_its_cooling_off_period_a_compliance_lock_cannot_be_shortened_or_relaxed(
    request_: LockRequest,
) -> None:
    with pytest.raises(errors.IncorrectState):
        _lock(request_, AFTER_COOL_OFF, _compliance())


def test_after_its_cooling_off_period_a_compliance_lock_cannot_be_given_another_one() -> None:
    request = LockRequest("compliance", duration_days=60, cool_off_hours=1)
    with pytest.raises(errors.InvalidParameterCombination):
        _lock(request, AFTER_COOL_OFF, _compliance())


def test_after_its_cooling_off_period_a_compliance_lock_can_be_extended() -> None:
    current = _compliance()
    longer = _lock(LockRequest("compliance", duration_days=60), AFTER_COOL_OFF, current)
    assert longer.expires_on == LOCKED_AT + timedelta(days=60)  # from the same start
    assert longer.created_on == current.created_on
    assert longer.state(AFTER_COOL_OFF) is LockState.COMPLIANCE
    until = LOCKED_AT + timedelta(days=90)
    later = _lock(LockRequest("compliance", expiration=until), AFTER_COOL_OFF, longer)
    assert later.expires_on == until


def test_in_its_cooling_off_period_a_compliance_lock_can_be_shortened_or_made_governance() -> None:
    moment = LOCKED_AT + timedelta(hours=2)
    changed = _lock(LockRequest("governance", duration_days=1), moment, _compliance())
    assert changed.state(moment) is LockState.GOVERNANCE
    assert changed.expires_on == moment + timedelta(days=1)
    assert changed.created_on == LOCKED_AT


def test_an_expired_lock_is_replaced_by_a_new_one() -> None:
    moment = LOCKED_AT + timedelta(days=40)
    renewed = _lock(LockRequest("governance", duration_days=1), moment, _compliance())
    assert renewed.created_on == moment
    assert renewed.state(moment) is LockState.GOVERNANCE


def test_a_duration_put_on_a_pending_snapshot_starts_at_its_completion_never_before_the_lock() -> (
    None
):
    request = LockRequest("governance", duration_days=2)
    lock = new_lock("snap-1", "111122223333", "us-east-1", request, LOCKED_AT, pending=True)
    assert lock.duration_start is None and lock.expires_on is None
    later = lock.started(LOCKED_AT + timedelta(hours=1))
    assert later.duration_start == LOCKED_AT + timedelta(hours=1)
    assert later.expires_on == LOCKED_AT + timedelta(hours=1, days=2)
    # A completion stamped just before the lock was made, committed after it
    stamped_before = lock.started(LOCKED_AT - timedelta(milliseconds=2))
    assert stamped_before.duration_start == LOCKED_AT
    assert stamped_before.expires_on == LOCKED_AT + timedelta(days=2)
