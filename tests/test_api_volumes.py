"""Volumes over the EC2 API through boto3: lifecycles, idempotency, validation, errors."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.api_support import (
    FAST,
    aws_error,
    new_snapshot,
    new_volume,
    poll,
    tag_spec,
    unique,
    volume_state,
)
from tests.server import ZONE, ServerProcess

# The module's server tests run on each store and storage backend.
API_COMBINATIONS = (
    ("sqlite", "file"),
    ("postgresql", "file"),
    ("sqlite", "rbd"),
    ("postgresql", "rbd"),
)

MISSING_VOLUME = "vol-0123456789abcdef0"
MISSING_SNAPSHOT = "snap-0123456789abcdef0"


@pytest.fixture(scope="module")
def ec2(server: ServerProcess) -> Any:
    """One client for the module: building a boto3 client costs tens of milliseconds."""
    return server.client()


def states_until_not_found(ec2: Any, volume_id: str) -> list[str]:
    """The states DescribeVolumes shows until it answers InvalidVolume.NotFound."""
    seen: list[str] = []

    def gone() -> bool | None:
        try:
            seen.append(volume_state(ec2, volume_id))
        except ec2.exceptions.ClientError as exc:
            assert exc.response["Error"]["Code"] == "InvalidVolume.NotFound"
            return True
        return None

    poll(gone, timeout=20, every=0.2)
    return seen


# ---- lifecycles -----------------------------------------------------------------------------


def test_client_lifecycle_create_snapshot_restore_delete(ec2: Any) -> None:
    run, token = unique(), unique()
    created = ec2.create_volume(
        AvailabilityZone=ZONE,
        Size=2,
        VolumeType="gp3",
        TagSpecifications=tag_spec("volume", run=run),
        ClientToken=token,
    )
    volume_id = created["VolumeId"]
    assert created["State"] == "creating"
    assert created["Size"] == 2 and created["VolumeType"] == "gp3"
    assert created["Iops"] == 3000 and created["Throughput"] == 125
    assert created["Tags"] == [{"Key": "run", "Value": run}]
    ec2.get_waiter("volume_available").wait(VolumeIds=[volume_id], WaiterConfig=FAST)

    (described,) = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"]
    assert described["State"] == "available"
    assert described["AvailabilityZone"] == ZONE
    assert described["SnapshotId"] == ""
    assert described["Attachments"] == []
    assert described["Encrypted"] is False
    assert described["CreateTime"] == created["CreateTime"]

    snapshot = ec2.create_snapshot(VolumeId=volume_id, Description=f"of {run}")
    assert snapshot["State"] == "pending" and snapshot["VolumeSize"] == 2
    ec2.get_waiter("snapshot_completed").wait(
        SnapshotIds=[snapshot["SnapshotId"]], WaiterConfig=FAST
    )

    restored_id = new_volume(ec2, SnapshotId=snapshot["SnapshotId"], VolumeType="gp2")
    (restored,) = ec2.describe_volumes(VolumeIds=[restored_id])["Volumes"]
    assert restored["SnapshotId"] == snapshot["SnapshotId"]
    assert restored["Size"] == 2 and restored["VolumeType"] == "gp2"

    for vid in (volume_id, restored_id):
        ec2.delete_volume(VolumeId=vid)
    ec2.get_waiter("volume_deleted").wait(VolumeIds=[volume_id, restored_id], WaiterConfig=FAST)
    # A deleted volume no longer takes requests; DescribeVolumes shows it `deleted` for a
    # short while, then not at all.
    assert aws_error(ec2.delete_volume, VolumeId=volume_id)[0] == "InvalidVolume.NotFound"
    assert aws_error(ec2.create_snapshot, VolumeId=volume_id)[0] == "InvalidVolume.NotFound"
    assert set(states_until_not_found(ec2, volume_id)) <= {"deleted"}
    # Its ClientToken stays spent: a late retry must not create a second volume.
    code, message, _ = aws_error(
        ec2.create_volume,
        AvailabilityZone=ZONE,
        Size=2,
        VolumeType="gp3",
        TagSpecifications=tag_spec("volume", run=run),
        ClientToken=token,
    )
    assert code == "IdempotentParameterMismatch" and "deleted" in message
    # The snapshot outlives its source volume.
    (kept,) = ec2.describe_snapshots(SnapshotIds=[snapshot["SnapshotId"]])["Snapshots"]
    assert kept["State"] == "completed" and kept["VolumeId"] == volume_id
    ec2.delete_snapshot(SnapshotId=snapshot["SnapshotId"])


def test_resource_lifecycle_create_snapshot_restore_delete(server: ServerProcess) -> None:
    ec2 = server.resource()
    run = unique()
    volume = ec2.create_volume(
        AvailabilityZone=ZONE, Size=1, TagSpecifications=tag_spec("volume", run=run)
    )
    volume.meta.client.get_waiter("volume_available").wait(VolumeIds=[volume.id], WaiterConfig=FAST)
    volume.reload()
    assert volume.state == "available" and volume.size == 1 and volume.volume_type == "gp2"
    assert volume.tags == [{"Key": "run", "Value": run}]

    volume.create_tags(Tags=[{"Key": "stage", "Value": "one"}])
    found = list(ec2.volumes.filter(Filters=[{"Name": "tag:run", "Values": [run]}]))
    assert [v.id for v in found] == [volume.id]

    snapshot = volume.create_snapshot(Description=run)
    snapshot.wait_until_completed(WaiterConfig=FAST)
    snapshot.reload()
    assert snapshot.state == "completed" and snapshot.progress == "100%"
    assert snapshot.volume_id == volume.id and snapshot.description == run
    assert [s.id for s in volume.snapshots.all()] == [snapshot.id]

    restored = ec2.create_volume(AvailabilityZone=ZONE, SnapshotId=snapshot.id)
    restored.meta.client.get_waiter("volume_available").wait(
        VolumeIds=[restored.id], WaiterConfig=FAST
    )
    restored.reload()
    assert restored.snapshot_id == snapshot.id and restored.size == 1

    restored.delete()
    volume.delete()
    snapshot.delete()
    volume.meta.client.get_waiter("volume_deleted").wait(
        VolumeIds=[volume.id, restored.id], WaiterConfig=FAST
    )
    left = ec2.volumes.filter(Filters=[{"Name": "tag:run", "Values": [run]}])
    assert {v.state for v in left} <= {"deleted"}


def test_sc1_volume_of_16384_gib_becomes_available(ec2: Any) -> None:
    volume_id = new_volume(ec2, Size=16384, VolumeType="sc1")
    (volume,) = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"]
    ec2.delete_volume(VolumeId=volume_id)
    assert volume["Size"] == 16384 and volume["VolumeType"] == "sc1"


# How long a large volume takes to become available is measured by the benchmark (bench/, its
# data section: 16 TiB in under a second), not here. What makes it quick is checked here: the
# file backend makes sparse files and writes none of the volume's bytes.
@pytest.mark.backends("file")
def test_gp3_volume_of_65536_gib_is_available_without_its_bytes_written(
    server: ServerProcess, ec2: Any
) -> None:
    volume_id = new_volume(ec2, Size=65536, VolumeType="gp3")
    segments = list((server.data_dir / "storage" / "volumes" / volume_id).glob("seg-*"))
    apparent = sum(segment.stat().st_size for segment in segments)
    allocated = sum(segment.stat().st_blocks * 512 for segment in segments)
    (volume,) = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"]
    ec2.delete_volume(VolumeId=volume_id)
    assert volume["Size"] == 65536 and volume["State"] == "available"
    assert apparent == 65536 * 1024**3
    assert allocated < 1024**2


def test_create_volume_by_availability_zone_id(ec2: Any) -> None:
    zone = ec2.describe_availability_zones(ZoneNames=[ZONE])["AvailabilityZones"][0]
    volume_id = new_volume(ec2, AvailabilityZoneId=zone["ZoneId"])
    (volume,) = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"]
    ec2.delete_volume(VolumeId=volume_id)
    assert volume["AvailabilityZone"] == ZONE
    assert volume["AvailabilityZoneId"] == zone["ZoneId"]


def test_concurrent_creates_and_deletes_all_succeed(ec2: Any) -> None:
    run = unique()
    with ThreadPoolExecutor(8) as pool:
        created = list(
            pool.map(
                lambda _: new_volume(ec2, TagSpecifications=tag_spec("volume", run=run)), range(24)
            )
        )
        assert len(set(created)) == 24
        list(pool.map(lambda vid: ec2.delete_volume(VolumeId=vid), created))
    ec2.get_waiter("volume_deleted").wait(VolumeIds=created, WaiterConfig=FAST)


# ---- ClientToken idempotency ----------------------------------------------------------------


def test_same_client_token_and_parameters_return_the_same_volume(ec2: Any) -> None:
    token = unique()
    first = ec2.create_volume(AvailabilityZone=ZONE, Size=3, ClientToken=token)
    second = ec2.create_volume(AvailabilityZone=ZONE, Size=3, ClientToken=token)
    assert second["VolumeId"] == first["VolumeId"]
    assert second["CreateTime"] == first["CreateTime"]
    ec2.get_waiter("volume_available").wait(VolumeIds=[first["VolumeId"]], WaiterConfig=FAST)
    third = ec2.create_volume(AvailabilityZone=ZONE, Size=3, ClientToken=token)
    assert (third["VolumeId"], third["State"]) == (first["VolumeId"], "available")
    ec2.delete_volume(VolumeId=first["VolumeId"])


def test_same_client_token_with_other_parameters_is_idempotent_parameter_mismatch(
    ec2: Any,
) -> None:
    token = unique()
    volume_id = new_volume(ec2, Size=3, ClientToken=token)
    for changed in ({"Size": 4}, {"Size": 3, "VolumeType": "gp3"}):
        code, message, status = aws_error(
            ec2.create_volume, AvailabilityZone=ZONE, ClientToken=token, **changed
        )
        assert (code, status) == ("IdempotentParameterMismatch", 400)
        assert token in message
    ec2.delete_volume(VolumeId=volume_id)


def test_client_token_of_a_deleted_volume_is_idempotent_parameter_mismatch(ec2: Any) -> None:
    token = unique()
    volume_id = new_volume(ec2, Size=3, ClientToken=token)
    ec2.delete_volume(VolumeId=volume_id)
    ec2.get_waiter("volume_deleted").wait(VolumeIds=[volume_id], WaiterConfig=FAST)
    code, message, _ = aws_error(
        ec2.create_volume, AvailabilityZone=ZONE, Size=3, ClientToken=token
    )
    assert code == "IdempotentParameterMismatch"
    assert "deleted" in message


def test_a_retry_gets_its_volume_though_the_snapshot_it_named_is_deleted_since(ec2: Any) -> None:
    source = new_volume(ec2, Size=1)
    snapshot_id = new_snapshot(ec2, source)
    token = unique()
    restored = new_volume(ec2, SnapshotId=snapshot_id, ClientToken=token)
    ec2.delete_snapshot(SnapshotId=snapshot_id)
    retried = ec2.create_volume(AvailabilityZone=ZONE, SnapshotId=snapshot_id, ClientToken=token)
    assert (retried["VolumeId"], retried["State"]) == (restored, "available")
    # Without the token the same request is refused: the snapshot is gone.
    code, _, _ = aws_error(ec2.create_volume, AvailabilityZone=ZONE, SnapshotId=snapshot_id)
    assert code == "InvalidSnapshot.NotFound"
    for volume_id in (source, restored):
        ec2.delete_volume(VolumeId=volume_id)


def test_client_token_over_64_characters_is_invalid(ec2: Any) -> None:
    code, _, _ = aws_error(ec2.create_volume, AvailabilityZone=ZONE, Size=1, ClientToken="t" * 65)
    assert code == "InvalidParameterValue"


def test_identical_requests_without_a_token_create_two_volumes(ec2: Any) -> None:
    # botocore fills in a fresh ClientToken for each call; the server must not merge them.
    first = new_volume(ec2, Size=3)
    second = new_volume(ec2, Size=3)
    ec2.delete_volume(VolumeId=first)
    ec2.delete_volume(VolumeId=second)
    assert first != second


# ---- validation of types, sizes, IOPS and throughput ----------------------------------------

VALID = [
    pytest.param({"VolumeType": "standard", "Size": 1}, None, None, id="standard-min"),
    pytest.param({"VolumeType": "standard", "Size": 1024}, None, None, id="standard-max"),
    pytest.param({"VolumeType": "gp2", "Size": 1}, 100, None, id="gp2-min-baseline-100"),
    pytest.param({"VolumeType": "gp2", "Size": 16384}, 16000, None, id="gp2-max-16000"),
    pytest.param({"VolumeType": "gp2", "Size": 1000}, 3000, None, id="gp2-3-per-gib"),
    pytest.param({"VolumeType": "gp3", "Size": 1}, 3000, 125, id="gp3-min-baseline"),
    pytest.param(
        {"VolumeType": "gp3", "Size": 160, "Iops": 80000, "Throughput": 2000},
        80000,
        2000,
        id="gp3-max-iops-throughput",
    ),
    pytest.param({"VolumeType": "gp3", "Size": 65536}, 3000, 125, id="gp3-max-size"),
    pytest.param({"VolumeType": "io1", "Size": 4, "Iops": 100}, 100, None, id="io1-min"),
    pytest.param({"VolumeType": "io1", "Size": 4, "Iops": 200}, 200, None, id="io1-50-per-gib"),
    pytest.param({"VolumeType": "io1", "Size": 16384, "Iops": 64000}, 64000, None, id="io1-max"),
    pytest.param({"VolumeType": "io2", "Size": 4, "Iops": 4000}, 4000, None, id="io2-1000-per-gib"),
    pytest.param({"VolumeType": "io2", "Size": 65536, "Iops": 256000}, 256000, None, id="io2-max"),
    pytest.param({"VolumeType": "st1", "Size": 125}, None, None, id="st1-min"),
    pytest.param({"VolumeType": "st1", "Size": 16384}, None, None, id="st1-max"),
    pytest.param({"VolumeType": "sc1", "Size": 125}, None, None, id="sc1-min"),
    pytest.param({"VolumeType": "sc1", "Size": 16384}, None, None, id="sc1-max"),
]


@pytest.mark.parametrize(("params", "iops", "throughput"), VALID)
def test_volume_type_limits_accept_the_documented_ranges(
    ec2: Any, params: dict[str, Any], iops: int | None, throughput: int | None
) -> None:
    created = ec2.create_volume(AvailabilityZone=ZONE, **params)
    ec2.get_waiter("volume_available").wait(VolumeIds=[created["VolumeId"]], WaiterConfig=FAST)
    ec2.delete_volume(VolumeId=created["VolumeId"])
    assert created["Size"] == params["Size"]
    assert created["VolumeType"] == params["VolumeType"]
    assert created.get("Iops") == iops
    assert created.get("Throughput") == throughput


INVALID = [
    pytest.param({"VolumeType": "sc2", "Size": 500}, "InvalidParameterValue", id="type-sc2"),
    pytest.param({"VolumeType": "GP2", "Size": 1}, "InvalidParameterValue", id="type-case"),
    pytest.param({"VolumeType": "standard", "Size": 1025}, "InvalidParameterValue", id="std-big"),
    pytest.param({"VolumeType": "gp2", "Size": 0}, "InvalidParameterValue", id="gp2-zero"),
    pytest.param({"VolumeType": "gp2", "Size": -1}, "InvalidParameterValue", id="gp2-negative"),
    pytest.param({"VolumeType": "gp2", "Size": 16385}, "InvalidParameterValue", id="gp2-big"),
    pytest.param({"VolumeType": "gp3", "Size": 65537}, "InvalidParameterValue", id="gp3-big"),
    pytest.param(
        {"VolumeType": "gp3", "Size": 100, "Iops": 2999}, "InvalidParameterValue", id="gp3-iops-low"
    ),
    pytest.param(
        {"VolumeType": "gp3", "Size": 1000, "Iops": 80001},
        "InvalidParameterValue",
        id="gp3-iops-high",
    ),
    pytest.param(
        {"VolumeType": "gp3", "Size": 6, "Iops": 3001},
        "InvalidParameterValue",
        id="gp3-iops-over-500-per-gib",
    ),
    pytest.param(
        {"VolumeType": "gp3", "Size": 100, "Throughput": 124},
        "InvalidParameterValue",
        id="gp3-throughput-low",
    ),
    pytest.param(
        {"VolumeType": "gp3", "Size": 1000, "Iops": 16000, "Throughput": 2001},
        "InvalidParameterValue",
        id="gp3-throughput-high",
    ),
    pytest.param(
        {"VolumeType": "gp3", "Size": 100, "Iops": 3000, "Throughput": 751},
        "InvalidParameterValue",
        id="gp3-throughput-over-quarter-iops",
    ),
    pytest.param(
        {"VolumeType": "io1", "Size": 3, "Iops": 100}, "InvalidParameterValue", id="io1-small"
    ),
    pytest.param(
        {"VolumeType": "io1", "Size": 16385, "Iops": 100}, "InvalidParameterValue", id="io1-big"
    ),
    pytest.param(
        {"VolumeType": "io1", "Size": 10, "Iops": 99}, "InvalidParameterValue", id="io1-iops-low"
    ),
    pytest.param(
        {"VolumeType": "io1", "Size": 4, "Iops": 201},
        "InvalidParameterValue",
        id="io1-over-50-per-gib",
    ),
    pytest.param(
        {"VolumeType": "io1", "Size": 16384, "Iops": 64001},
        "InvalidParameterValue",
        id="io1-iops-high",
    ),
    pytest.param(
        {"VolumeType": "io2", "Size": 4, "Iops": 4001},
        "InvalidParameterValue",
        id="io2-over-1000-per-gib",
    ),
    pytest.param(
        {"VolumeType": "io2", "Size": 65536, "Iops": 256001},
        "InvalidParameterValue",
        id="io2-iops-high",
    ),
    pytest.param(
        {"VolumeType": "io2", "Size": 65537, "Iops": 100}, "InvalidParameterValue", id="io2-big"
    ),
    pytest.param({"VolumeType": "st1", "Size": 124}, "InvalidParameterValue", id="st1-small"),
    pytest.param({"VolumeType": "st1", "Size": 16385}, "InvalidParameterValue", id="st1-big"),
    pytest.param({"VolumeType": "sc1", "Size": 124}, "InvalidParameterValue", id="sc1-small"),
    pytest.param({"VolumeType": "sc1", "Size": 16385}, "InvalidParameterValue", id="sc1-big"),
    pytest.param(
        {"Size": 1, "Iops": 3000}, "InvalidParameterCombination", id="iops-on-default-gp2"
    ),
    pytest.param(
        {"VolumeType": "gp2", "Size": 10, "Iops": 100},
        "InvalidParameterCombination",
        id="iops-on-gp2",
    ),
    pytest.param(
        {"VolumeType": "st1", "Size": 500, "Iops": 500},
        "InvalidParameterCombination",
        id="iops-on-st1",
    ),
    pytest.param(
        {"VolumeType": "sc1", "Size": 500, "Iops": 500},
        "InvalidParameterCombination",
        id="iops-on-sc1",
    ),
    pytest.param(
        {"VolumeType": "standard", "Size": 5, "Iops": 100},
        "InvalidParameterCombination",
        id="iops-on-standard",
    ),
    pytest.param(
        {"VolumeType": "gp2", "Size": 10, "Throughput": 125},
        "InvalidParameterCombination",
        id="throughput-on-gp2",
    ),
    pytest.param(
        {"VolumeType": "io2", "Size": 10, "Iops": 1000, "Throughput": 125},
        "InvalidParameterCombination",
        id="throughput-on-io2",
    ),
    pytest.param({"VolumeType": "io1", "Size": 10}, "MissingParameter", id="io1-without-iops"),
    pytest.param({"VolumeType": "io2", "Size": 10}, "MissingParameter", id="io2-without-iops"),
    pytest.param(
        {"Size": 10, "MultiAttachEnabled": True},
        "InvalidParameterCombination",
        id="multi-attach-on-gp2",
    ),
    pytest.param(
        {"Size": 10, "KmsKeyId": "alias/aws/ebs"},
        "InvalidParameterDependency",
        id="kms-key-without-encrypted",
    ),
    pytest.param({"VolumeType": "gp2"}, "MissingParameter", id="neither-size-nor-snapshot"),
]


@pytest.mark.parametrize(("params", "code"), INVALID)
def test_invalid_volume_parameters_are_refused_with_the_aws_error(
    ec2: Any, params: dict[str, Any], code: str
) -> None:
    run = unique()
    got, message, status = aws_error(
        ec2.create_volume,
        AvailabilityZone=ZONE,
        TagSpecifications=tag_spec("volume", run=run),
        **params,
    )
    assert (got, status) == (code, 400), message
    assert ec2.describe_volumes(Filters=[{"Name": "tag:run", "Values": [run]}])["Volumes"] == []


@pytest.mark.backends("file")  # LUKS in the volume's files; the rbd backend cannot encrypt
def test_encrypted_volume_is_created_encrypted_under_a_key_arn(ec2: Any) -> None:
    # tests/test_api_encryption.py covers encryption in depth.
    volume = ec2.create_volume(AvailabilityZone=ZONE, Size=1, Encrypted=True)
    assert volume["Encrypted"] is True
    assert volume["KmsKeyId"].startswith("arn:aws:kms:")


@pytest.mark.backends("rbd")
def test_encrypted_volume_on_a_host_that_cannot_encrypt_is_unsupported_operation(
    ec2: Any,
) -> None:
    code, message, status = aws_error(
        ec2.create_volume, AvailabilityZone=ZONE, Size=1, Encrypted=True
    )
    assert (code, status) == ("UnsupportedOperation", 400)
    assert "cannot encrypt at rest" in message


def test_missing_availability_zone_is_missing_parameter(ec2: Any) -> None:
    # botocore does not require AvailabilityZone (AvailabilityZoneId may stand in for it).
    assert aws_error(ec2.create_volume, Size=1)[0] == "MissingParameter"


def test_zone_and_zone_id_together_are_invalid_parameter_combination(ec2: Any) -> None:
    code, _, _ = aws_error(
        ec2.create_volume, AvailabilityZone=ZONE, AvailabilityZoneId="use1-az1", Size=1
    )
    assert code == "InvalidParameterCombination"


@pytest.mark.parametrize("zone", ["us-east-1z", "eu-west-1a", ""])
def test_unknown_zone_is_invalid_zone_not_found(ec2: Any, zone: str) -> None:
    code, message, status = aws_error(ec2.create_volume, AvailabilityZone=zone, Size=1)
    assert (code, status) == ("InvalidZone.NotFound", 400)
    assert zone in message


def test_unknown_zone_id_is_invalid_zone_not_found(ec2: Any) -> None:
    code, _, _ = aws_error(ec2.create_volume, AvailabilityZoneId="use1-az9", Size=1)
    assert code == "InvalidZone.NotFound"


# ---- volumes from snapshots -----------------------------------------------------------------


@pytest.fixture(scope="module")
def snapshot_of_2_gib(server: ServerProcess) -> str:
    ec2 = server.client()
    volume_id = new_volume(ec2, Size=2)
    snapshot_id = new_snapshot(ec2, volume_id)
    ec2.delete_volume(VolumeId=volume_id)
    return snapshot_id


def test_restore_takes_the_snapshot_size_by_default_and_may_grow(
    ec2: Any, snapshot_of_2_gib: str
) -> None:
    same = ec2.create_volume(AvailabilityZone=ZONE, SnapshotId=snapshot_of_2_gib)
    bigger = ec2.create_volume(AvailabilityZone=ZONE, SnapshotId=snapshot_of_2_gib, Size=5)
    ec2.get_waiter("volume_available").wait(
        VolumeIds=[same["VolumeId"], bigger["VolumeId"]], WaiterConfig=FAST
    )
    for volume in (same, bigger):
        ec2.delete_volume(VolumeId=volume["VolumeId"])
    assert (same["Size"], same["SnapshotId"]) == (2, snapshot_of_2_gib)
    assert (bigger["Size"], bigger["SnapshotId"]) == (5, snapshot_of_2_gib)


def test_restore_smaller_than_the_snapshot_is_invalid_parameter_value(
    ec2: Any, snapshot_of_2_gib: str
) -> None:
    code, message, _ = aws_error(
        ec2.create_volume, AvailabilityZone=ZONE, SnapshotId=snapshot_of_2_gib, Size=1
    )
    assert code == "InvalidParameterValue"
    assert snapshot_of_2_gib in message


def test_restore_from_a_missing_snapshot_is_invalid_snapshot_not_found(ec2: Any) -> None:
    code, message, _ = aws_error(
        ec2.create_volume, AvailabilityZone=ZONE, SnapshotId=MISSING_SNAPSHOT
    )
    assert code == "InvalidSnapshot.NotFound"
    assert MISSING_SNAPSHOT in message


def test_restore_from_a_malformed_snapshot_id_is_malformed(ec2: Any) -> None:
    code, _, _ = aws_error(ec2.create_volume, AvailabilityZone=ZONE, SnapshotId="snap-xyz")
    assert code == "InvalidSnapshotID.Malformed"


# ---- tags at creation -----------------------------------------------------------------------


def test_tag_specification_for_another_resource_type_is_invalid(ec2: Any) -> None:
    for resource_type in ("snapshot", "instance", "nonsense"):
        code, message, _ = aws_error(
            ec2.create_volume,
            AvailabilityZone=ZONE,
            Size=1,
            TagSpecifications=tag_spec(resource_type, a="b"),
        )
        assert code == "InvalidParameterValue"
        assert resource_type in message


def test_tag_specification_tags_are_on_the_new_volume(ec2: Any) -> None:
    run = unique()
    volume_id = new_volume(ec2, TagSpecifications=tag_spec("volume", run=run, Name="data", e=""))
    (volume,) = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"]
    ec2.delete_volume(VolumeId=volume_id)
    assert {t["Key"]: t["Value"] for t in volume["Tags"]} == {"run": run, "Name": "data", "e": ""}


def test_volume_without_tags_has_no_tags_member(ec2: Any) -> None:
    volume_id = new_volume(ec2)
    (volume,) = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"]
    ec2.delete_volume(VolumeId=volume_id)
    assert "Tags" not in volume


# ---- errors naming volumes ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operation", "params"),
    [
        ("describe_volumes", {"VolumeIds": [MISSING_VOLUME]}),
        ("delete_volume", {"VolumeId": MISSING_VOLUME}),
        ("create_snapshot", {"VolumeId": MISSING_VOLUME}),
        ("create_tags", {"Resources": [MISSING_VOLUME], "Tags": [{"Key": "k", "Value": "v"}]}),
    ],
)
def test_missing_volume_is_invalid_volume_not_found(
    ec2: Any, operation: str, params: dict[str, Any]
) -> None:
    code, message, status = aws_error(getattr(ec2, operation), **params)
    assert (code, status) == ("InvalidVolume.NotFound", 400)
    assert MISSING_VOLUME in message


@pytest.mark.parametrize("bad_id", ["vol-123", "vol-0123456789ABCDEF0", "vol-", "volume-1234abcd"])
def test_malformed_volume_id_is_invalid_volume_id_malformed(ec2: Any, bad_id: str) -> None:
    for operation, params in (
        (ec2.describe_volumes, {"VolumeIds": [bad_id]}),
        (ec2.delete_volume, {"VolumeId": bad_id}),
        (ec2.create_snapshot, {"VolumeId": bad_id}),
    ):
        code, _, status = aws_error(operation, **params)
        assert (code, status) == ("InvalidVolumeID.Malformed", 400)


def test_describe_volumes_names_every_missing_id(ec2: Any) -> None:
    volume_id = new_volume(ec2)
    other = "vol-0123456789abcdef1"
    code, message, _ = aws_error(ec2.describe_volumes, VolumeIds=[volume_id, MISSING_VOLUME, other])
    ec2.delete_volume(VolumeId=volume_id)
    assert code == "InvalidVolume.NotFound"
    assert MISSING_VOLUME in message and other in message and volume_id not in message


def test_dry_run_create_volume_creates_nothing(ec2: Any) -> None:
    run = unique()
    code, message, status = aws_error(
        ec2.create_volume,
        AvailabilityZone=ZONE,
        Size=1,
        DryRun=True,
        TagSpecifications=tag_spec("volume", run=run),
    )
    assert (code, message, status) == (
        "DryRunOperation",
        "Request would have succeeded, but DryRun flag is set.",
        412,
    )
    assert ec2.describe_volumes(Filters=[{"Name": "tag:run", "Values": [run]}])["Volumes"] == []


def test_dry_run_delete_volume_keeps_it(ec2: Any) -> None:
    volume_id = new_volume(ec2)
    code, _, status = aws_error(ec2.delete_volume, VolumeId=volume_id, DryRun=True)
    assert (code, status) == ("DryRunOperation", 412)
    assert volume_state(ec2, volume_id) == "available"
    ec2.delete_volume(VolumeId=volume_id)
