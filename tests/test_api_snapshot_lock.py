"""LockSnapshot, UnlockSnapshot and DescribeLockedSnapshots over HTTP with boto3: a locked
snapshot is not deleted until it is unlocked or its lock expires; compliance locks in their
cooling-off period; parameters checked as EC2 checks them; only the owner sees its locks.
(Compliance locks past their cooling-off period: tests/test_snapshot_lock.py, with a clock.)"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.api_support import aws_error, new_snapshot, new_volume, poll
from tests.server import ServerProcess

LOCKED_CODE = "SnapshotLocked"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # A StartSnapshot Timeout minute of 0.05 s: a direct snapshot fails within a second.
    quick = "[server]\nebs_timeout_minute_seconds = 0.05\n"
    running = ServerProcess(tmp_path_factory.mktemp("snapshot-lock") / "data", quick)
    running.start()
    yield running
    running.stop()


@pytest.fixture
def ec2(server: ServerProcess) -> Any:
    """A client of a new account, so that each test sees its own locks only."""
    _, key = server.new_account()
    return server.client(key=key)


def _snapshot(ec2: Any) -> str:
    return new_snapshot(ec2, new_volume(ec2))


def _locked(ec2: Any, **params: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = ec2.describe_locked_snapshots(**params)["Snapshots"]
    return found


def _deleted(ec2: Any, snapshot_id: str) -> None:
    ec2.delete_snapshot(SnapshotId=snapshot_id)

    def gone() -> bool | None:
        code, _, _ = aws_error(ec2.describe_snapshots, SnapshotIds=[snapshot_id])
        return True if code == "InvalidSnapshot.NotFound" else None

    poll(gone)


def test_a_governance_lock_keeps_the_snapshot_until_it_is_unlocked(ec2: Any) -> None:
    snapshot_id = _snapshot(ec2)
    answer = ec2.lock_snapshot(SnapshotId=snapshot_id, LockMode="governance", LockDuration=7)
    assert answer["LockState"] == "governance"
    assert answer["LockDuration"] == 7
    assert answer["LockExpiresOn"] - answer["LockDurationStartTime"] == timedelta(days=7)
    assert "CoolOffPeriod" not in answer
    code, _, status = aws_error(ec2.delete_snapshot, SnapshotId=snapshot_id)
    assert (code, status) == (LOCKED_CODE, 400)
    assert ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]["State"] == (
        "completed"
    )
    assert ec2.unlock_snapshot(SnapshotId=snapshot_id)["SnapshotId"] == snapshot_id
    assert _locked(ec2, SnapshotIds=[snapshot_id]) == []
    _deleted(ec2, snapshot_id)


def test_a_compliance_lock_in_its_cooling_off_period_can_be_unlocked(ec2: Any) -> None:
    snapshot_id = _snapshot(ec2)
    answer = ec2.lock_snapshot(
        SnapshotId=snapshot_id, LockMode="compliance", LockDuration=1, CoolOffPeriod=2
    )
    assert answer["LockState"] == "compliance-cooloff"
    assert answer["CoolOffPeriodExpiresOn"] - answer["LockCreatedOn"] == timedelta(hours=2)
    code, _, _ = aws_error(ec2.delete_snapshot, SnapshotId=snapshot_id)
    assert code == LOCKED_CODE
    ec2.unlock_snapshot(SnapshotId=snapshot_id)
    _deleted(ec2, snapshot_id)


def test_a_lock_until_a_date_expires_and_then_the_snapshot_can_be_deleted(ec2: Any) -> None:
    snapshot_id = _snapshot(ec2)
    until = datetime.now(UTC) + timedelta(seconds=3)
    answer = ec2.lock_snapshot(SnapshotId=snapshot_id, LockMode="governance", ExpirationDate=until)
    assert "LockDuration" not in answer
    [item] = _locked(ec2, SnapshotIds=[snapshot_id])
    assert item["LockState"] == "governance"
    code, _, _ = aws_error(ec2.delete_snapshot, SnapshotId=snapshot_id)
    assert code == LOCKED_CODE
    time.sleep(max(0.0, (until - datetime.now(UTC)).total_seconds()) + 0.5)
    [item] = _locked(ec2, Filters=[{"Name": "lock-state", "Values": ["expired"]}])
    assert (item["SnapshotId"], item["LockState"]) == (snapshot_id, "expired")
    _deleted(ec2, snapshot_id)
    assert _locked(ec2) == []


def test_describe_finds_locks_by_id_by_state_and_in_pages(ec2: Any) -> None:
    volume_id = new_volume(ec2)
    snapshots = [new_snapshot(ec2, volume_id) for _ in range(6)]
    for snapshot_id in snapshots[:5]:
        ec2.lock_snapshot(SnapshotId=snapshot_id, LockMode="governance", LockDuration=1)
    ec2.lock_snapshot(
        SnapshotId=snapshots[5], LockMode="compliance", LockDuration=1, CoolOffPeriod=1
    )
    [one] = _locked(ec2, SnapshotIds=[snapshots[2]])
    assert one["SnapshotId"] == snapshots[2]
    assert (
        one["OwnerId"]
        == ec2.describe_snapshots(SnapshotIds=[snapshots[2]])["Snapshots"][0]["OwnerId"]
    )
    cooling = _locked(ec2, Filters=[{"Name": "lock-state", "Values": ["compliance-cooloff"]}])
    assert [item["SnapshotId"] for item in cooling] == [snapshots[5]]
    either = _locked(ec2, Filters=[{"Name": "lock-state", "Values": ["governance", "expired"]}])
    assert {item["SnapshotId"] for item in either} == set(snapshots[:5])
    first = ec2.describe_locked_snapshots(MaxResults=5)
    assert len(first["Snapshots"]) == 5 and first["NextToken"]
    rest = ec2.describe_locked_snapshots(MaxResults=5, NextToken=first["NextToken"])
    assert "NextToken" not in rest
    paged = [item["SnapshotId"] for item in first["Snapshots"] + rest["Snapshots"]]
    assert paged == snapshots
    code, _, _ = aws_error(
        ec2.describe_locked_snapshots, Filters=[{"Name": "volume-id", "Values": [volume_id]}]
    )
    assert code == "InvalidParameterValue"
    code, _, _ = aws_error(ec2.describe_locked_snapshots, SnapshotIds=["snap-0123456789abcdef0"])
    assert code == "InvalidSnapshot.NotFound"


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (
            {"LockMode": "governance", "LockDuration": 1, "ExpirationDate": "2999-01-01"},
            "InvalidParameterCombination",
        ),
        (
            {"LockMode": "governance", "LockDuration": 1, "CoolOffPeriod": 1},
            ("InvalidParameterCombination"),
        ),
        ({"LockMode": "governance"}, "MissingParameter"),
        ({"LockMode": "governance", "LockDuration": 36501}, "InvalidParameterValue"),
        (
            {"LockMode": "compliance", "LockDuration": 1, "CoolOffPeriod": 73},
            ("InvalidParameterValue"),
        ),
        ({"LockMode": "legal-hold", "LockDuration": 1}, "InvalidParameterValue"),
        ({"LockMode": "governance", "ExpirationDate": "2001-01-01"}, "InvalidParameterValue"),
    ],
)
def test_lock_settings_ec2_refuses_are_refused_with_its_codes(
    ec2: Any, params: dict[str, Any], expected: str
) -> None:
    snapshot_id = _snapshot(ec2)
    code, _, status = aws_error(ec2.lock_snapshot, SnapshotId=snapshot_id, **params)
    assert (code, status) == (expected, 400)
    assert _locked(ec2) == []


def test_another_account_can_neither_lock_nor_see_a_lock(server: ServerProcess, ec2: Any) -> None:
    reader_id, key = server.new_account()
    reader = server.client(key=key)
    shared, private = _snapshot(ec2), _snapshot(ec2)
    ec2.modify_snapshot_attribute(
        SnapshotId=shared,
        Attribute="createVolumePermission",
        OperationType="add",
        UserIds=[reader_id],
    )
    ec2.lock_snapshot(SnapshotId=shared, LockMode="governance", LockDuration=1)
    code, _, _ = aws_error(
        reader.lock_snapshot, SnapshotId=shared, LockMode="governance", LockDuration=1
    )
    assert code == "UnauthorizedOperation"
    code, _, _ = aws_error(
        reader.lock_snapshot, SnapshotId=private, LockMode="governance", LockDuration=1
    )
    assert code == "InvalidSnapshot.NotFound"
    code, _, _ = aws_error(reader.unlock_snapshot, SnapshotId=shared)
    assert code == "UnauthorizedOperation"
    assert _locked(reader) == []
    assert _locked(reader, SnapshotIds=[shared]) == []
    assert [item["SnapshotId"] for item in _locked(ec2)] == [shared]


def test_a_pending_snapshot_can_be_locked_and_its_duration_starts_when_it_completes(
    ec2: Any,
) -> None:
    snapshot_id = new_snapshot(ec2, new_volume(ec2), wait=False)
    answer = ec2.lock_snapshot(SnapshotId=snapshot_id, LockMode="governance", LockDuration=2)
    assert answer["LockState"] == "governance"
    ec2.get_waiter("snapshot_completed").wait(
        SnapshotIds=[snapshot_id], WaiterConfig={"Delay": 0.1, "MaxAttempts": 300}
    )
    [item] = _locked(ec2, SnapshotIds=[snapshot_id])
    assert item["LockExpiresOn"] - item["LockDurationStartTime"] == timedelta(days=2)
    assert item["LockDurationStartTime"] >= item["LockCreatedOn"]
    code, _, _ = aws_error(ec2.delete_snapshot, SnapshotId=snapshot_id)
    assert code == LOCKED_CODE


def test_a_lock_put_on_a_pending_snapshot_is_cancelled_when_the_snapshot_fails(
    server: ServerProcess,
) -> None:
    _, key = server.new_account()
    ec2, ebs = server.client(key=key), server.client("ebs", key=key)
    snapshot_id = ebs.start_snapshot(VolumeSize=1, Timeout=10)["SnapshotId"]
    ec2.lock_snapshot(
        SnapshotId=snapshot_id, LockMode="compliance", CoolOffPeriod=1, LockDuration=3
    )

    def failed() -> bool | None:
        [snapshot] = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
        return True if snapshot["State"] == "error" else None

    poll(failed)
    assert _locked(ec2, SnapshotIds=[snapshot_id]) == []
    _deleted(ec2, snapshot_id)


@pytest.mark.parametrize("position", ["99999999999999999999999", "\u0663", "-1"])
def test_a_tampered_next_token_is_an_invalid_pagination_token(ec2: Any, position: str) -> None:
    token = base64.urlsafe_b64encode(f"lock:{position}".encode()).decode()
    code, _, status = aws_error(ec2.describe_locked_snapshots, NextToken=token)
    assert (code, status) == ("InvalidPaginationToken", 400)
