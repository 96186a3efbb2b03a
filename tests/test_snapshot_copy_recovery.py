"""A snapshot copy's job after a crash, and when its blocks are not all in the block store."""

from __future__ import annotations

import os
from typing import Any

from tests.api_support import FAST, block_path, new_snapshot, new_volume, poll
from tests.server import REGION, ServerProcess
from tests.volume_data import read_blocks, write_blocks

BLOCK = 512 * 1024


def _sql(server: ServerProcess, statement: str, *params: Any) -> None:
    server.sql(statement, *params)


def _source(server: ServerProcess, ec2: Any, blocks: dict[int, bytes]) -> str:
    volume_id = new_volume(ec2)
    write_blocks(server, volume_id, blocks)
    return new_snapshot(ec2, volume_id)


def _settled(ec2: Any, snapshot_id: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        [snapshot] = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
        return snapshot if snapshot["State"] != "pending" else None

    return poll(probe)


def test_copy_left_pending_without_its_job_completes_after_restart_as_a_copy(
    fresh_server: ServerProcess,
) -> None:
    ec2 = fresh_server.client()
    data = {9: os.urandom(BLOCK)}
    source_id = _source(fresh_server, ec2, data)
    copy_id = ec2.copy_snapshot(SourceRegion=REGION, SourceSnapshotId=source_id)["SnapshotId"]
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[copy_id], WaiterConfig=FAST)
    fresh_server.stop()
    _sql(fresh_server, "UPDATE snapshots SET state = 'pending' WHERE id = ?", copy_id)
    _sql(fresh_server, "DELETE FROM job_steps")
    _sql(fresh_server, "DELETE FROM jobs")
    fresh_server.start()
    # Resumed as a copy (it has no frozen view to capture): completed, not error.
    assert _settled(ec2, copy_id)["State"] == "completed"
    log = fresh_server.log_path.read_text()
    assert f"copy_snapshot {copy_id} was left without its job" in log
    restored_id = new_volume(ec2, SnapshotId=copy_id)
    assert read_blocks(fresh_server, restored_id, [9]) == data


def test_copy_naming_a_block_missing_from_the_store_ends_in_error(
    fresh_server: ServerProcess,
) -> None:
    ec2 = fresh_server.client()
    data = {0: os.urandom(BLOCK), 1: os.urandom(BLOCK)}
    source_id = _source(fresh_server, ec2, data)
    block_path(fresh_server.data_dir, data[1]).unlink()
    copy_id = ec2.copy_snapshot(SourceRegion=REGION, SourceSnapshotId=source_id)["SnapshotId"]
    snapshot = _settled(ec2, copy_id)
    assert snapshot["State"] == "error"
    assert "missing" in snapshot["StateMessage"]
