"""Snapshots over the EC2 API through boto3: states, progress, owners, data, errors."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from ebsemu.service.instances import instance_id
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
    volume_state,
)
from tests.server import TEST_CONFIG, ZONE, ServerProcess
from tests.vmm_fixtures import HAVE_QEMU, NEEDS_QEMU, running_vm
from tests.volume_data import read_blocks, write_blocks

# The module's server tests run on each store and storage backend.
API_COMBINATIONS = (("sqlite", "file"), ("postgresql", "file"), ("sqlite", "rbd"))

BLOCK = 512 * 1024
ACCOUNT = "000000000000"  # the embedded default's account
MISSING_SNAPSHOT = "snap-0123456789abcdef0"


@pytest.fixture(scope="module")
def ec2(server: ServerProcess) -> Any:
    """One client for the module: building a boto3 client costs tens of milliseconds."""
    return server.client()


def test_snapshot_goes_pending_to_completed_with_progress_rising_to_100(
    server: ServerProcess, ec2: Any
) -> None:
    volume_id = new_volume(ec2, Size=1)
    # Data spread over the volume, so the capture reports progress in several steps.
    write_blocks(server, volume_id, {i * 15: os.urandom(BLOCK) for i in range(130)})
    created = ec2.create_snapshot(VolumeId=volume_id)
    assert (created["State"], created["Progress"]) == ("pending", "0%")
    seen: list[tuple[str, str]] = []

    def completed() -> bool | None:
        (snapshot,) = ec2.describe_snapshots(SnapshotIds=[created["SnapshotId"]])["Snapshots"]
        seen.append((snapshot["State"], snapshot["Progress"]))
        return True if snapshot["State"] != "pending" else None

    poll(completed, every=0.01)
    ec2.delete_volume(VolumeId=volume_id)
    ec2.delete_snapshot(SnapshotId=created["SnapshotId"])
    assert seen[-1] == ("completed", "100%")
    percents = [int(progress.rstrip("%")) for _, progress in seen]
    assert percents == sorted(percents)
    assert all(p < 100 for (state, _), p in zip(seen, percents, strict=True) if state == "pending")


def test_snapshot_describes_its_volume_owner_and_times(ec2: Any) -> None:
    run = unique()
    volume_id = new_volume(ec2, Size=3)
    snapshot_id = new_snapshot(
        ec2,
        volume_id,
        Description=f"nightly {run}",
        TagSpecifications=tag_spec("snapshot", run=run),
    )
    (snapshot,) = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
    ec2.delete_volume(VolumeId=volume_id)
    ec2.delete_snapshot(SnapshotId=snapshot_id)
    assert snapshot["VolumeId"] == volume_id
    assert snapshot["VolumeSize"] == 3
    assert snapshot["OwnerId"] == ACCOUNT
    assert snapshot["Description"] == f"nightly {run}"
    assert snapshot["Encrypted"] is False
    assert snapshot["Tags"] == [{"Key": "run", "Value": run}]
    assert snapshot["StartTime"] <= snapshot["CompletionTime"]
    assert snapshot["StorageTier"] == "standard"


def test_restored_volume_holds_the_bytes_of_the_moment_of_the_snapshot(
    server: ServerProcess, ec2: Any
) -> None:
    volume_id = new_volume(ec2, Size=1)
    before = {0: os.urandom(BLOCK), 1000: os.urandom(BLOCK)}
    write_blocks(server, volume_id, before)
    snapshot_id = ec2.create_snapshot(VolumeId=volume_id)["SnapshotId"]
    write_blocks(server, volume_id, {0: os.urandom(BLOCK)})  # after CreateSnapshot returned
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[snapshot_id], WaiterConfig=FAST)
    restored_id = new_volume(ec2, SnapshotId=snapshot_id)
    got = read_blocks(server, restored_id, [0, 1, 1000])
    for vid in (volume_id, restored_id):
        ec2.delete_volume(VolumeId=vid)
    ec2.delete_snapshot(SnapshotId=snapshot_id)
    assert got == {0: before[0], 1: bytes(BLOCK), 1000: before[1000]}


def test_a_second_snapshot_of_an_unchanged_volume_completes_and_restores_the_same_bytes(
    server: ServerProcess, ec2: Any
) -> None:
    volume_id = new_volume(ec2, Size=1)
    blocks = {3: os.urandom(BLOCK), 700: os.urandom(BLOCK)}
    write_blocks(server, volume_id, blocks)
    first = new_snapshot(ec2, volume_id)
    created = ec2.create_snapshot(VolumeId=volume_id)  # nothing written since the first
    snapshot_id = created["SnapshotId"]
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[snapshot_id], WaiterConfig=FAST)
    (second,) = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
    restored_id = new_volume(ec2, SnapshotId=snapshot_id)
    got = read_blocks(server, restored_id, [3, 5, 700])
    jobs = server.rows(
        "SELECT state FROM jobs WHERE kind = 'capture_snapshot' AND resource_id = ?", snapshot_id
    )
    for vid in (volume_id, restored_id):
        ec2.delete_volume(VolumeId=vid)
    for done in (first, snapshot_id):
        ec2.delete_snapshot(SnapshotId=done)
    assert created["State"] == "pending"
    assert (second["Progress"], second["FullSnapshotSizeInBytes"]) == ("100%", 2 * BLOCK)
    assert got == {3: blocks[3], 5: bytes(BLOCK), 700: blocks[700]}
    assert jobs == [("done",)]


def test_snapshot_completes_with_its_data_when_the_volume_is_deleted_at_once(
    server: ServerProcess, ec2: Any
) -> None:
    volume_id = new_volume(ec2, Size=1)
    blocks = {index * 31: os.urandom(BLOCK) for index in range(40)}
    write_blocks(server, volume_id, blocks)
    snapshot_id = ec2.create_snapshot(VolumeId=volume_id)["SnapshotId"]
    ec2.delete_volume(VolumeId=volume_id)
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[snapshot_id], WaiterConfig=FAST)
    restored_id = new_volume(ec2, SnapshotId=snapshot_id)
    got = read_blocks(server, restored_id, list(blocks))
    ec2.delete_volume(VolumeId=restored_id)
    ec2.delete_snapshot(SnapshotId=snapshot_id)
    assert got == blocks


# On rbd a restore from the latest snapshot is an rbd clone of its kept view, not a read of the
# stored blocks this test damages.
@pytest.mark.backends("file")
def test_volume_restored_from_a_corrupt_block_ends_in_error_and_cannot_be_snapshotted(
    server: ServerProcess, ec2: Any
) -> None:
    data = os.urandom(BLOCK)
    volume_id = new_volume(ec2, Size=1)
    write_blocks(server, volume_id, {3: data})
    snapshot_id = new_snapshot(ec2, volume_id)
    stored = block_path(server.data_dir, data)
    stored.write_bytes(os.urandom(BLOCK))  # damage the one stored block

    broken = ec2.create_volume(AvailabilityZone=ZONE, SnapshotId=snapshot_id)["VolumeId"]
    poll(lambda: True if volume_state(ec2, broken) == "error" else None)
    code, message, status = aws_error(ec2.create_snapshot, VolumeId=broken)
    assert (code, status) == ("IncorrectState", 400)
    assert broken in message
    # An errored volume can still be deleted.
    ec2.delete_volume(VolumeId=broken)
    ec2.get_waiter("volume_deleted").wait(VolumeIds=[broken], WaiterConfig=FAST)
    ec2.delete_volume(VolumeId=volume_id)
    ec2.delete_snapshot(SnapshotId=snapshot_id)


def test_snapshot_of_a_volume_being_deleted_is_refused(ec2: Any) -> None:
    volume_id = new_volume(ec2)
    ec2.delete_volume(VolumeId=volume_id)
    code, _, status = aws_error(ec2.create_snapshot, VolumeId=volume_id)
    # `deleting` (IncorrectState) or already `deleted` (NotFound), depending on timing.
    assert (code, status) in {("IncorrectState", 400), ("InvalidVolume.NotFound", 400)}


# ---- Owner and RestorableBy -----------------------------------------------------------------


@pytest.fixture(scope="module")
def own_snapshot(ec2: Any) -> str:
    volume_id = new_volume(ec2)
    snapshot_id = new_snapshot(ec2, volume_id)
    ec2.delete_volume(VolumeId=volume_id)
    return snapshot_id


def find(ec2: Any, snapshot_id: str, **params: Any) -> list[str]:
    answer = ec2.describe_snapshots(
        Filters=[{"Name": "snapshot-id", "Values": [snapshot_id]}], **params
    )
    return [s["SnapshotId"] for s in answer["Snapshots"]]


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"OwnerIds": ["self"]},
        {"OwnerIds": [ACCOUNT]},
        {"OwnerIds": ["amazon", "self"]},
        {"RestorableByUserIds": ["self"]},
        {"RestorableByUserIds": [ACCOUNT]},
        {"OwnerIds": ["self"], "RestorableByUserIds": ["self"]},
    ],
)
def test_own_snapshot_is_listed_for_self_owner_and_restorable_by(
    ec2: Any, own_snapshot: str, params: dict[str, Any]
) -> None:
    assert find(ec2, own_snapshot, **params) == [own_snapshot]


@pytest.mark.parametrize(
    "params",
    [
        {"OwnerIds": ["amazon"]},
        {"OwnerIds": ["aws-marketplace"]},
        {"OwnerIds": ["123456789012"]},
        {"RestorableByUserIds": ["all"]},
        {"RestorableByUserIds": ["123456789012"]},
    ],
)
def test_own_snapshot_is_not_listed_for_other_owners_or_public(
    ec2: Any, own_snapshot: str, params: dict[str, Any]
) -> None:
    assert find(ec2, own_snapshot, **params) == []


# ---- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operation", "params"),
    [
        ("describe_snapshots", {"SnapshotIds": [MISSING_SNAPSHOT]}),
        ("delete_snapshot", {"SnapshotId": MISSING_SNAPSHOT}),
        ("create_tags", {"Resources": [MISSING_SNAPSHOT], "Tags": [{"Key": "k", "Value": "v"}]}),
    ],
)
def test_missing_snapshot_is_invalid_snapshot_not_found(
    ec2: Any, operation: str, params: dict[str, Any]
) -> None:
    code, message, status = aws_error(getattr(ec2, operation), **params)
    assert (code, status) == ("InvalidSnapshot.NotFound", 400)
    assert MISSING_SNAPSHOT in message


@pytest.mark.parametrize("bad_id", ["snap-1", "snap-0123456789ABCDEF0", "snapshot-12345678"])
def test_malformed_snapshot_id_is_invalid_snapshot_id_malformed(ec2: Any, bad_id: str) -> None:
    for operation, params in (
        (ec2.describe_snapshots, {"SnapshotIds": [bad_id]}),
        (ec2.delete_snapshot, {"SnapshotId": bad_id}),
    ):
        code, _, status = aws_error(operation, **params)
        assert (code, status) == ("InvalidSnapshotID.Malformed", 400)


def test_deleted_snapshot_is_not_found_and_cannot_be_restored(ec2: Any) -> None:
    volume_id = new_volume(ec2)
    snapshot_id = new_snapshot(ec2, volume_id)
    ec2.delete_volume(VolumeId=volume_id)
    ec2.delete_snapshot(SnapshotId=snapshot_id)
    for operation, params in (
        (ec2.describe_snapshots, {"SnapshotIds": [snapshot_id]}),
        (ec2.delete_snapshot, {"SnapshotId": snapshot_id}),
        (ec2.create_volume, {"AvailabilityZone": ZONE, "SnapshotId": snapshot_id}),
    ):
        assert aws_error(operation, **params)[0] == "InvalidSnapshot.NotFound"


def test_snapshot_tag_specification_for_a_volume_is_invalid(ec2: Any) -> None:
    volume_id = new_volume(ec2)
    code, message, _ = aws_error(
        ec2.create_snapshot, VolumeId=volume_id, TagSpecifications=tag_spec("volume", a="b")
    )
    ec2.delete_volume(VolumeId=volume_id)
    assert code == "InvalidParameterValue" and "volume" in message


def test_snapshot_description_over_255_characters_is_invalid(ec2: Any) -> None:
    volume_id = new_volume(ec2)
    code, _, _ = aws_error(ec2.create_snapshot, VolumeId=volume_id, Description="d" * 256)
    ec2.delete_volume(VolumeId=volume_id)
    assert code == "InvalidParameterValue"


def test_dry_run_create_and_delete_snapshot_change_nothing(ec2: Any) -> None:
    run = unique()
    volume_id = new_volume(ec2)
    code, message, status = aws_error(
        ec2.create_snapshot,
        VolumeId=volume_id,
        DryRun=True,
        TagSpecifications=tag_spec("snapshot", run=run),
    )
    assert (code, message, status) == ("DryRunOperation", DRY_RUN_MESSAGE, 412)
    filters = [{"Name": "tag:run", "Values": [run]}]
    assert ec2.describe_snapshots(Filters=filters)["Snapshots"] == []

    snapshot_id = new_snapshot(ec2, volume_id)
    code, _, status = aws_error(ec2.delete_snapshot, SnapshotId=snapshot_id, DryRun=True)
    assert (code, status) == ("DryRunOperation", 412)
    assert ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]["State"] == "completed"
    ec2.delete_snapshot(SnapshotId=snapshot_id)
    ec2.delete_volume(VolumeId=volume_id)


@pytest.mark.skipif(not HAVE_QEMU, reason=NEEDS_QEMU)
def test_a_snapshot_of_an_attached_volume_that_cannot_be_frozen_ends_in_error(
    tmp_path: Path,
) -> None:
    """Where the views directory is unusable (here a file), the first snapshot of an attached
    volume cannot even learn how it would be frozen: the snapshot ends in `error` and its job
    is closed, not an internal error with the snapshot pending for good."""
    sockets = tmp_path / "qmp"
    sockets.mkdir()
    config = TEST_CONFIG + f"\n[vmm kvm]\ndriver = qemu\nzone = {ZONE}\nsocket_dir = {sockets}\n"
    with running_vm(sockets, "frozenvm", ports=2):
        server = ServerProcess(tmp_path / "data", config)
        server.start()
        try:
            ec2 = server.client()
            volume_id = new_volume(ec2)
            instance = instance_id("kvm", "frozenvm")
            ec2.attach_volume(VolumeId=volume_id, InstanceId=instance, Device="/dev/sdf")

            def attached() -> bool | None:
                (volume,) = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"]
                return True if volume["Attachments"][0]["State"] == "attached" else None

            poll(attached, timeout=60)
            views = server.data_dir / "storage" / "views"
            shutil.rmtree(views, ignore_errors=True)
            views.write_bytes(b"")
            created = ec2.create_snapshot(VolumeId=volume_id)
            assert created["State"] == "error"
            jobs = server.rows("SELECT state FROM jobs WHERE kind = 'capture_snapshot'")
            assert len(jobs) == 1 and jobs[0][0] != "running"
            ec2.detach_volume(VolumeId=volume_id)
            ec2.get_waiter("volume_available").wait(VolumeIds=[volume_id], WaiterConfig=FAST)
        finally:
            server.stop()
