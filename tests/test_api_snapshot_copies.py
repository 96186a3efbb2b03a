"""CopySnapshot through boto3 and the AWS CLI against a real server with two regions: within a
region and across regions, data byte-identical on restore, no block stored twice, the source's
deletion harmless to the copy, tags, waiters, a snapshot shared by another account, errors."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.config import Config as BotoConfig

from tests.api_support import (
    DRY_RUN_MESSAGE,
    FAST,
    aws_error,
    block_path,
    new_snapshot,
    new_volume,
    poll,
    tag_spec,
    unique,
)
from tests.block_support import stored_blocks
from tests.server import DEFAULT_ACCOUNT, REGION, TEST_CONFIG, ZONE, ServerProcess
from tests.volume_data import read_blocks, volume_file, write_blocks

BLOCK = 512 * 1024
REGION_B = "eu-west-1"
ZONE_B = "eu-west-1a"
COPY_VOLUME_ID = "vol-ffffffff"
MISSING_SNAPSHOT = "snap-0123456789abcdef0"
AWS = Path(sys.executable).with_name("aws")
CONFIG = (
    TEST_CONFIG
    + f"""
[region {REGION}]
zones = {ZONE}

[region {REGION_B}]
zones = {ZONE_B}
"""
)


@dataclass
class Lab:
    server: ServerProcess
    a: Any  # a client of the default account for region A (us-east-1)
    b: Any  # the same account, region B (eu-west-1)
    friend_id: str
    friend: Any  # another account, region A

    def write(self, volume_id: str, blocks: dict[int, bytes]) -> None:
        write_blocks(self.server, volume_id, blocks)

    def digest(self, volume_id: str) -> str:
        """SHA-256 of a volume's whole file (holes read as zeros)."""
        sha = hashlib.sha256()
        with volume_file(self.server, volume_id) as path, path.open("rb") as handle:
            while chunk := handle.read(8 * 1024 * 1024):
                sha.update(chunk)
        return sha.hexdigest()

    def block_files(self) -> dict[str, int]:
        """Every block of the block store: digest hex -> size."""
        return stored_blocks(self.server.data_dir / "blocks")

    def source(self, blocks: dict[int, bytes], **params: Any) -> tuple[str, str]:
        """A volume in region A holding ``blocks`` and a completed snapshot of it."""
        volume_id = new_volume(self.a)
        self.write(volume_id, blocks)
        return volume_id, new_snapshot(self.a, volume_id, **params)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    server = ServerProcess(tmp_path_factory.mktemp("copies") / "data", CONFIG)
    server.start()
    try:
        friend_id, key = server.new_account()
        once = BotoConfig(retries={"total_max_attempts": 1})
        yield Lab(
            server,
            server.client(),
            server.client(region_name=REGION_B),
            friend_id,
            server.client(key=key, config=once),
        )
    finally:
        server.stop()


def describe(ec2: Any, snapshot_id: str) -> dict[str, Any]:
    (snapshot,) = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
    return dict(snapshot)


def wait_completed(ec2: Any, *snapshot_ids: str) -> None:
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=list(snapshot_ids), WaiterConfig=FAST)


def test_copy_within_a_region_goes_pending_to_completed_as_a_copy(lab: Lab) -> None:
    volume_id, source_id = lab.source({0: os.urandom(BLOCK), 7: os.urandom(BLOCK)})
    answer = lab.a.copy_snapshot(SourceRegion=REGION, SourceSnapshotId=source_id)
    copy_id = answer["SnapshotId"]
    assert copy_id.startswith("snap-") and copy_id != source_id
    assert "Tags" not in answer
    first = describe(lab.a, copy_id)
    assert first["State"] in ("pending", "completed")
    wait_completed(lab.a, copy_id)
    copy, source = describe(lab.a, copy_id), describe(lab.a, source_id)
    assert copy["State"] == "completed" and copy["Progress"] == "100%"
    assert copy["VolumeId"] == COPY_VOLUME_ID
    assert copy["VolumeSize"] == source["VolumeSize"] == 1
    assert copy["OwnerId"] == DEFAULT_ACCOUNT
    assert copy["Description"] == f"[Copied {source_id} from {REGION}]"
    assert copy["Encrypted"] is False
    assert copy["FullSnapshotSizeInBytes"] == source["FullSnapshotSizeInBytes"] == 2 * BLOCK
    assert copy["StartTime"] <= copy["CompletionTime"]
    lab.a.delete_volume(VolumeId=volume_id)


def test_copy_across_regions_lives_in_the_destination_region_only(lab: Lab) -> None:
    run = unique()
    volume_id, source_id = lab.source({3: os.urandom(BLOCK)}, Description=f"nightly {run}")
    copy_id = lab.b.copy_snapshot(
        SourceRegion=REGION, SourceSnapshotId=source_id, Description=f"to B {run}"
    )["SnapshotId"]
    wait_completed(lab.b, copy_id)
    copy = describe(lab.b, copy_id)
    assert (copy["State"], copy["Description"]) == ("completed", f"to B {run}")
    assert aws_error(lab.a.describe_snapshots, SnapshotIds=[copy_id])[0] == (
        "InvalidSnapshot.NotFound"
    )
    assert aws_error(lab.b.describe_snapshots, SnapshotIds=[source_id])[0] == (
        "InvalidSnapshot.NotFound"
    )
    # Back again: region A copies the copy out of region B.
    back_id = lab.a.copy_snapshot(SourceRegion=REGION_B, SourceSnapshotId=copy_id)["SnapshotId"]
    wait_completed(lab.a, back_id)
    expected = f"[Copied {copy_id} from {REGION_B}] to B {run}"
    assert describe(lab.a, back_id)["Description"] == expected
    lab.a.delete_volume(VolumeId=volume_id)


def test_volume_restored_from_a_cross_region_copy_is_byte_identical_to_the_source(
    lab: Lab,
) -> None:
    blocks = {i * 37: os.urandom(BLOCK) for i in range(50)}
    blocks[1] = bytes(BLOCK // 2) + os.urandom(BLOCK // 2)
    volume_id, source_id = lab.source(blocks)
    copy_id = lab.b.copy_snapshot(SourceRegion=REGION, SourceSnapshotId=source_id)["SnapshotId"]
    wait_completed(lab.b, copy_id)
    restored_id = new_volume(lab.b, SnapshotId=copy_id, AvailabilityZone=ZONE_B)
    assert lab.digest(restored_id) == lab.digest(volume_id)
    lab.b.delete_volume(VolumeId=restored_id)
    lab.a.delete_volume(VolumeId=volume_id)


def test_copy_stores_no_new_block_and_survives_the_deletion_of_its_source(lab: Lab) -> None:
    blocks = {i * 11: os.urandom(BLOCK) for i in range(30)}
    volume_id, source_id = lab.source(blocks)
    before = lab.block_files()
    assert all(block_path(lab.server.data_dir, data).exists() for data in blocks.values())
    copy_id = lab.b.copy_snapshot(SourceRegion=REGION, SourceSnapshotId=source_id)["SnapshotId"]
    wait_completed(lab.b, copy_id)
    after = lab.block_files()
    assert set(after) - set(before) == set()  # nothing new was written
    assert sum(after.values()) <= sum(before.values())

    lab.a.delete_snapshot(SnapshotId=source_id)
    poll(
        lambda: (
            True
            if aws_error(lab.a.describe_snapshots, SnapshotIds=[source_id])[0]
            == "InvalidSnapshot.NotFound"
            else None
        )
    )
    lab.a.delete_volume(VolumeId=volume_id)
    # The source's manifest is gone; every block the copy names is still stored.
    assert all(block_path(lab.server.data_dir, data).exists() for data in blocks.values())
    restored_id = new_volume(lab.b, SnapshotId=copy_id, AvailabilityZone=ZONE_B)
    assert read_blocks(lab.server, restored_id, list(blocks)) == blocks
    lab.b.delete_volume(VolumeId=restored_id)
    # The copy was the last to name them: deleting it frees the blocks.
    lab.b.delete_snapshot(SnapshotId=copy_id)
    poll(
        lambda: (
            True
            if not any(block_path(lab.server.data_dir, data).exists() for data in blocks.values())
            else None
        )
    )


def test_source_deleted_right_after_the_copy_request_leaves_the_copy_whole(lab: Lab) -> None:
    blocks = {i * 13: os.urandom(BLOCK) for i in range(20)}
    volume_id, source_id = lab.source(blocks)
    copy_id = lab.a.copy_snapshot(SourceRegion=REGION, SourceSnapshotId=source_id)["SnapshotId"]
    lab.a.delete_snapshot(SnapshotId=source_id)
    wait_completed(lab.a, copy_id)
    restored_id = new_volume(lab.a, SnapshotId=copy_id)
    assert lab.digest(restored_id) == lab.digest(volume_id)
    for vid in (restored_id, volume_id):
        lab.a.delete_volume(VolumeId=vid)
    lab.a.delete_snapshot(SnapshotId=copy_id)


def test_copy_takes_its_tags_from_tag_specifications_not_from_the_source(lab: Lab) -> None:
    run = unique()
    volume_id, source_id = lab.source(
        {}, TagSpecifications=tag_spec("snapshot", origin="source", run=run)
    )
    answer = lab.a.copy_snapshot(
        SourceRegion=REGION,
        SourceSnapshotId=source_id,
        TagSpecifications=tag_spec("snapshot", kind="copy", run=run),
    )
    assert sorted(answer["Tags"], key=lambda t: t["Key"]) == [
        {"Key": "kind", "Value": "copy"},
        {"Key": "run", "Value": run},
    ]
    wait_completed(lab.a, answer["SnapshotId"])
    found = lab.a.describe_snapshots(Filters=[{"Name": "tag:kind", "Values": ["copy"]}])
    assert [s["SnapshotId"] for s in found["Snapshots"] if s.get("Tags") and run in str(s)] == [
        answer["SnapshotId"]
    ]
    copy = describe(lab.a, answer["SnapshotId"])
    assert {t["Key"] for t in copy["Tags"]} == {"kind", "run"}
    assert copy["FullSnapshotSizeInBytes"] == 0  # an empty volume's snapshot has no block
    lab.a.delete_volume(VolumeId=volume_id)


def test_snapshot_shared_by_another_account_can_be_copied_and_the_copy_is_the_callers(
    lab: Lab,
) -> None:
    data = {5: os.urandom(BLOCK)}
    volume_id, source_id = lab.source(data)
    code, message, _ = aws_error(
        lab.friend.copy_snapshot, SourceRegion=REGION, SourceSnapshotId=source_id
    )
    assert code == "InvalidSnapshot.NotFound" and source_id in message
    lab.a.modify_snapshot_attribute(
        SnapshotId=source_id,
        Attribute="createVolumePermission",
        OperationType="add",
        UserIds=[lab.friend_id],
    )
    copy_id = lab.friend.copy_snapshot(SourceRegion=REGION, SourceSnapshotId=source_id)[
        "SnapshotId"
    ]
    wait_completed(lab.friend, copy_id)
    assert describe(lab.friend, copy_id)["OwnerId"] == lab.friend_id
    assert aws_error(lab.a.describe_snapshots, SnapshotIds=[copy_id])[0] == (
        "InvalidSnapshot.NotFound"
    )
    # The owner deletes the original: the friend's copy still restores its bytes.
    lab.a.delete_snapshot(SnapshotId=source_id)
    restored_id = new_volume(lab.friend, SnapshotId=copy_id)
    assert read_blocks(lab.server, restored_id, [5])[5] == data[5]
    lab.friend.delete_volume(VolumeId=restored_id)
    lab.a.delete_volume(VolumeId=volume_id)


def test_copy_of_a_missing_or_malformed_snapshot_or_from_an_unknown_region_is_refused(
    lab: Lab,
) -> None:
    code, message, status = aws_error(
        lab.a.copy_snapshot, SourceRegion=REGION, SourceSnapshotId=MISSING_SNAPSHOT
    )
    assert (code, status) == ("InvalidSnapshot.NotFound", 400)
    assert MISSING_SNAPSHOT in message
    assert aws_error(lab.a.copy_snapshot, SourceRegion=REGION, SourceSnapshotId="snap-nope")[0] == (
        "InvalidSnapshotID.Malformed"
    )
    code, message, _ = aws_error(
        lab.a.copy_snapshot, SourceRegion="mars-north-1", SourceSnapshotId=MISSING_SNAPSHOT
    )
    assert code == "InvalidParameterValue" and "mars-north-1" in message
    # A snapshot of region A named as if it were in region B is not found there.
    volume_id, source_id = lab.source({})
    assert aws_error(lab.a.copy_snapshot, SourceRegion=REGION_B, SourceSnapshotId=source_id)[0] == (
        "InvalidSnapshot.NotFound"
    )
    lab.a.delete_volume(VolumeId=volume_id)


def test_copy_of_a_pending_snapshot_is_incorrect_state(lab: Lab) -> None:
    volume_id = new_volume(lab.a)
    lab.write(volume_id, {i: os.urandom(BLOCK) for i in range(0, 2048, 4)})  # 256 MiB to read
    source_id = lab.a.create_snapshot(VolumeId=volume_id)["SnapshotId"]
    code, message, _ = aws_error(
        lab.a.copy_snapshot, SourceRegion=REGION, SourceSnapshotId=source_id
    )
    assert code == "IncorrectState" and "pending" in message and source_id in message
    wait_completed(lab.a, source_id)
    lab.a.delete_snapshot(SnapshotId=source_id)
    lab.a.delete_volume(VolumeId=volume_id)


def test_encrypted_copy_is_refused_honestly_and_bad_options_are_errors(lab: Lab) -> None:
    volume_id, source_id = lab.source({})
    copy = {"SourceRegion": REGION, "SourceSnapshotId": source_id}
    code, message, _ = aws_error(lab.a.copy_snapshot, Encrypted=True, **copy)
    assert code == "UnsupportedOperation" and "Encrypt" in message
    code, _, _ = aws_error(lab.a.copy_snapshot, KmsKeyId="alias/aws/ebs", **copy)
    assert code == "InvalidParameterDependency"
    code, _, _ = aws_error(
        lab.a.copy_snapshot,
        DestinationOutpostArn="arn:aws:outposts:us-east-1:123456789012:outpost/op-1",
        **copy,
    )
    assert code == "UnsupportedOperation"
    code, _, _ = aws_error(lab.a.copy_snapshot, CompletionDurationMinutes=20, **copy)
    assert code == "InvalidParameterValue"
    code, _, _ = aws_error(lab.a.copy_snapshot, Description="x" * 256, **copy)
    assert code == "InvalidParameterValue"
    code, _, _ = aws_error(lab.a.copy_snapshot, TagSpecifications=tag_spec("volume", a="b"), **copy)
    assert code == "InvalidParameterValue"
    # Encrypted=false and a time-based completion are fine.
    done = lab.a.copy_snapshot(Encrypted=False, CompletionDurationMinutes=15, **copy)
    wait_completed(lab.a, done["SnapshotId"])
    assert describe(lab.a, done["SnapshotId"])["Encrypted"] is False
    lab.a.delete_volume(VolumeId=volume_id)


def test_dry_run_copy_answers_dry_run_operation_and_creates_nothing(lab: Lab) -> None:
    run = unique()
    volume_id, source_id = lab.source({})
    code, message, status = aws_error(
        lab.a.copy_snapshot,
        SourceRegion=REGION,
        SourceSnapshotId=source_id,
        DryRun=True,
        TagSpecifications=tag_spec("snapshot", run=run),
    )
    assert (code, message, status) == ("DryRunOperation", DRY_RUN_MESSAGE, 412)
    found = lab.a.describe_snapshots(Filters=[{"Name": "tag:run", "Values": [run]}])
    assert found["Snapshots"] == []
    lab.a.delete_volume(VolumeId=volume_id)


def test_aws_cli_copies_across_regions_and_waits_for_the_copy(lab: Lab) -> None:
    volume_id, source_id = lab.source({2: os.urandom(BLOCK)})
    env = lab.server.cli_env()
    env["AWS_DEFAULT_REGION"] = REGION_B

    def aws(*args: str) -> str:
        argv = [str(AWS), "ec2", *args, "--endpoint-url", lab.server.url, "--output", "json"]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    answer = json.loads(
        aws(
            "copy-snapshot",
            "--source-region",
            REGION,
            "--source-snapshot-id",
            source_id,
            "--description",
            "cli copy",
            "--tag-specifications",
            "ResourceType=snapshot,Tags=[{Key=via,Value=cli}]",
        )
    )
    copy_id = answer["SnapshotId"]
    assert answer["Tags"] == [{"Key": "via", "Value": "cli"}]
    aws("wait", "snapshot-completed", "--snapshot-ids", copy_id)
    (copy,) = json.loads(aws("describe-snapshots", "--snapshot-ids", copy_id))["Snapshots"]
    assert (copy["State"], copy["VolumeId"], copy["Description"]) == (
        "completed",
        COPY_VOLUME_ID,
        "cli copy",
    )
    lab.a.delete_volume(VolumeId=volume_id)
