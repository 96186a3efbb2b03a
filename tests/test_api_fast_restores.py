"""EnableFastSnapshotRestores, DisableFastSnapshotRestores and DescribeFastSnapshotRestores over
HTTP with boto3 and the AWS CLI, against a server with file storage (no clone path: the states
are kept and reported; tests/test_fast_restores_rbd.py covers the RBD clone path)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ebsemu.service.fast_restores import LIMIT_CODE, SNAPSHOT_LIMIT
from tests.api_support import aws_error, new_snapshot, new_volume, poll
from tests.server import TEST_CONFIG, ZONE, ServerProcess
from tests.test_api_cli import aws_json

ZONE_B = "us-east-1b"


@pytest.fixture(scope="module")
def fsr_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    work = tmp_path_factory.mktemp("fast-restores")
    config = TEST_CONFIG + f"[region us-east-1]\nzones = {ZONE}, {ZONE_B}\n"
    server = ServerProcess(work / "data", config)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def other(fsr_server: ServerProcess) -> tuple[str, Any]:
    """A second account: its id and a client."""
    account_id, key = fsr_server.new_account()
    return account_id, fsr_server.client(key=key)


def _disable_all(ec2: Any, snapshot_ids: list[str]) -> None:
    """Leave the account's per-region limit as the test found it."""
    ec2.disable_fast_snapshot_restores(
        SourceSnapshotIds=snapshot_ids, AvailabilityZones=[ZONE, ZONE_B]
    )


def _snapshot(ec2: Any) -> str:
    return new_snapshot(ec2, new_volume(ec2))


def _states(ec2: Any, snapshot_id: str) -> dict[str, str]:
    found = ec2.describe_fast_snapshot_restores(
        Filters=[{"Name": "snapshot-id", "Values": [snapshot_id]}]
    )["FastSnapshotRestores"]
    return {item["AvailabilityZone"]: item["State"] for item in found}


def _settled(ec2: Any, snapshot_id: str, state: str, zones: set[str]) -> dict[str, Any]:
    """Poll until the snapshot's fast restores in ``zones`` are ``state``; the items by zone."""

    def probe() -> dict[str, Any] | None:
        found = ec2.describe_fast_snapshot_restores(
            Filters=[{"Name": "snapshot-id", "Values": [snapshot_id]}]
        )["FastSnapshotRestores"]
        items = {item["AvailabilityZone"]: item for item in found}
        return items if all(items.get(z, {}).get("State") == state for z in zones) else None

    return poll(probe)


def test_enable_answers_enabling_then_optimizing_and_enabled_per_zone(
    fsr_server: ServerProcess,
) -> None:
    ec2 = fsr_server.client()
    owner = ec2.describe_snapshots(SnapshotIds=[snapshot_id := _snapshot(ec2)])["Snapshots"][0]
    answer = ec2.enable_fast_snapshot_restores(
        SourceSnapshotIds=[snapshot_id], AvailabilityZones=[ZONE, ZONE_B]
    )
    assert answer["Unsuccessful"] == []
    items = {item["AvailabilityZone"]: item for item in answer["Successful"]}
    assert set(items) == {ZONE, ZONE_B}
    for item in items.values():
        assert item["State"] == "enabling"
        assert item["StateTransitionReason"] == "Client.UserInitiated"
        assert item["OwnerId"] == owner["OwnerId"]
        assert "EnablingTime" in item and "EnabledTime" not in item
    assert items[ZONE]["AvailabilityZoneId"] == "use1-az1"

    enabled = _settled(ec2, snapshot_id, "enabled", {ZONE, ZONE_B})
    for item in enabled.values():
        assert item["EnablingTime"] <= item["OptimizingTime"] <= item["EnabledTime"]
        assert item["StateTransitionReason"] == "Client.UserInitiated - Lifecycle state transition"
    # enabling again changes nothing: the enabled zone is answered as it is
    again = ec2.enable_fast_snapshot_restores(
        SourceSnapshotIds=[snapshot_id], AvailabilityZones=[ZONE]
    )
    assert [i["State"] for i in again["Successful"]] == ["enabled"]
    assert again["Successful"][0]["EnabledTime"] == enabled[ZONE]["EnabledTime"]
    _disable_all(ec2, [snapshot_id])


def test_disable_answers_disabling_with_the_earlier_times_then_disabled(
    fsr_server: ServerProcess,
) -> None:
    ec2 = fsr_server.client()
    snapshot_id = _snapshot(ec2)
    ec2.enable_fast_snapshot_restores(
        SourceSnapshotIds=[snapshot_id], AvailabilityZones=[ZONE, ZONE_B]
    )
    enabled = _settled(ec2, snapshot_id, "enabled", {ZONE, ZONE_B})
    answer = ec2.disable_fast_snapshot_restores(
        SourceSnapshotIds=[snapshot_id], AvailabilityZoneIds=["use1-az1"]
    )
    assert answer["Unsuccessful"] == []
    (item,) = answer["Successful"]
    assert item["AvailabilityZone"] == ZONE and item["State"] == "disabling"
    assert item["EnabledTime"] == enabled[ZONE]["EnabledTime"]
    assert item["DisablingTime"] >= item["EnabledTime"]
    assert item["StateTransitionReason"] == "Client.UserInitiated"
    settled = _settled(ec2, snapshot_id, "disabled", {ZONE})
    assert settled[ZONE_B]["State"] == "enabled"
    assert settled[ZONE]["DisabledTime"] >= item["DisablingTime"]
    # a zone that has none: answered disabled, nothing started
    none = ec2.disable_fast_snapshot_restores(
        SourceSnapshotIds=[_snapshot(ec2)], AvailabilityZones=[ZONE]
    )
    assert [i["State"] for i in none["Successful"]] == ["disabled"]
    # a volume restores from it as ever (file storage: block by block)
    restored = new_volume(ec2, SnapshotId=snapshot_id, AvailabilityZone=ZONE_B)
    assert ec2.describe_volumes(VolumeIds=[restored])["Volumes"][0]["SnapshotId"] == snapshot_id
    _disable_all(ec2, [snapshot_id])


def test_errors_are_unsuccessful_items_per_snapshot_and_zone(
    fsr_server: ServerProcess, other: tuple[str, Any]
) -> None:
    ec2 = fsr_server.client()
    snapshot_id = _snapshot(ec2)
    missing = "snap-0123456789abcdef0"
    answer = ec2.enable_fast_snapshot_restores(
        SourceSnapshotIds=[snapshot_id, missing], AvailabilityZones=[ZONE, "us-east-1z"]
    )
    assert [(i["SnapshotId"], i["AvailabilityZone"]) for i in answer["Successful"]] == [
        (snapshot_id, ZONE)
    ]
    errors = {
        item["SnapshotId"]: {
            (e["AvailabilityZone"], e["Error"]["Code"], e["Error"]["Message"])
            for e in item["FastSnapshotRestoreStateErrors"]
        }
        for item in answer["Unsuccessful"]
    }
    assert errors[snapshot_id] == {
        ("us-east-1z", "InvalidZone.NotFound", "The zone 'us-east-1z' does not exist.")
    }
    not_found = f"The snapshot '{missing}' does not exist."
    assert errors[missing] == {
        (ZONE, "InvalidSnapshot.NotFound", not_found),
        ("us-east-1z", "InvalidSnapshot.NotFound", not_found),
    }
    # another account's snapshot that is not shared with the caller: not found either
    refused = other[1].enable_fast_snapshot_restores(
        SourceSnapshotIds=[snapshot_id], AvailabilityZones=[ZONE]
    )
    assert refused["Successful"] == []
    (item,) = refused["Unsuccessful"]
    assert item["FastSnapshotRestoreStateErrors"][0]["Error"]["Code"] == "InvalidSnapshot.NotFound"
    # a pending snapshot
    pending = new_snapshot(ec2, new_volume(ec2, Size=8), wait=False)
    answer = ec2.enable_fast_snapshot_restores(
        SourceSnapshotIds=[pending], AvailabilityZones=[ZONE]
    )
    state = ec2.describe_snapshots(SnapshotIds=[pending])["Snapshots"][0]["State"]
    if answer["Unsuccessful"]:
        (error,) = answer["Unsuccessful"][0]["FastSnapshotRestoreStateErrors"]
        assert error["Error"]["Code"] == "IncorrectState"
    else:  # captured before the request came: nothing to refuse
        assert state == "completed"
    code, message, status = aws_error(
        ec2.enable_fast_snapshot_restores, SourceSnapshotIds=[snapshot_id]
    )
    assert (code, status) == ("MissingParameter", 400), message
    code, _, _ = aws_error(
        ec2.enable_fast_snapshot_restores, SourceSnapshotIds=[], AvailabilityZones=[ZONE]
    )
    assert code == "MissingParameter"
    _disable_all(ec2, [snapshot_id, pending])


def test_a_shared_snapshot_can_be_enabled_and_its_deletion_disables_it(
    fsr_server: ServerProcess, other: tuple[str, Any]
) -> None:
    owner = fsr_server.client()
    snapshot_id = _snapshot(owner)
    reader_id, reader = other
    owner.modify_snapshot_attribute(
        SnapshotId=snapshot_id,
        Attribute="createVolumePermission",
        OperationType="add",
        UserIds=[reader_id],
    )
    (item,) = reader.enable_fast_snapshot_restores(
        SourceSnapshotIds=[snapshot_id], AvailabilityZones=[ZONE]
    )["Successful"]
    assert item["OwnerId"] == reader_id  # the account that enabled it
    owner.enable_fast_snapshot_restores(SourceSnapshotIds=[snapshot_id], AvailabilityZones=[ZONE_B])
    _settled(reader, snapshot_id, "enabled", {ZONE})
    _settled(owner, snapshot_id, "enabled", {ZONE_B})
    assert set(_states(owner, snapshot_id)) == {ZONE_B}  # each account sees its own
    owner.delete_snapshot(SnapshotId=snapshot_id)
    deleted = _settled(reader, snapshot_id, "disabled", {ZONE})
    assert deleted[ZONE]["StateTransitionReason"].startswith("Client.InvalidSnapshot.NotFound")
    assert _settled(owner, snapshot_id, "disabled", {ZONE_B})


def test_unsharing_a_snapshot_disables_the_fast_restores_of_those_it_was_shared_with(
    fsr_server: ServerProcess, other: tuple[str, Any]
) -> None:
    owner = fsr_server.client()
    snapshot_id = _snapshot(owner)
    reader_id, reader = other
    for operation in ("add", "remove"):
        if operation == "remove":
            _settled(reader, snapshot_id, "enabled", {ZONE})
            _settled(owner, snapshot_id, "enabled", {ZONE})
        owner.modify_snapshot_attribute(
            SnapshotId=snapshot_id,
            Attribute="createVolumePermission",
            OperationType=operation,
            UserIds=[reader_id],
        )
        if operation == "add":
            for ec2 in (reader, owner):
                ec2.enable_fast_snapshot_restores(
                    SourceSnapshotIds=[snapshot_id], AvailabilityZones=[ZONE]
                )

    unshared = _settled(reader, snapshot_id, "disabled", {ZONE})
    assert unshared[ZONE]["StateTransitionReason"] != "Client.UserInitiated"
    assert _states(owner, snapshot_id) == {ZONE: "enabled"}  # the owner's own stays
    _disable_all(owner, [snapshot_id])
    _settled(owner, snapshot_id, "disabled", {ZONE})


def test_describe_filters_and_pages(fsr_server: ServerProcess) -> None:
    ec2 = fsr_server.client()
    snapshots = [_snapshot(ec2) for _ in range(3)]
    ec2.enable_fast_snapshot_restores(SourceSnapshotIds=snapshots, AvailabilityZones=[ZONE, ZONE_B])
    for snapshot_id in snapshots:
        _settled(ec2, snapshot_id, "enabled", {ZONE, ZONE_B})
    ec2.disable_fast_snapshot_restores(SourceSnapshotIds=snapshots[:1], AvailabilityZones=[ZONE_B])
    _settled(ec2, snapshots[0], "disabled", {ZONE_B})

    mine = {"Name": "snapshot-id", "Values": snapshots}

    def listed(**params: Any) -> list[tuple[str, str]]:
        params["Filters"] = [mine, *params.get("Filters", [])]
        found = ec2.describe_fast_snapshot_restores(**params)["FastSnapshotRestores"]
        return sorted((i["SnapshotId"], i["AvailabilityZone"]) for i in found)

    assert len(listed()) == 6
    assert listed(Filters=[{"Name": "availability-zone", "Values": [ZONE_B]}]) == sorted(
        (s, ZONE_B) for s in snapshots
    )
    assert listed(Filters=[{"Name": "state", "Values": ["disabled"]}]) == [(snapshots[0], ZONE_B)]
    assert listed(
        Filters=[
            {"Name": "snapshot-id", "Values": snapshots[1:]},
            {"Name": "availability-zone-id", "Values": ["use1-az1"]},
        ]
    ) == sorted((s, ZONE) for s in snapshots[1:])
    owner_id = ec2.describe_snapshots(SnapshotIds=snapshots[:1])["Snapshots"][0]["OwnerId"]
    assert len(listed(Filters=[{"Name": "owner-id", "Values": [owner_id]}])) == 6
    assert listed(Filters=[{"Name": "owner-id", "Values": ["111122223333"]}]) == []
    assert listed(Filters=[{"Name": "state", "Values": ["enabl*"]}]) == listed(
        Filters=[{"Name": "state", "Values": ["enabled"]}]
    )

    first = ec2.describe_fast_snapshot_restores(Filters=[mine], MaxResults=4)
    assert len(first["FastSnapshotRestores"]) == 4 and first["NextToken"]
    rest = ec2.describe_fast_snapshot_restores(
        Filters=[mine], MaxResults=4, NextToken=first["NextToken"]
    )
    assert len(rest["FastSnapshotRestores"]) == 2 and "NextToken" not in rest
    pages = ec2.get_paginator("describe_fast_snapshot_restores").paginate(
        Filters=[mine], PaginationConfig={"PageSize": 1}
    )
    assert sum(len(p["FastSnapshotRestores"]) for p in pages) == 6
    code, message, _ = aws_error(
        ec2.describe_fast_snapshot_restores, Filters=[{"Name": "volume-id", "Values": ["x"]}]
    )
    assert (code, message) == ("InvalidParameterValue", "The filter 'volume-id' is invalid")
    code, _, _ = aws_error(ec2.describe_fast_snapshot_restores, MaxResults=201)
    assert code == "InvalidParameterValue"
    _disable_all(ec2, snapshots)


def test_at_most_five_snapshots_per_region_have_fast_restores(
    fsr_server: ServerProcess, other: tuple[str, Any]
) -> None:
    ec2 = other[1]
    snapshots = [_snapshot(ec2) for _ in range(SNAPSHOT_LIMIT + 1)]
    answer = ec2.enable_fast_snapshot_restores(
        SourceSnapshotIds=snapshots, AvailabilityZones=[ZONE, ZONE_B]
    )
    assert len(answer["Successful"]) == 2 * SNAPSHOT_LIMIT  # zones of one snapshot count once
    (refused,) = answer["Unsuccessful"]
    assert refused["SnapshotId"] == snapshots[-1]
    codes = {e["Error"]["Code"] for e in refused["FastSnapshotRestoreStateErrors"]}
    assert codes == {LIMIT_CODE}
    # disabled ones no longer count
    ec2.disable_fast_snapshot_restores(
        SourceSnapshotIds=snapshots[:1], AvailabilityZones=[ZONE, ZONE_B]
    )
    _settled(ec2, snapshots[0], "disabled", {ZONE, ZONE_B})
    again = ec2.enable_fast_snapshot_restores(
        SourceSnapshotIds=snapshots[-1:], AvailabilityZones=[ZONE]
    )
    assert [i["State"] for i in again["Successful"]] == ["enabling"]
    _disable_all(ec2, snapshots)


def test_the_aws_cli_describes_fast_snapshot_restores(
    fsr_server: ServerProcess, tmp_path: Path
) -> None:
    ec2 = fsr_server.client()
    snapshot_id = _snapshot(ec2)
    ec2.enable_fast_snapshot_restores(SourceSnapshotIds=[snapshot_id], AvailabilityZones=[ZONE])
    _settled(ec2, snapshot_id, "enabled", {ZONE})
    found = aws_json(
        fsr_server,
        "describe-fast-snapshot-restores",
        "--filters", f"Name=snapshot-id,Values={snapshot_id}",
    )  # fmt: skip
    (item,) = found["FastSnapshotRestores"]
    assert (item["SnapshotId"], item["AvailabilityZone"], item["State"]) == (
        snapshot_id,
        ZONE,
        "enabled",
    )
    _disable_all(ec2, [snapshot_id])
