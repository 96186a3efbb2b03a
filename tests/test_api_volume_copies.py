"""CopyVolumes through boto3: a copy holds the source's bytes of the moment of the call, in the
source's zone, with its own type, size and tags; bad requests get EC2's errors."""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.api_support import DRY_RUN_MESSAGE, FAST, aws_error, new_volume, tag_spec, unique
from tests.server import ZONE, ServerProcess
from tests.volume_data import read_blocks, write_blocks

# The module's server tests run on each store; the rbd backend cannot copy at one instant.
API_COMBINATIONS = (("sqlite", "file"), ("postgresql", "file"), ("sqlite", "rbd"))

BLOCK = 512 * 1024
MISSING_VOLUME = "vol-0123456789abcdef0"


@pytest.fixture(scope="module")
def ec2(server: ServerProcess) -> Any:
    return server.client()


def copy_of(ec2: Any, source_id: str, **params: Any) -> dict[str, Any]:
    """CopyVolumes' one volume, waited for until available; as DescribeVolumes shows it."""
    (copy,) = ec2.copy_volumes(SourceVolumeId=source_id, **params)["Volumes"]
    ec2.get_waiter("volume_available").wait(VolumeIds=[copy["VolumeId"]], WaiterConfig=FAST)
    (described,) = ec2.describe_volumes(VolumeIds=[copy["VolumeId"]])["Volumes"]
    assert copy["State"] == "creating"
    assert copy["SourceVolumeId"] == source_id == described["SourceVolumeId"]
    return dict(described)


@pytest.mark.backends("file")
def test_a_copy_holds_the_bytes_of_the_call_and_reads_zeros_past_the_source(
    server: ServerProcess, ec2: Any
) -> None:
    source_id = new_volume(ec2, Size=1, VolumeType="gp3")
    before = {0: os.urandom(BLOCK), 2047: os.urandom(BLOCK)}
    write_blocks(server, source_id, before)
    (made,) = ec2.copy_volumes(
        SourceVolumeId=source_id, Size=2, TagSpecifications=tag_spec("volume", Name="copy")
    )["Volumes"]
    write_blocks(server, source_id, {0: os.urandom(BLOCK)})  # after CopyVolumes returned
    copy_id = made["VolumeId"]
    ec2.get_waiter("volume_available").wait(VolumeIds=[copy_id], WaiterConfig=FAST)
    (copy,) = ec2.describe_volumes(VolumeIds=[copy_id])["Volumes"]

    assert made["State"] == "creating" and made["SourceVolumeId"] == source_id
    assert (copy["Size"], copy["VolumeType"], copy["AvailabilityZone"]) == (2, "gp2", ZONE)
    assert copy["SourceVolumeId"] == source_id and copy["SnapshotId"] == ""
    assert copy["Tags"] == [{"Key": "Name", "Value": "copy"}]
    assert read_blocks(server, copy_id, [0, 1, 2047, 2048, 4095]) == {
        0: before[0],
        1: bytes(BLOCK),
        2047: before[2047],
        2048: bytes(BLOCK),
        4095: bytes(BLOCK),
    }
    listed = ec2.describe_volumes(VolumeIds=[source_id])["Volumes"][0]
    assert "SourceVolumeId" not in listed
    for volume_id in (copy_id, source_id):
        ec2.delete_volume(VolumeId=volume_id)


@pytest.mark.backends("file")
def test_a_copy_takes_its_own_type_and_performance_and_is_a_volume_like_any_other(
    server: ServerProcess, ec2: Any
) -> None:
    source_id = new_volume(ec2, Size=8, VolumeType="gp2")
    write_blocks(server, source_id, {7: os.urandom(BLOCK)})
    copy = copy_of(ec2, source_id, VolumeType="io2", Iops=500, MultiAttachEnabled=True)
    assert (copy["VolumeType"], copy["Iops"], copy["Size"]) == ("io2", 500, 8)
    assert copy["MultiAttachEnabled"] is True
    again = copy_of(ec2, copy["VolumeId"])  # a copy of a copy
    assert again["VolumeType"] == "gp2" and again["SourceVolumeId"] == copy["VolumeId"]
    snapshot_id = ec2.create_snapshot(VolumeId=again["VolumeId"])["SnapshotId"]
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[snapshot_id], WaiterConfig=FAST)
    restored_id = new_volume(ec2, SnapshotId=snapshot_id)
    assert read_blocks(server, restored_id, [7]) == read_blocks(server, source_id, [7])
    ec2.delete_snapshot(SnapshotId=snapshot_id)
    for volume_id in (restored_id, again["VolumeId"], copy["VolumeId"], source_id):
        ec2.delete_volume(VolumeId=volume_id)


@pytest.mark.backends("file")
def test_a_client_token_makes_one_copy_and_other_parameters_with_it_mismatch(ec2: Any) -> None:
    source_id = new_volume(ec2, Size=1)
    token = unique()
    first = ec2.copy_volumes(SourceVolumeId=source_id, ClientToken=token)["Volumes"][0]
    again = ec2.copy_volumes(SourceVolumeId=source_id, ClientToken=token)["Volumes"][0]
    assert again["VolumeId"] == first["VolumeId"]
    code, _, _ = aws_error(ec2.copy_volumes, SourceVolumeId=source_id, Size=3, ClientToken=token)
    assert code == "IdempotentParameterMismatch"
    ec2.get_waiter("volume_available").wait(VolumeIds=[first["VolumeId"]], WaiterConfig=FAST)
    for volume_id in (first["VolumeId"], source_id):
        ec2.delete_volume(VolumeId=volume_id)


@pytest.mark.backends("file")
def test_bad_copies_get_ec2_errors_and_make_no_volume(ec2: Any) -> None:
    source_id = new_volume(ec2, Size=4)
    live = [{"Name": "status", "Values": ["creating", "available", "in-use", "error"]}]
    before = {v["VolumeId"] for v in ec2.describe_volumes(Filters=live)["Volumes"]}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"SourceVolumeId": MISSING_VOLUME}, "InvalidVolume.NotFound"),
        ({"SourceVolumeId": "vol-nothex"}, "InvalidVolumeID.Malformed"),
        ({"SourceVolumeId": source_id, "Size": 3}, "InvalidParameterValue"),
        ({"SourceVolumeId": source_id, "VolumeType": "io2"}, "MissingParameter"),
        ({"SourceVolumeId": source_id, "MultiAttachEnabled": True}, "InvalidParameterCombination"),
        ({"SourceVolumeId": source_id, "Encrypted": True}, "UnsupportedOperation"),
        ({"SourceVolumeId": source_id, "DryRun": True}, "DryRunOperation"),
    ]
    for params, expected in cases:
        code, message, _ = aws_error(ec2.copy_volumes, **params)
        assert code == expected, (params, code, message)
        if expected == "DryRunOperation":
            assert message == DRY_RUN_MESSAGE
    assert {v["VolumeId"] for v in ec2.describe_volumes(Filters=live)["Volumes"]} == before
    ec2.delete_volume(VolumeId=source_id)


@pytest.mark.backends("rbd")
def test_a_backend_that_cannot_copy_at_one_instant_refuses_saying_so(ec2: Any) -> None:
    source_id = new_volume(ec2, Size=1)
    code, message, status = aws_error(ec2.copy_volumes, SourceVolumeId=source_id)
    assert (code, status) == ("UnsupportedOperation", 400)
    assert "cannot copy a volume at one instant" in message
    ec2.delete_volume(VolumeId=source_id)
