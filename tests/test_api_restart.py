"""What the API shows survives a restart of the server: volumes, snapshots, tags, tokens, data."""

from __future__ import annotations

import os
import signal
from typing import Any

from tests.api_support import (
    FAST,
    aws_error,
    new_snapshot,
    new_volume,
    poll,
    tag_spec,
    unique,
)
from tests.server import ZONE, ServerProcess
from tests.volume_data import read_blocks, write_blocks

BLOCK = 512 * 1024


def snapshot_view(ec2: Any, snapshot_id: str) -> dict[str, Any]:
    (snapshot,) = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
    return dict(snapshot)


def test_volumes_snapshots_tags_and_client_tokens_survive_a_restart(
    fresh_server: ServerProcess,
) -> None:
    ec2 = fresh_server.client()
    run, token = unique(), unique()
    data = os.urandom(BLOCK)
    volume_id = new_volume(
        ec2,
        Size=4,
        VolumeType="io2",
        Iops=1000,
        ClientToken=token,
        TagSpecifications=tag_spec("volume", run=run, Name="kept"),
    )
    write_blocks(fresh_server, volume_id, {7: data})
    snapshot_id = new_snapshot(
        ec2,
        volume_id,
        Description="before restart",
        TagSpecifications=tag_spec("snapshot", run=run),
    )
    other_id = new_volume(ec2)
    ec2.create_tags(Resources=[other_id], Tags=[{"Key": "run", "Value": run}])
    ec2.delete_tags(Resources=[other_id], Tags=[{"Key": "run"}])
    volumes_before = ec2.describe_volumes(VolumeIds=[volume_id, other_id])["Volumes"]
    snapshot_before = snapshot_view(ec2, snapshot_id)
    tags_before = ec2.describe_tags()["Tags"]

    fresh_server.restart()
    ec2 = fresh_server.client()

    assert ec2.describe_volumes(VolumeIds=[volume_id, other_id])["Volumes"] == volumes_before
    assert snapshot_view(ec2, snapshot_id) == snapshot_before
    assert ec2.describe_tags()["Tags"] == tags_before
    assert snapshot_before["State"] == "completed" and snapshot_before["Progress"] == "100%"

    # The ClientToken still names the volume it created.
    again = ec2.create_volume(
        AvailabilityZone=ZONE,
        Size=4,
        VolumeType="io2",
        Iops=1000,
        ClientToken=token,
        TagSpecifications=tag_spec("volume", run=run, Name="kept"),
    )
    assert again["VolumeId"] == volume_id
    code, _, _ = aws_error(ec2.create_volume, AvailabilityZone=ZONE, Size=3, ClientToken=token)
    assert code == "IdempotentParameterMismatch"

    # A snapshot taken before the restart restores afterwards, with its bytes.
    restored_id = new_volume(ec2, SnapshotId=snapshot_id)
    assert read_blocks(fresh_server, restored_id, [7, 0]) == {7: data, 0: bytes(BLOCK)}

    # And everything can still be deleted.
    for vid in (volume_id, other_id, restored_id):
        ec2.delete_volume(VolumeId=vid)
    ec2.get_waiter("volume_deleted").wait(
        VolumeIds=[volume_id, other_id, restored_id], WaiterConfig=FAST
    )
    ec2.delete_snapshot(SnapshotId=snapshot_id)
    assert aws_error(ec2.describe_snapshots, SnapshotIds=[snapshot_id])[0] == (
        "InvalidSnapshot.NotFound"
    )


def test_deleted_volume_and_snapshot_stay_deleted_after_a_restart(
    fresh_server: ServerProcess,
) -> None:
    ec2 = fresh_server.client()
    volume_id = new_volume(ec2)
    snapshot_id = new_snapshot(ec2, volume_id)
    ec2.delete_snapshot(SnapshotId=snapshot_id)
    ec2.delete_volume(VolumeId=volume_id)
    ec2.get_waiter("volume_deleted").wait(VolumeIds=[volume_id], WaiterConfig=FAST)

    fresh_server.restart()
    ec2 = fresh_server.client()

    assert aws_error(ec2.describe_snapshots, SnapshotIds=[snapshot_id])[0] == (
        "InvalidSnapshot.NotFound"
    )
    volumes = ec2.describe_volumes()["Volumes"]
    assert {v["State"] for v in volumes if v["VolumeId"] == volume_id} <= {"deleted"}
    assert aws_error(ec2.delete_volume, VolumeId=volume_id)[0] == "InvalidVolume.NotFound"


def test_snapshot_interrupted_by_a_crash_completes_after_the_restart(
    fresh_server: ServerProcess,
) -> None:
    ec2 = fresh_server.client()
    volume_id = new_volume(ec2)
    blocks = {index * 15: os.urandom(BLOCK) for index in range(130)}
    write_blocks(fresh_server, volume_id, blocks)
    snapshot_id = ec2.create_snapshot(VolumeId=volume_id)["SnapshotId"]
    fresh_server.stop(signal.SIGKILL)  # very likely mid-capture; either way it must complete
    fresh_server.start()
    ec2 = fresh_server.client()

    poll(lambda: True if snapshot_view(ec2, snapshot_id)["State"] != "pending" else None)
    finished = snapshot_view(ec2, snapshot_id)
    assert (finished["State"], finished["Progress"]) == ("completed", "100%")
    restored_id = new_volume(ec2, SnapshotId=snapshot_id)
    assert read_blocks(fresh_server, restored_id, list(blocks)) == blocks
