"""The CopySnapshot / CreateSnapshots adapters' output matches botocore's shapes."""

from __future__ import annotations

from datetime import UTC, datetime

from ebsemu.api.actions import ACTIONS
from ebsemu.api.actions_copies import snapshot_info_view
from ebsemu.api.codec import ec2_model
from ebsemu.model import Snapshot, SnapshotState


def test_both_actions_are_registered() -> None:
    assert {"CopySnapshot", "CreateSnapshots"} <= set(ACTIONS)


def test_snapshot_info_view_emits_only_members_of_snapshot_info() -> None:
    snapshot = Snapshot(
        id="snap-0123456789abcdef0",
        owner_id="000000000000",
        region="us-east-1",
        volume_id="vol-0123456789abcdef0",
        volume_size_gib=8,
        state=SnapshotState.PENDING,
        start_time=datetime(2026, 1, 2, tzinfo=UTC),
        description="d",
        tags={"k": "v"},
    )
    view = snapshot_info_view(snapshot)
    members = set(ec2_model().shape_for("SnapshotInfo").members)
    assert set(view) <= members
    assert view["Progress"] == "0%" and view["State"] == "pending"
    assert view["Tags"] == [{"Key": "k", "Value": "v"}]
