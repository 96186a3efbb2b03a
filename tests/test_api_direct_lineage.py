"""ListChangedBlocks relates two snapshots of one lineage whatever was deleted between them
(AWS: "regardless of which prior snapshots have been deleted, all active snapshots will have
access to all the information needed"): a deleted middle snapshot, a deleted volume; a
snapshot copy begins a lineage of its own; records from before lineages were recorded still
relate as they did."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api_support import FAST, new_snapshot, new_volume, poll
from tests.direct_support import put, random_blocks, refusal, upload, write_blocks
from tests.server import REGION, ServerProcess


@pytest.fixture(scope="module")
def ec2(server: ServerProcess) -> Any:
    return server.client()


@pytest.fixture(scope="module")
def ebs(server: ServerProcess) -> Any:
    return server.client("ebs")


def changed(ebs: Any, first: str, second: str) -> list[int]:
    listed = ebs.list_changed_blocks(FirstSnapshotId=first, SecondSnapshotId=second)
    return [block["BlockIndex"] for block in listed["ChangedBlocks"]]


def child(ebs: Any, parent: str, blocks: dict[int, bytes]) -> str:
    snapshot_id: str = ebs.start_snapshot(VolumeSize=1, ParentSnapshotId=parent)["SnapshotId"]
    for index, data in blocks.items():
        put(ebs, snapshot_id, index, data)
    ebs.complete_snapshot(SnapshotId=snapshot_id, ChangedBlocksCount=len(blocks))
    return snapshot_id


def delete_volume_until_gone(ec2: Any, volume_id: str) -> None:
    """DeleteVolume, then wait until DescribeVolumes no longer knows it (its record purged)."""
    ec2.delete_volume(VolumeId=volume_id)

    def gone() -> bool | None:
        try:
            ec2.describe_volumes(VolumeIds=[volume_id])
        except ec2.exceptions.ClientError as exc:
            assert exc.response["Error"]["Code"] == "InvalidVolume.NotFound"
            return True
        return None

    poll(gone, timeout=30, every=0.2)


def test_direct_snapshots_stay_related_after_the_middle_one_is_deleted(ec2: Any, ebs: Any) -> None:
    parent = upload(ebs, random_blocks([0, 1]))
    middle = child(ebs, parent, random_blocks([1]))
    last = child(ebs, middle, random_blocks([2]))
    assert changed(ebs, parent, last) == [1, 2]
    ec2.delete_snapshot(SnapshotId=middle)
    assert changed(ebs, parent, last) == [1, 2]
    for snapshot_id in (parent, last):
        ec2.delete_snapshot(SnapshotId=snapshot_id)


def test_a_snapshot_stays_related_to_its_volumes_source_after_the_volume_is_gone(
    server: ServerProcess, ec2: Any, ebs: Any
) -> None:
    source = upload(ebs, random_blocks([0, 3]))
    volume_id = new_volume(ec2, SnapshotId=source)
    write_blocks(server, volume_id, random_blocks([3, 4]))
    later = new_snapshot(ec2, volume_id)
    assert changed(ebs, source, later) == [3, 4]
    delete_volume_until_gone(ec2, volume_id)
    assert changed(ebs, source, later) == [3, 4]
    for snapshot_id in (source, later):
        ec2.delete_snapshot(SnapshotId=snapshot_id)


def test_snapshots_across_volumes_stay_related_after_the_snapshot_between_is_deleted(
    server: ServerProcess, ec2: Any, ebs: Any
) -> None:
    origin = new_volume(ec2)
    write_blocks(server, origin, random_blocks([0]))
    first = new_snapshot(ec2, origin)
    restored = new_volume(ec2, SnapshotId=first)
    write_blocks(server, restored, random_blocks([1]))
    between = new_snapshot(ec2, restored)
    again = new_volume(ec2, SnapshotId=between)
    write_blocks(server, again, random_blocks([2]))
    third = new_snapshot(ec2, again)
    assert changed(ebs, first, third) == [1, 2]

    ec2.delete_snapshot(SnapshotId=between)
    assert changed(ebs, first, third) == [1, 2]
    write_blocks(server, again, random_blocks([5]))
    fourth = new_snapshot(ec2, again)  # of a volume whose source snapshot is gone
    assert changed(ebs, first, fourth) == [1, 2, 5]
    assert changed(ebs, third, fourth) == [5]
    for volume_id in (origin, restored, again):
        ec2.delete_volume(VolumeId=volume_id)
    for snapshot_id in (first, third, fourth):
        ec2.delete_snapshot(SnapshotId=snapshot_id)


def test_a_copy_begins_a_lineage_of_its_own(ec2: Any, ebs: Any) -> None:
    source = upload(ebs, random_blocks([0]))
    copy = ec2.copy_snapshot(SourceRegion=REGION, SourceSnapshotId=source)["SnapshotId"]
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[copy], WaiterConfig=FAST)
    unrelated = refusal(ebs.list_changed_blocks, FirstSnapshotId=source, SecondSnapshotId=copy)
    assert (unrelated.code, unrelated.reason) == ("ValidationException", "UNRELATED_SNAPSHOTS")
    later = child(ebs, copy, random_blocks([1]))
    assert changed(ebs, copy, later) == [1]
    for snapshot_id in (source, copy, later):
        ec2.delete_snapshot(SnapshotId=snapshot_id)


def test_records_from_before_lineages_relate_as_before_and_pass_their_lineage_on(
    fresh_server: ServerProcess,
) -> None:
    ec2, ebs = fresh_server.client(), fresh_server.client("ebs")
    source = upload(ebs, random_blocks([0]))
    volume_id = new_volume(ec2, SnapshotId=source)
    write_blocks(fresh_server, volume_id, random_blocks([1]))
    older = new_snapshot(ec2, volume_id)
    fresh_server.stop()
    # As a database migrated from before lineages were recorded has them.
    fresh_server.sql("UPDATE volumes SET lineage = NULL")
    fresh_server.sql("UPDATE snapshots SET lineage = NULL")
    fresh_server.start()
    ec2, ebs = fresh_server.client(), fresh_server.client("ebs")
    assert changed(ebs, source, older) == [1]

    write_blocks(fresh_server, volume_id, random_blocks([2]))
    newer = new_snapshot(ec2, volume_id)  # of a volume without a recorded lineage
    assert changed(ebs, older, newer) == [2]
    delete_volume_until_gone(ec2, volume_id)
    assert changed(ebs, source, newer) == [1, 2]
