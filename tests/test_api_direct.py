"""The EBS direct API through boto3's `ebs` client against a real server: a backup written
block by block, restored by EC2 CreateVolume, compared with a later EC2 snapshot, read back."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.api_support import FAST, block_path, new_snapshot, new_volume, poll
from tests.direct_support import (
    BLOCK,
    checksum,
    linear_checksum,
    put,
    random_blocks,
    read_blocks,
    refusal,
    upload,
    write_blocks,
)
from tests.server import ServerProcess


@pytest.fixture(scope="module")
def ec2(server: ServerProcess) -> Any:
    return server.client()


@pytest.fixture(scope="module")
def ebs(server: ServerProcess) -> Any:
    return server.client("ebs")


def describe(ec2: Any, snapshot_id: str) -> dict[str, Any]:
    (snapshot,) = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
    return dict(snapshot)


def test_backup_written_block_by_block_restores_and_diffs_against_a_later_ec2_snapshot(
    server: ServerProcess, ec2: Any, ebs: Any
) -> None:
    blocks = random_blocks([0, 5, 100, 2047])
    started = ebs.start_snapshot(VolumeSize=1, Description="direct backup")
    first = started["SnapshotId"]
    assert (started["Status"], started["VolumeSize"], started["BlockSize"]) == (
        "pending",
        1,
        BLOCK,
    )
    for index, data in blocks.items():
        answer = put(ebs, first, index, data, Progress=50)
        assert (answer["Checksum"], answer["ChecksumAlgorithm"]) == (checksum(data), "SHA256")
    put(ebs, first, 7, bytes(BLOCK))  # an all-zero block: a hole, as in any snapshot
    pending = describe(ec2, first)
    assert (pending["State"], pending["Progress"], pending["VolumeId"]) == (
        "pending",
        "50%",
        "vol-ffffffff",
    )
    written = {**blocks, 7: bytes(BLOCK)}
    done = ebs.complete_snapshot(
        SnapshotId=first,
        ChangedBlocksCount=len(written),
        Checksum=linear_checksum(written),
        ChecksumAlgorithm="SHA256",
        ChecksumAggregationMethod="LINEAR",
    )
    assert done["Status"] == "completed"
    completed = describe(ec2, first)
    assert (completed["State"], completed["Progress"], completed["VolumeSize"]) == (
        "completed",
        "100%",
        1,
    )
    assert completed["Description"] == "direct backup"

    volume_id = new_volume(ec2, SnapshotId=first)
    holes = [1, 6, 7, 101, 2046]
    assert read_blocks(server, volume_id, [*blocks, *holes]) == {
        **blocks,
        **{index: bytes(BLOCK) for index in holes},
    }

    changes = random_blocks([5, 300])
    write_blocks(server, volume_id, {**changes, 100: bytes(BLOCK)})
    second = new_snapshot(ec2, volume_id)
    listed = ebs.list_changed_blocks(FirstSnapshotId=first, SecondSnapshotId=second)
    by_index = {c["BlockIndex"]: c for c in listed["ChangedBlocks"]}
    assert sorted(by_index) == [5, 100, 300]
    assert {i: sorted(k for k in c if k.endswith("Token")) for i, c in by_index.items()} == {
        5: ["FirstBlockToken", "SecondBlockToken"],
        100: ["FirstBlockToken"],  # zeroed: a hole in the second snapshot
        300: ["SecondBlockToken"],
    }
    assert (listed["VolumeSize"], listed["BlockSize"], "NextToken" in listed) == (1, BLOCK, False)

    new = ebs.get_snapshot_block(
        SnapshotId=second, BlockIndex=5, BlockToken=by_index[5]["SecondBlockToken"]
    )
    data = new["BlockData"].read()
    assert data == changes[5]
    assert (new["DataLength"], new["Checksum"], new["ChecksumAlgorithm"]) == (
        BLOCK,
        checksum(data),
        "SHA256",
    )
    old = ebs.get_snapshot_block(
        SnapshotId=first, BlockIndex=100, BlockToken=by_index[100]["FirstBlockToken"]
    )
    assert old["BlockData"].read() == blocks[100]

    listed_second = ebs.list_snapshot_blocks(SnapshotId=second)["Blocks"]
    assert [b["BlockIndex"] for b in listed_second] == [0, 5, 300, 2047]
    ec2.delete_volume(VolumeId=volume_id)
    for snapshot_id in (first, second):
        ec2.delete_snapshot(SnapshotId=snapshot_id)


def test_block_with_a_wrong_checksum_is_refused_and_not_stored(
    server: ServerProcess, ebs: Any
) -> None:
    snapshot_id = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    data = random_blocks([0])[0]
    other = data[:-1] + bytes([data[-1] ^ 0x01])  # differs from the data in its last bit
    wrong = refusal(put, ebs, snapshot_id, 0, data, Checksum=checksum(other))
    assert (wrong.code, wrong.status, wrong.reason) == ("ValidationException", 400, "INVALID_BLOCK")
    assert wrong.error_type == "ValidationException"
    assert not block_path(server.data_dir, data).exists()
    not_base64 = refusal(put, ebs, snapshot_id, 0, data, Checksum="AAAA")
    assert (not_base64.code, not_base64.reason) == (
        "ValidationException",
        "INVALID_PARAMETER_VALUE",
    )
    assert ebs.complete_snapshot(SnapshotId=snapshot_id, ChangedBlocksCount=0)["Status"] == (
        "completed"
    )


def test_completion_needs_the_count_and_aggregate_checksum_of_the_blocks_written(
    ec2: Any, ebs: Any
) -> None:
    blocks = random_blocks([3, 1])
    snapshot_id = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    for index, data in blocks.items():
        put(ebs, snapshot_id, index, data)
    put(ebs, snapshot_id, 3, blocks[3])  # the same block again counts once
    miscount = refusal(ebs.complete_snapshot, SnapshotId=snapshot_id, ChangedBlocksCount=3)
    assert (miscount.code, miscount.status) == ("ValidationException", 400)
    assert "ChangedBlocksCount is 3, but 2 blocks" in miscount.message
    unordered = hashlib.sha256(
        b"".join(hashlib.sha256(blocks[i]).digest() for i in (3, 1))
    ).digest()
    bad = refusal(
        ebs.complete_snapshot,
        SnapshotId=snapshot_id,
        ChangedBlocksCount=2,
        Checksum=checksum(unordered),  # checksum() of the digest, so still 32 bytes
        ChecksumAlgorithm="SHA256",
        ChecksumAggregationMethod="LINEAR",
    )
    assert (bad.code, bad.status) == ("ValidationException", 400)
    assert describe(ec2, snapshot_id)["State"] == "pending"
    ebs.complete_snapshot(
        SnapshotId=snapshot_id,
        ChangedBlocksCount=2,
        Checksum=linear_checksum(blocks),
        ChecksumAlgorithm="SHA256",
        ChecksumAggregationMethod="LINEAR",
    )
    assert describe(ec2, snapshot_id)["State"] == "completed"
    late = refusal(put, ebs, snapshot_id, 9, blocks[1])
    assert (late.code, late.status) == ("ValidationException", 400)
    assert "completed" in late.message
    ec2.delete_snapshot(SnapshotId=snapshot_id)


def test_a_block_token_reads_only_its_own_block_of_its_own_snapshot(ebs: Any) -> None:
    blocks = random_blocks([0, 1])
    first = upload(ebs, blocks)
    second = upload(ebs, blocks)
    tokens = {
        b["BlockIndex"]: b["BlockToken"]
        for b in ebs.list_snapshot_blocks(SnapshotId=first)["Blocks"]
    }
    assert (
        ebs.get_snapshot_block(SnapshotId=first, BlockIndex=1, BlockToken=tokens[1])[
            "BlockData"
        ].read()
        == blocks[1]
    )
    forged = tokens[0][:-6] + ("AAAAA=" if not tokens[0].endswith("AAAAA=") else "BBBBB=")
    for snapshot_id, index, token in [
        (first, 1, tokens[0]),  # another block's token
        (second, 0, tokens[0]),  # another snapshot's token
        (first, 0, forged),
        (first, 0, "bm90IGEgdG9rZW4="),
        (first, 2, tokens[0]),  # a hole has no token
    ]:
        bad = refusal(
            ebs.get_snapshot_block, SnapshotId=snapshot_id, BlockIndex=index, BlockToken=token
        )
        assert (bad.code, bad.status, bad.reason) == (
            "ValidationException",
            400,
            "INVALID_BLOCK_TOKEN",
        )
    pattern = refusal(ebs.get_snapshot_block, SnapshotId=first, BlockIndex=0, BlockToken="no-dash")
    assert (pattern.code, pattern.status) == ("ValidationException", 400)


def test_indexes_beyond_the_volume_and_wrong_lengths_are_validation_errors(ebs: Any) -> None:
    snapshot_id = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    data = random_blocks([0])[0]
    beyond = refusal(put, ebs, snapshot_id, 2048, data)
    assert (beyond.code, beyond.status) == ("ValidationException", 400)
    assert "beyond the end of the 1 GiB snapshot" in beyond.message
    short = data[:4096]
    for body, length in [(short, len(short)), (data, BLOCK + 1), (short, BLOCK)]:
        bad = refusal(put, ebs, snapshot_id, 0, body, DataLength=length)
        assert (bad.code, bad.status) == ("ValidationException", 400)
    ebs.complete_snapshot(SnapshotId=snapshot_id, ChangedBlocksCount=0)
    too = refusal(ebs.start_snapshot, VolumeSize=65537)
    assert (too.code, too.reason) == ("ValidationException", "INVALID_VOLUME_SIZE")
    for extra in ({"MaxResults": 10001}, {"StartingBlockIndex": 0, "NextToken": "AAAA"}):
        bad = refusal(ebs.list_snapshot_blocks, SnapshotId=snapshot_id, **extra)
        assert (bad.code, bad.status) == ("ValidationException", 400)


def test_unknown_snapshots_are_resource_not_found_for_every_operation(ebs: Any) -> None:
    missing = "snap-0123456789abcdef0"
    calls: list[tuple[Any, dict[str, Any]]] = [
        (ebs.list_snapshot_blocks, {"SnapshotId": missing}),
        (ebs.list_changed_blocks, {"SecondSnapshotId": missing}),
        (ebs.get_snapshot_block, {"SnapshotId": missing, "BlockIndex": 0, "BlockToken": "AAAA"}),
        (ebs.complete_snapshot, {"SnapshotId": missing, "ChangedBlocksCount": 0}),
        (ebs.start_snapshot, {"VolumeSize": 1, "ParentSnapshotId": missing}),
    ]
    for call, params in calls:
        found = refusal(call, **params)
        assert (found.code, found.status, found.reason) == (
            "ResourceNotFoundException",
            404,
            "SNAPSHOT_NOT_FOUND",
        )
        assert missing in found.message
    absent = refusal(put, ebs, missing, 0, bytes(BLOCK))
    assert (absent.code, absent.status) == ("ResourceNotFoundException", 404)


def test_an_incremental_snapshot_starts_with_its_parents_blocks_and_pages_through_them(
    ebs: Any,
) -> None:
    same = random_blocks([0])[0]
    parent = upload(ebs, dict.fromkeys(range(205), same))
    child = ebs.start_snapshot(VolumeSize=2, ParentSnapshotId=parent)
    assert child["ParentSnapshotId"] == parent
    changed = random_blocks([2100])  # beyond the parent's 1 GiB
    put(ebs, child["SnapshotId"], 2100, changed[2100])
    put(ebs, child["SnapshotId"], 4, same)  # rewritten with the same bytes: no change
    ebs.complete_snapshot(SnapshotId=child["SnapshotId"], ChangedBlocksCount=2)

    indexes: list[int] = []
    pages = 0
    params: dict[str, Any] = {"SnapshotId": child["SnapshotId"], "MaxResults": 100}
    while True:
        page = ebs.list_snapshot_blocks(**params)
        pages += 1
        indexes += [b["BlockIndex"] for b in page["Blocks"]]
        if "NextToken" not in page:
            break
        params["NextToken"] = page["NextToken"]
    assert (pages, indexes) == (3, [*range(205), 2100])
    assert page["VolumeSize"] == 2

    tail = ebs.list_snapshot_blocks(SnapshotId=parent, StartingBlockIndex=200)["Blocks"]
    assert [b["BlockIndex"] for b in tail] == list(range(200, 205))
    diff = ebs.list_changed_blocks(FirstSnapshotId=parent, SecondSnapshotId=child["SnapshotId"])
    assert [c["BlockIndex"] for c in diff["ChangedBlocks"]] == [2100]

    everything = ebs.list_changed_blocks(SecondSnapshotId=parent, MaxResults=100)
    assert len(everything["ChangedBlocks"]) == 100
    assert all("FirstBlockToken" not in c for c in everything["ChangedBlocks"])
    elsewhere = refusal(
        ebs.list_snapshot_blocks, SnapshotId=parent, NextToken=everything["NextToken"]
    )
    assert (elsewhere.code, elsewhere.reason) == ("ValidationException", "INVALID_PAGE_TOKEN")
    rest = ebs.list_changed_blocks(
        SecondSnapshotId=parent, MaxResults=100, NextToken=everything["NextToken"]
    )
    assert rest["ChangedBlocks"][0]["BlockIndex"] == 100

    smaller = refusal(ebs.start_snapshot, VolumeSize=1, ParentSnapshotId=child["SnapshotId"])
    assert (smaller.code, smaller.reason) == ("ValidationException", "INVALID_VOLUME_SIZE")


def test_block_tokens_last_seven_days(ebs: Any) -> None:
    """As on AWS (the EBS direct API's FAQ): a backup that reads for days keeps its tokens."""
    snapshot_id = upload(ebs, random_blocks([0]))
    page = ebs.list_snapshot_blocks(SnapshotId=snapshot_id)
    lifetime = page["ExpiryTime"] - datetime.now(UTC)
    assert timedelta(days=7) - timedelta(minutes=5) < lifetime <= timedelta(days=7)


def test_snapshots_of_unrelated_lineages_cannot_be_compared(ebs: Any) -> None:
    first = upload(ebs, random_blocks([0]))
    second = upload(ebs, random_blocks([0]))
    unrelated = refusal(ebs.list_changed_blocks, FirstSnapshotId=first, SecondSnapshotId=second)
    assert (unrelated.code, unrelated.status, unrelated.reason) == (
        "ValidationException",
        400,
        "UNRELATED_SNAPSHOTS",
    )


def test_pending_snapshots_cannot_be_read_nor_ec2_snapshots_written(ec2: Any, ebs: Any) -> None:
    pending = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    unread = refusal(ebs.list_snapshot_blocks, SnapshotId=pending)
    assert (unread.code, unread.status) == ("ValidationException", 400)
    ebs.complete_snapshot(SnapshotId=pending, ChangedBlocksCount=0)
    volume_id = new_volume(ec2)
    captured = new_snapshot(ec2, volume_id)
    unwritable = refusal(put, ebs, captured, 0, bytes(BLOCK))
    assert (unwritable.code, unwritable.status) == ("ValidationException", 400)
    assert "StartSnapshot" in unwritable.message
    ec2.delete_volume(VolumeId=volume_id)


def test_client_token_repeats_the_same_snapshot_and_refuses_other_parameters(ebs: Any) -> None:
    token = hashlib.sha256(b"direct-token").hexdigest()
    first = ebs.start_snapshot(VolumeSize=1, ClientToken=token, Description="one")
    again = ebs.start_snapshot(VolumeSize=1, ClientToken=token, Description="one")
    assert again["SnapshotId"] == first["SnapshotId"]
    conflict = refusal(ebs.start_snapshot, VolumeSize=2, ClientToken=token, Description="one")
    assert (conflict.code, conflict.status) == ("ConflictException", 409)
    ebs.complete_snapshot(SnapshotId=first["SnapshotId"], ChangedBlocksCount=0)


def test_encryption_is_refused_honestly(ebs: Any) -> None:
    refused = refusal(ebs.start_snapshot, VolumeSize=1, Encrypted=True)
    assert (refused.code, refused.status) == ("ValidationException", 400)
    assert "Encryption at rest is not available" in refused.message


def test_tags_are_validated_and_shown_by_ec2(ec2: Any, ebs: Any) -> None:
    reserved = refusal(ebs.start_snapshot, VolumeSize=1, Tags=[{"Key": "aws:x", "Value": "y"}])
    assert (reserved.code, reserved.reason) == ("ValidationException", "INVALID_TAG")
    started = ebs.start_snapshot(VolumeSize=1, Tags=[{"Key": "team", "Value": "backup"}])
    assert started["Tags"] == [{"Key": "team", "Value": "backup"}]
    assert describe(ec2, started["SnapshotId"])["Tags"] == [{"Key": "team", "Value": "backup"}]
    ebs.complete_snapshot(SnapshotId=started["SnapshotId"], ChangedBlocksCount=0)


def test_deleting_a_direct_snapshot_releases_its_blocks(
    server: ServerProcess, ec2: Any, ebs: Any
) -> None:
    blocks = random_blocks([0, 9])
    snapshot_id = upload(ebs, blocks)
    paths = [block_path(server.data_dir, data) for data in blocks.values()]
    assert all(path.exists() for path in paths)
    ec2.delete_snapshot(SnapshotId=snapshot_id)
    poll(lambda: True if not any(path.exists() for path in paths) else None)
    gone = refusal(ebs.list_snapshot_blocks, SnapshotId=snapshot_id)
    assert (gone.code, gone.status) == ("ResourceNotFoundException", 404)


def test_restored_volume_of_a_direct_snapshot_has_its_size(ec2: Any, ebs: Any) -> None:
    snapshot_id = upload(ebs, random_blocks([1]), VolumeSize=3)
    volume_id = new_volume(ec2, SnapshotId=snapshot_id)
    (volume,) = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"]
    assert (volume["Size"], volume["SnapshotId"]) == (3, snapshot_id)
    ec2.delete_volume(VolumeId=volume_id)
    ec2.get_waiter("volume_deleted").wait(VolumeIds=[volume_id], WaiterConfig=FAST)
    ec2.delete_snapshot(SnapshotId=snapshot_id)


def test_blocks_a_child_inherited_outlive_the_deleted_parent(
    server: ServerProcess, ec2: Any, ebs: Any
) -> None:
    blocks = random_blocks([0, 1])
    parent = upload(ebs, blocks)
    child = ebs.start_snapshot(VolumeSize=1, ParentSnapshotId=parent)["SnapshotId"]
    replaced = random_blocks([1])
    put(ebs, child, 1, replaced[1])
    ebs.complete_snapshot(SnapshotId=child, ChangedBlocksCount=1)
    ec2.delete_snapshot(SnapshotId=parent)
    dropped = block_path(server.data_dir, blocks[1])  # only the parent held it
    poll(lambda: True if not dropped.exists() else None)
    assert block_path(server.data_dir, blocks[0]).exists()
    listed = ebs.list_snapshot_blocks(SnapshotId=child)["Blocks"]
    got = {
        b["BlockIndex"]: ebs.get_snapshot_block(
            SnapshotId=child, BlockIndex=b["BlockIndex"], BlockToken=b["BlockToken"]
        )["BlockData"].read()
        for b in listed
    }
    assert got == {0: blocks[0], 1: replaced[1]}
    ec2.delete_snapshot(SnapshotId=child)


def test_a_pending_snapshot_deleted_by_ec2_takes_no_more_blocks(
    server: ServerProcess, ec2: Any, ebs: Any
) -> None:
    blocks = random_blocks([0, 1])
    snapshot_id = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    put(ebs, snapshot_id, 0, blocks[0])
    ec2.delete_snapshot(SnapshotId=snapshot_id)
    poll(lambda: True if not block_path(server.data_dir, blocks[0]).exists() else None)
    late = refusal(put, ebs, snapshot_id, 1, blocks[1])
    assert (late.code, late.status) == ("ResourceNotFoundException", 404)
    assert not block_path(server.data_dir, blocks[1]).exists()
