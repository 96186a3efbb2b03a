"""Describe calls: every documented filter, wildcards, OR/AND, unknown names, pagination."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.config import Config as BotoConfig

from tests.api_support import aws_error, new_snapshot, new_volume, tag_spec, unique
from tests.server import REGION, ZONE, ServerProcess

ACCOUNT = "000000000000"


@pytest.fixture(scope="module")
def ec2(server: ServerProcess) -> Any:
    """One client for the module: building a boto3 client costs tens of milliseconds."""
    return server.client()


def wire_time(value: datetime) -> str:
    """A timestamp as the wire (and so the filters) show it: UTC, whole milliseconds, `Z`."""
    utc = value.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


@dataclass
class Fleet:
    """Four volumes and two snapshots, tagged with one unique run id."""

    run: str
    volumes: list[str]  # gp2 1 GiB, gp3 2 GiB, standard 3 GiB, io1 4 GiB from snapshots[0]
    snapshots: list[str]  # of volumes[0], of volumes[1]
    volume_times: list[str]
    snapshot_times: list[str]


@pytest.fixture(scope="module")
def fleet(ec2: Any) -> Fleet:
    run = unique()
    v0 = new_volume(
        ec2,
        Size=1,
        TagSpecifications=tag_spec("volume", run=run, Name="alpha", team="red", lit="x*y"),
    )
    v1 = new_volume(
        ec2,
        Size=2,
        VolumeType="gp3",
        TagSpecifications=tag_spec("volume", run=run, Name="beta", team="blue", lit="xzy"),
    )
    v2 = new_volume(
        ec2,
        Size=3,
        VolumeType="standard",
        TagSpecifications=tag_spec("volume", run=run, Name="gamma"),
    )
    s0 = new_snapshot(
        ec2, v0, Description="alpha backup", TagSpecifications=tag_spec("snapshot", run=run, n="0")
    )
    s1 = new_snapshot(ec2, v1, Description="beta", TagSpecifications=tag_spec("snapshot", run=run))
    v3 = new_volume(
        ec2,
        SnapshotId=s0,
        Size=4,
        VolumeType="io1",
        Iops=100,
        TagSpecifications=tag_spec("volume", run=run, Name="delta"),
    )
    volumes = [v0, v1, v2, v3]
    described = ec2.describe_volumes(VolumeIds=volumes)["Volumes"]
    times = {v["VolumeId"]: wire_time(v["CreateTime"]) for v in described}
    snaps = ec2.describe_snapshots(SnapshotIds=[s0, s1])["Snapshots"]
    snap_times = {s["SnapshotId"]: wire_time(s["StartTime"]) for s in snaps}
    return Fleet(
        run, volumes, [s0, s1], [times[v] for v in volumes], [snap_times[s0], snap_times[s1]]
    )


def volumes_matching(ec2: Any, fleet: Fleet, *filters: tuple[str, list[str]]) -> set[int]:
    """Indexes into fleet.volumes of the volumes the filters (and the run tag) select."""
    flts = [{"Name": "tag:run", "Values": [fleet.run]}]
    flts += [{"Name": name, "Values": values} for name, values in filters]
    found = [v["VolumeId"] for v in ec2.describe_volumes(Filters=flts)["Volumes"]]
    assert len(found) == len(set(found))
    return {fleet.volumes.index(v) for v in found}


ALL = {0, 1, 2, 3}


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        pytest.param([("status", ["available"])], ALL, id="status"),
        pytest.param([("status", ["creating", "in-use"])], set(), id="status-other"),
        pytest.param([("size", ["2"])], {1}, id="size"),
        pytest.param([("size", ["1", "3"])], {0, 2}, id="size-or"),
        pytest.param([("size", ["?"])], ALL, id="size-question-mark"),
        pytest.param([("size", ["1?"])], set(), id="size-no-match"),
        pytest.param([("availability-zone", [ZONE])], ALL, id="zone"),
        pytest.param([("availability-zone", ["us-east-1?"])], ALL, id="zone-wildcard"),
        pytest.param([("availability-zone", ["us-west-2a"])], set(), id="zone-other"),
        pytest.param([("availability-zone-id", ["use1-az1"])], ALL, id="zone-id"),
        pytest.param([("availability-zone-id", ["use1-az2"])], set(), id="zone-id-other"),
        pytest.param([("encrypted", ["false"])], ALL, id="encrypted-false"),
        pytest.param([("encrypted", ["true"])], set(), id="encrypted-true"),
        pytest.param([("fast-restored", ["false"])], ALL, id="fast-restored"),
        pytest.param([("fast-restored", ["true"])], set(), id="fast-restored-true"),
        pytest.param([("multi-attach-enabled", ["false"])], ALL, id="multi-attach"),
        pytest.param([("multi-attach-enabled", ["true"])], set(), id="multi-attach-true"),
        pytest.param([("operator.managed", ["false"])], ALL, id="operator-managed"),
        pytest.param([("operator.managed", ["true"])], set(), id="operator-managed-true"),
        pytest.param(
            [("operator.principal", ["ec2.amazonaws.com"])], set(), id="operator-principal"
        ),
        pytest.param([("volume-type", ["gp2"])], {0}, id="type"),
        pytest.param([("volume-type", ["gp?"])], {0, 1}, id="type-question-mark"),
        pytest.param([("volume-type", ["standard", "io1"])], {2, 3}, id="type-or"),
        pytest.param([("volume-type", ["*1"])], {3}, id="type-star"),
        pytest.param([("volume-type", ["GP2"])], set(), id="type-case-sensitive"),
        pytest.param([("attachment.status", ["attached"])], set(), id="attachment-status"),
        pytest.param([("attachment.instance-id", ["i-*"])], set(), id="attachment-instance"),
        pytest.param([("attachment.device", ["/dev/sdf"])], set(), id="attachment-device"),
        pytest.param([("attachment.attach-time", ["*"])], set(), id="attachment-time"),
        pytest.param([("attachment.delete-on-termination", ["false"])], set(), id="attachment-dot"),
        pytest.param([("tag:Name", ["alpha"])], {0}, id="tag"),
        pytest.param([("tag:Name", ["alpha", "beta"])], {0, 1}, id="tag-or"),
        pytest.param([("tag:Name", ["?eta"])], {1}, id="tag-question-mark"),
        pytest.param([("tag:Name", ["*a"])], ALL, id="tag-star"),
        pytest.param([("tag:Name", ["g*"])], {2}, id="tag-prefix"),
        pytest.param([("tag:Name", ["ALPHA"])], set(), id="tag-case-sensitive"),
        pytest.param([("tag:lit", ["x\\*y"])], {0}, id="tag-escaped-star"),
        pytest.param([("tag:lit", ["x*y"])], {0, 1}, id="tag-unescaped-star"),
        pytest.param([("tag:team", [])], {0, 1}, id="tag-without-values-means-has-tag"),
        pytest.param([("tag:nothere", ["*"])], set(), id="tag-absent-key"),
        pytest.param([("tag-key", ["team"])], {0, 1}, id="tag-key"),
        pytest.param([("tag-key", ["te*", "lit"])], {0, 1}, id="tag-key-wildcard"),
        pytest.param([("tag:Name", ["*a"]), ("volume-type", ["gp2"])], {0}, id="and"),
        pytest.param(
            [("tag:Name", ["*a"]), ("size", ["2", "3"]), ("tag-key", ["team"])], {1}, id="and-3"
        ),
        pytest.param([("size", ["1"]), ("size", ["2"])], set(), id="same-filter-twice-ands"),
    ],
)
def test_describe_volumes_filter(
    ec2: Any, fleet: Fleet, filters: list[tuple[str, list[str]]], expected: set[int]
) -> None:
    assert volumes_matching(ec2, fleet, *filters) == expected


def test_describe_volumes_filter_by_ids_times_and_snapshot(ec2: Any, fleet: Fleet) -> None:
    v = fleet.volumes
    assert volumes_matching(ec2, fleet, ("volume-id", [v[1], v[3]])) == {1, 3}
    assert volumes_matching(ec2, fleet, ("volume-id", ["vol-*"])) == ALL
    assert volumes_matching(ec2, fleet, ("snapshot-id", [fleet.snapshots[0]])) == {3}
    assert volumes_matching(ec2, fleet, ("snapshot-id", ["snap-*"])) == {3}
    assert volumes_matching(ec2, fleet, ("create-time", [fleet.volume_times[2]])) == {2}
    assert volumes_matching(ec2, fleet, ("create-time", ["20??-*Z"])) == ALL


def test_describe_volumes_with_ids_and_filters_ands_them(ec2: Any, fleet: Fleet) -> None:
    found = ec2.describe_volumes(
        VolumeIds=fleet.volumes[:2], Filters=[{"Name": "volume-type", "Values": ["gp3"]}]
    )["Volumes"]
    assert [v["VolumeId"] for v in found] == [fleet.volumes[1]]


def test_describe_snapshots_with_ids_and_filters_ands_them(ec2: Any, fleet: Fleet) -> None:
    found = ec2.describe_snapshots(
        SnapshotIds=fleet.snapshots, Filters=[{"Name": "volume-size", "Values": ["2"]}]
    )["Snapshots"]
    assert [s["SnapshotId"] for s in found] == [fleet.snapshots[1]]
    assert (
        ec2.describe_snapshots(SnapshotIds=fleet.snapshots[:1], OwnerIds=["amazon"])["Snapshots"]
        == []
    )


def snapshots_matching(ec2: Any, fleet: Fleet, name: str, values: list[str]) -> set[int]:
    flts = [
        {"Name": "tag:run", "Values": [fleet.run]},
        {"Name": name, "Values": values},
    ]
    found = [s["SnapshotId"] for s in ec2.describe_snapshots(Filters=flts)["Snapshots"]]
    return {fleet.snapshots.index(s) for s in found}


@pytest.mark.parametrize(
    ("name", "values", "expected"),
    [
        ("description", ["alpha backup"], {0}),
        ("description", ["*a*"], {0, 1}),
        ("description", ["alpha"], set()),
        ("encrypted", ["false"], {0, 1}),
        ("encrypted", ["true"], set()),
        ("owner-id", [ACCOUNT], {0, 1}),
        ("owner-id", ["123456789012"], set()),
        ("owner-alias", ["amazon"], set()),
        ("progress", ["100%"], {0, 1}),
        ("progress", ["1?%"], set()),
        ("status", ["completed"], {0, 1}),
        ("status", ["pending", "error"], set()),
        ("storage-tier", ["standard"], {0, 1}),
        ("storage-tier", ["archive"], set()),
        ("transfer-type", ["standard"], {0, 1}),
        ("transfer-type", ["time-based"], set()),
        ("volume-size", ["1"], {0}),
        ("volume-size", ["1", "2"], {0, 1}),
        ("tag:n", ["0"], {0}),
        ("tag-key", ["n"], {0}),
        ("tag-key", ["run"], {0, 1}),
    ],
)
def test_describe_snapshots_filter(
    ec2: Any, fleet: Fleet, name: str, values: list[str], expected: set[int]
) -> None:
    assert snapshots_matching(ec2, fleet, name, values) == expected


def test_describe_snapshots_filter_by_ids_and_times(ec2: Any, fleet: Fleet) -> None:
    s, v = fleet.snapshots, fleet.volumes
    assert snapshots_matching(ec2, fleet, "snapshot-id", [s[1]]) == {1}
    assert snapshots_matching(ec2, fleet, "snapshot-id", ["snap-*"]) == {0, 1}
    assert snapshots_matching(ec2, fleet, "volume-id", [v[0]]) == {0}
    assert snapshots_matching(ec2, fleet, "volume-id", [v[0], v[1]]) == {0, 1}
    assert snapshots_matching(ec2, fleet, "start-time", [fleet.snapshot_times[1]]) == {1}


def tags_matching(ec2: Any, fleet: Fleet, *filters: tuple[str, list[str]]) -> set[tuple[str, str]]:
    flts = [{"Name": "resource-id", "Values": fleet.volumes + fleet.snapshots}]
    flts += [{"Name": name, "Values": values} for name, values in filters]
    return {(t["ResourceId"], t["Key"]) for t in ec2.describe_tags(Filters=flts)["Tags"]}


def test_describe_tags_filters(ec2: Any, fleet: Fleet) -> None:
    v, s = fleet.volumes, fleet.snapshots
    assert tags_matching(ec2, fleet, ("key", ["team"])) == {(v[0], "team"), (v[1], "team")}
    assert tags_matching(ec2, fleet, ("value", ["red", "blue"])) == {
        (v[0], "team"),
        (v[1], "team"),
    }
    assert tags_matching(ec2, fleet, ("key", ["Name"]), ("value", ["?eta", "*lph*"])) == {
        (v[0], "Name"),
        (v[1], "Name"),
    }
    assert tags_matching(ec2, fleet, ("resource-type", ["snapshot"])) == {
        (s[0], "run"),
        (s[0], "n"),
        (s[1], "run"),
    }
    assert tags_matching(ec2, fleet, ("resource-type", ["volume"]), ("key", ["run"])) == {
        (vid, "run") for vid in v
    }
    assert tags_matching(ec2, fleet, ("resource-id", [v[2]])) == {(v[2], "run"), (v[2], "Name")}
    # tag:<key> selects resources by one tag and lists all their tags.
    assert tags_matching(ec2, fleet, ("tag:Name", ["gamma"])) == {(v[2], "run"), (v[2], "Name")}
    assert tags_matching(ec2, fleet, ("key", ["nothere"])) == set()


def test_describe_tags_answers_resource_type_and_value(ec2: Any, fleet: Fleet) -> None:
    (tag,) = ec2.describe_tags(
        Filters=[
            {"Name": "resource-id", "Values": [fleet.snapshots[0]]},
            {"Name": "key", "Values": ["n"]},
        ]
    )["Tags"]
    assert tag == {
        "ResourceId": fleet.snapshots[0],
        "ResourceType": "snapshot",
        "Key": "n",
        "Value": "0",
    }


@pytest.mark.parametrize(
    ("name", "match", "miss"),
    [
        ("zone-name", ZONE, "us-east-1b"),
        ("zone-id", "use1-az1", "use1-az2"),
        ("region-name", REGION, "eu-west-1"),
        ("state", "available", "impaired"),
        ("opt-in-status", "opt-in-not-required", "not-opted-in"),
        ("zone-type", "availability-zone", "local-zone"),
        ("group-name", "us-east-*", "us-west-2"),
        ("group-long-name", "*", "nothing-like-this"),
        ("message", "*", "zone is impaired"),
        ("parent-zone-id", "*", "use1-az9"),
        ("parent-zone-name", "*", "us-east-1z"),
    ],
)
def test_describe_availability_zones_filter(ec2: Any, name: str, match: str, miss: str) -> None:
    found = ec2.describe_availability_zones(Filters=[{"Name": name, "Values": [miss, match]}])
    assert [z["ZoneName"] for z in found["AvailabilityZones"]] == [ZONE]
    found = ec2.describe_availability_zones(Filters=[{"Name": name, "Values": [miss]}])
    assert found["AvailabilityZones"] == []


def test_describe_availability_zones_answers_the_zone(ec2: Any) -> None:
    (zone,) = ec2.describe_availability_zones()["AvailabilityZones"]
    assert (zone["ZoneName"], zone["ZoneId"], zone["RegionName"]) == (ZONE, "use1-az1", REGION)
    assert zone["State"] == "available" and zone["ZoneType"] == "availability-zone"
    assert ec2.describe_availability_zones(ZoneNames=[ZONE])["AvailabilityZones"] == [zone]
    assert ec2.describe_availability_zones(ZoneIds=["use1-az1"])["AvailabilityZones"] == [zone]


def test_describe_availability_zones_unknown_name_is_invalid_parameter_value(ec2: Any) -> None:
    code, message, _ = aws_error(ec2.describe_availability_zones, ZoneNames=["us-east-1z"])
    assert code == "InvalidParameterValue" and "us-east-1z" in message


@pytest.mark.parametrize(
    ("name", "match", "miss"),
    [
        ("region-name", REGION, "eu-west-1"),
        ("region-name", "us-*-1", "?s-east-2"),
        ("opt-in-status", "opt-in-not-required", "opted-in"),
        ("endpoint", "*", "ec2.eu-west-1.amazonaws.com"),
    ],
)
def test_describe_regions_filter(ec2: Any, name: str, match: str, miss: str) -> None:
    found = ec2.describe_regions(Filters=[{"Name": name, "Values": [match]}])["Regions"]
    assert [r["RegionName"] for r in found] == [REGION]
    assert ec2.describe_regions(Filters=[{"Name": name, "Values": [miss]}])["Regions"] == []


def test_describe_regions_unknown_name_is_invalid_parameter_value(ec2: Any) -> None:
    assert ec2.describe_regions(RegionNames=[REGION])["Regions"][0]["RegionName"] == REGION
    code, _, _ = aws_error(ec2.describe_regions, RegionNames=["mars-north-1"])
    assert code == "InvalidParameterValue"


@pytest.mark.parametrize(
    ("operation", "name"),
    [
        ("describe_volumes", "bogus"),
        ("describe_volumes", "Status"),
        ("describe_volumes", "tag"),
        ("describe_volumes", "tag:"),
        ("describe_volumes", "description"),
        ("describe_snapshots", "bogus"),
        ("describe_snapshots", "size"),
        ("describe_snapshots", "attachment.status"),
        ("describe_tags", "bogus"),
        ("describe_tags", "status"),
        ("describe_availability_zones", "bogus"),
        ("describe_regions", "bogus"),
    ],
)
def test_unknown_filter_name_is_invalid_parameter_value(
    ec2: Any, operation: str, name: str
) -> None:
    code, message, status = aws_error(
        getattr(ec2, operation), Filters=[{"Name": name, "Values": ["x"]}]
    )
    assert (code, status) == ("InvalidParameterValue", 400)
    assert f"'{name}'" in message


@pytest.mark.parametrize(
    ("operation", "name"),
    [
        ("describe_volumes", "tag:Name"),
        ("describe_volumes", "status"),
        ("describe_snapshots", "status"),
        ("describe_tags", "key"),
        ("describe_volumes_modifications", "volume-id"),
        ("describe_volume_status", "volume-status.status"),
        ("describe_availability_zones", "zone-name"),
    ],
)
def test_more_than_200_filter_values_is_filter_limit_exceeded(
    ec2: Any, operation: str, name: str
) -> None:
    """EC2 takes at most 200 filter values a call; more used to reach SQLite as one OR chain
    too deep for it (500 InternalError)."""
    call = getattr(ec2, operation)
    values = [f"nothing-{n}" for n in range(201)]
    call(Filters=[{"Name": name, "Values": values[:150]}, {"Name": name, "Values": values[:50]}])
    code, message, status = aws_error(
        call,
        Filters=[{"Name": name, "Values": values[:150]}, {"Name": name, "Values": values[:51]}],
    )
    assert (code, status) == ("FilterLimitExceeded", 400)
    assert "200" in message
    code, _, status = aws_error(call, Filters=[{"Name": name, "Values": values}] * 5)
    assert (code, status) == ("FilterLimitExceeded", 400)


@pytest.mark.parametrize(
    ("operation", "name"),
    [
        ("describe_availability_zones", "zone-name"),
        ("describe_regions", "endpoint"),
        ("describe_volume_status", "volume-status.status"),
        ("describe_volumes", "tag:Name"),
    ],
)
def test_a_filter_value_of_many_stars_is_matched_without_backtracking(
    server: ServerProcess, operation: str, name: str
) -> None:
    """A pattern of stars that cannot match: a regular expression took time exponential in
    the stars (12 s for 26), on the event loop, holding every other request."""
    patient = server.client(config=BotoConfig(read_timeout=60, retries={"max_attempts": 1}))
    answer = getattr(patient, operation)(Filters=[{"Name": name, "Values": ["*" * 40 + "Z"]}])
    listed = {key: value for key, value in answer.items() if isinstance(value, list)}
    assert listed and all(value == [] for value in listed.values())
    stars = getattr(patient, operation)(Filters=[{"Name": name, "Values": ["*" * 40]}])
    assert stars.keys() == answer.keys()


# ---- pagination ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def twelve(ec2: Any) -> tuple[str, list[str]]:
    """Twelve volumes tagged with one run id, in creation order."""
    run = unique()
    volumes = [
        new_volume(ec2, wait=False, TagSpecifications=tag_spec("volume", page=run))
        for _ in range(12)
    ]
    ec2.get_waiter("volume_available").wait(VolumeIds=volumes, WaiterConfig={"Delay": 0.1})
    return run, volumes


def test_describe_volumes_paginator_walks_pages_of_five(
    ec2: Any, twelve: tuple[str, list[str]]
) -> None:
    run, volumes = twelve
    pages = list(
        ec2.get_paginator("describe_volumes").paginate(
            Filters=[{"Name": "tag:page", "Values": [run]}], PaginationConfig={"PageSize": 5}
        )
    )
    assert [len(p["Volumes"]) for p in pages] == [5, 5, 2]
    assert ["NextToken" in p for p in pages] == [True, True, False]
    assert [v["VolumeId"] for p in pages for v in p["Volumes"]] == volumes


def test_describe_volumes_pages_are_stable_under_inserts_and_deletes(
    ec2: Any, twelve: tuple[str, list[str]]
) -> None:
    run, volumes = twelve
    flts = [{"Name": "tag:page", "Values": [run]}]
    first = ec2.describe_volumes(Filters=flts, MaxResults=5)
    later = new_volume(ec2, TagSpecifications=tag_spec("volume", page=run))
    seen = [v["VolumeId"] for v in first["Volumes"]]
    token = first["NextToken"]
    while token:
        page = ec2.describe_volumes(Filters=flts, MaxResults=5, NextToken=token)
        seen += [v["VolumeId"] for v in page["Volumes"]]
        token = page.get("NextToken")
    ec2.delete_tags(Resources=[later])  # out of the other tests' way
    ec2.delete_volume(VolumeId=later)
    assert seen == [*volumes, later]


def test_describe_volumes_max_results_bounds(ec2: Any, twelve: tuple[str, list[str]]) -> None:
    run, volumes = twelve
    flts = [{"Name": "tag:page", "Values": [run]}]
    for too_small in (4, 0, -1):
        code, _, status = aws_error(ec2.describe_volumes, Filters=flts, MaxResults=too_small)
        assert (code, status) == ("InvalidParameterValue", 400)
    assert len(ec2.describe_volumes(Filters=flts, MaxResults=5)["Volumes"]) == 5
    # Above 500 is not an error: EC2 caps it.
    big = ec2.describe_volumes(Filters=flts, MaxResults=100000)
    assert len(big["Volumes"]) == 12 and "NextToken" not in big
    code, _, _ = aws_error(ec2.describe_volumes, VolumeIds=volumes[:1], MaxResults=5)
    assert code == "InvalidParameterCombination"


def test_describe_snapshots_paginator_and_bounds(ec2: Any) -> None:
    run = unique()
    volume_id = new_volume(ec2)
    snapshots = [
        new_snapshot(ec2, volume_id, wait=False, TagSpecifications=tag_spec("snapshot", page=run))
        for _ in range(6)
    ]
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=snapshots, WaiterConfig={"Delay": 0.1})
    flts = [{"Name": "tag:page", "Values": [run]}]
    pages = list(
        ec2.get_paginator("describe_snapshots").paginate(
            Filters=flts, OwnerIds=["self"], PaginationConfig={"PageSize": 5}
        )
    )
    assert [len(p["Snapshots"]) for p in pages] == [5, 1]
    assert [s["SnapshotId"] for p in pages for s in p["Snapshots"]] == snapshots
    assert aws_error(ec2.describe_snapshots, Filters=flts, MaxResults=4)[0] == (
        "InvalidParameterValue"
    )
    assert len(ec2.describe_snapshots(Filters=flts, MaxResults=5000)["Snapshots"]) == 6
    code, _, _ = aws_error(ec2.describe_snapshots, SnapshotIds=snapshots[:1], MaxResults=5)
    assert code == "InvalidParameterCombination"
    for snapshot_id in snapshots:
        ec2.delete_snapshot(SnapshotId=snapshot_id)
    ec2.delete_volume(VolumeId=volume_id)


def test_describe_tags_paginator_and_cap_at_1000(ec2: Any) -> None:
    run = unique()
    volumes = [new_volume(ec2, wait=False) for _ in range(21)]
    ec2.get_waiter("volume_available").wait(VolumeIds=volumes, WaiterConfig={"Delay": 0.1})
    ec2.create_tags(Resources=volumes, Tags=[{"Key": f"k{i}", "Value": run} for i in range(48)])
    flts = [{"Name": "value", "Values": [run]}]
    capped = ec2.describe_tags(Filters=flts, MaxResults=5000)
    assert len(capped["Tags"]) == 1000 and "NextToken" in capped
    rest = ec2.describe_tags(Filters=flts, MaxResults=5000, NextToken=capped["NextToken"])
    assert len(rest["Tags"]) == 21 * 48 - 1000 and "NextToken" not in rest

    pages = list(
        ec2.get_paginator("describe_tags").paginate(
            Filters=[*flts, {"Name": "key", "Values": ["k7"]}], PaginationConfig={"PageSize": 5}
        )
    )
    assert [len(p["Tags"]) for p in pages] == [5, 5, 5, 5, 1]
    assert sorted(t["ResourceId"] for p in pages for t in p["Tags"]) == sorted(volumes)
    assert aws_error(ec2.describe_tags, Filters=flts, MaxResults=4)[0] == "InvalidParameterValue"
    for volume_id in volumes:
        ec2.delete_volume(VolumeId=volume_id)


@pytest.mark.parametrize(
    ("operation", "token"),
    [
        ("describe_volumes", "not-a-token"),
        ("describe_volumes", "!!!"),
        ("describe_snapshots", "not-a-token"),
        ("describe_tags", "not-a-token"),
    ],
)
def test_bad_next_token_is_a_client_error(ec2: Any, operation: str, token: str) -> None:
    code, _, status = aws_error(getattr(ec2, operation), NextToken=token)
    assert 400 <= status < 500 and code


def test_next_token_of_another_operation_is_a_client_error(
    ec2: Any, twelve: tuple[str, list[str]]
) -> None:
    run, _ = twelve
    token = ec2.describe_volumes(Filters=[{"Name": "tag:page", "Values": [run]}], MaxResults=5)[
        "NextToken"
    ]
    for operation in (ec2.describe_snapshots, ec2.describe_tags):
        _, _, status = aws_error(operation, NextToken=token)
        assert 400 <= status < 500
