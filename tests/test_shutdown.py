"""SIGTERM stops the server in order: a job still running when the grace period ends is
cancelled with its intent record kept, the process exits 0, and the next start finishes it."""

from __future__ import annotations

import hashlib
import signal
from pathlib import Path
from typing import Any

from ebsemu import faults
from tests.api_support import FAST, new_volume
from tests.server import TEST_CONFIG, ServerProcess

BLOCK = 512 * 1024


def _write_block(data_dir: Path, volume_id: str, index: int, data: bytes) -> None:
    with (data_dir / "storage" / "volumes" / volume_id / "seg-0000").open("r+b") as f:
        f.seek(index * BLOCK)
        f.write(data)


def _block(data_dir: Path, volume_id: str, index: int) -> bytes:
    with (data_dir / "storage" / "volumes" / volume_id / "seg-0000").open("rb") as f:
        f.seek(index * BLOCK)
        return f.read(BLOCK)


def test_sigterm_during_a_snapshot_exits_cleanly_and_the_restart_completes_it(
    tmp_path: Path,
) -> None:
    server = ServerProcess(
        tmp_path / "data", TEST_CONFIG, env={faults.ENV: "snapshot.batch:1:hang"}
    )
    server.start()
    try:
        ec2: Any = server.client()
        volume_id = new_volume(ec2)
        data = hashlib.sha256(b"shutdown").digest() * (BLOCK // 32)
        _write_block(server.data_dir, volume_id, 7, data)
        snapshot_id = ec2.create_snapshot(VolumeId=volume_id)["SnapshotId"]
        [snapshot] = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
        assert snapshot["State"] == "pending"

        assert server.proc is not None
        proc = server.proc
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        server.proc = None
        log = server.log_path.read_text()
        assert "interrupted by shutdown" in log

        server.env[faults.ENV] = None
        server.start()
        ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[snapshot_id], WaiterConfig=FAST)
        restored = new_volume(ec2, SnapshotId=snapshot_id)
        assert _block(server.data_dir, restored, 7) == data
    finally:
        server.stop()
