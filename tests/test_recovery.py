"""A crash between a state change and its job's intent record leaves nothing stuck: at start-up
the server starts the missing job for every resource in a transitional state."""

from __future__ import annotations

from typing import Any

from tests.api_support import FAST, new_snapshot, new_volume, poll
from tests.server import ServerProcess


def _sql(server: ServerProcess, statement: str, *params: Any) -> None:
    server.sql(statement, *params)


def _forget_jobs(server: ServerProcess) -> None:
    _sql(server, "DELETE FROM job_steps")
    _sql(server, "DELETE FROM jobs")


def test_volume_left_creating_without_a_job_becomes_available_after_restart(
    fresh_server: ServerProcess,
) -> None:
    ec2 = fresh_server.client()
    volume_id = new_volume(ec2)
    fresh_server.stop()
    _sql(fresh_server, "UPDATE volumes SET state = 'creating' WHERE id = ?", volume_id)
    _forget_jobs(fresh_server)
    fresh_server.start()
    ec2.get_waiter("volume_available").wait(VolumeIds=[volume_id], WaiterConfig=FAST)


def test_volume_left_deleting_without_a_job_is_deleted_and_its_file_removed(
    fresh_server: ServerProcess,
) -> None:
    ec2 = fresh_server.client()
    volume_id = new_volume(ec2)
    fresh_server.stop()
    _sql(fresh_server, "UPDATE volumes SET state = 'deleting' WHERE id = ?", volume_id)
    _forget_jobs(fresh_server)
    fresh_server.start()
    ec2.get_waiter("volume_deleted").wait(VolumeIds=[volume_id], WaiterConfig=FAST)
    assert not (fresh_server.data_dir / "storage" / "volumes" / volume_id).exists()


def test_snapshot_left_pending_without_its_frozen_view_ends_in_error_not_pending(
    fresh_server: ServerProcess,
) -> None:
    ec2 = fresh_server.client()
    volume_id = new_volume(ec2)
    snapshot_id = new_snapshot(ec2, volume_id)
    fresh_server.stop()
    _sql(fresh_server, "UPDATE snapshots SET state = 'pending' WHERE id = ?", snapshot_id)
    _forget_jobs(fresh_server)
    fresh_server.start()

    def settled() -> dict[str, Any] | None:
        [snapshot] = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
        return snapshot if snapshot["State"] != "pending" else None

    snapshot = poll(settled)
    assert snapshot["State"] == "error"
    assert snapshot["StateMessage"]
