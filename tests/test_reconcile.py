"""`ebsemu reconcile`: the store against the file storage and the block store — a dry run
reports and changes nothing, a real run removes only what ebsemu owns and settles the rest; a
running server holds the data directory against both a second server and a real run."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

from tests.api_support import new_snapshot, new_volume
from tests.server import TEST_CONFIG, ServerProcess

ORPHAN_VOLUME = "vol-0123456789abcdef0"
ORPHAN_VIEW = "snap-0123456789abcdef0"
ORPHAN_BLOCK = b"no manifest names this block" + bytes(100)


def _reconcile(server: ServerProcess, *flags: str) -> tuple[int, dict[str, Any]]:
    done = server.ebsemu("reconcile", "--json", *flags)
    assert done.returncode in (0, 3), done.stderr
    return done.returncode, json.loads(done.stdout) if done.returncode == 0 else {}


def _kinds(report: dict[str, Any]) -> dict[str, set[str]]:
    kinds: dict[str, set[str]] = {}
    for finding in report["Findings"]:
        kinds.setdefault(finding["kind"], set()).add(finding["resource"])
    return kinds


def _block_path(data_dir: Path, data: bytes) -> Path:
    name = hashlib.sha256(data).hexdigest()
    return data_dir / "blocks" / name[0:2] / name[2:4] / name


def _query(server: ServerProcess, sql: str, *params: Any) -> list[Any]:
    with sqlite3.connect(server.data_dir / "ebsemu.sqlite3") as db:
        return list(db.execute(sql, params))


def test_dry_run_reports_orphans_without_touching_them_and_a_real_run_removes_only_ours(
    fresh_server: ServerProcess,
) -> None:
    ec2 = fresh_server.client()
    volume_id = new_volume(ec2)
    snapshot_id = new_snapshot(ec2, volume_id)
    fresh_server.stop()
    storage = fresh_server.data_dir / "storage"
    shutil.copytree(storage / "volumes" / volume_id, storage / "volumes" / ORPHAN_VOLUME)
    shutil.copytree(storage / "volumes" / volume_id, storage / "views" / ORPHAN_VIEW)
    (storage / "volumes" / "not-ours").mkdir()
    block = _block_path(fresh_server.data_dir, ORPHAN_BLOCK)
    block.parent.mkdir(parents=True, exist_ok=True)
    block.write_bytes(ORPHAN_BLOCK)

    code, report = _reconcile(fresh_server, "--dry-run")
    assert code == 0 and report["Applied"] is False
    kinds = _kinds(report)
    assert kinds["orphan-volume"] == {ORPHAN_VOLUME}
    assert kinds["orphan-view"] == {ORPHAN_VIEW}
    assert kinds["orphan-blocks"] == {"1 block(s)"}
    assert (storage / "volumes" / ORPHAN_VOLUME).exists()
    assert (storage / "views" / ORPHAN_VIEW).exists()
    assert block.exists()

    code, report = _reconcile(fresh_server)
    assert code == 0 and report["Applied"] is True
    assert _kinds(report).keys() == {"orphan-volume", "orphan-view", "orphan-blocks"}
    assert not (storage / "volumes" / ORPHAN_VOLUME).exists()
    assert not (storage / "views" / ORPHAN_VIEW).exists()
    assert not block.exists()
    assert (storage / "volumes" / "not-ours").exists()
    assert (storage / "volumes" / volume_id).exists()

    _, report = _reconcile(fresh_server)
    assert report["Findings"] == []
    fresh_server.start()
    [snapshot] = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
    assert snapshot["State"] == "completed"
    assert ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]["State"] == "available"


def test_a_running_server_refuses_a_real_run_and_a_second_server_but_allows_a_dry_run(
    fresh_server: ServerProcess, tmp_path: Path
) -> None:
    code, _ = _reconcile(fresh_server)
    assert code == 3
    code, report = _reconcile(fresh_server, "--dry-run")
    assert code == 0 and report["ServerRunning"] is True
    second = ServerProcess(fresh_server.data_dir, TEST_CONFIG)
    second.config_path = fresh_server.config_path
    try:
        second.start()
        raise AssertionError("a second server started on the same data directory")
    except RuntimeError as exc:
        assert "already running" in str(exc)


def test_a_completed_snapshot_whose_block_is_lost_becomes_error_with_a_message(
    fresh_server: ServerProcess,
) -> None:
    ec2 = fresh_server.client()
    volume_id = new_volume(ec2)
    fresh_server.stop()
    segment = fresh_server.data_dir / "storage" / "volumes" / volume_id / "seg-0000"
    data = b"\x5a" * 524288
    with segment.open("r+b") as f:
        f.write(data)
    fresh_server.start()
    snapshot_id = new_snapshot(ec2, volume_id)
    fresh_server.stop()
    _block_path(fresh_server.data_dir, data).unlink()

    _, report = _reconcile(fresh_server)
    assert _kinds(report)["missing-blocks"] == {snapshot_id}
    fresh_server.start()
    [snapshot] = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
    assert snapshot["State"] == "error"
    assert "missing" in snapshot["StateMessage"]


def test_an_offline_run_finishes_a_deletion_a_crash_left_half_done(
    fresh_server: ServerProcess,
) -> None:
    ec2 = fresh_server.client()
    volume_id = new_volume(ec2)
    fresh_server.stop()
    with sqlite3.connect(fresh_server.data_dir / "ebsemu.sqlite3") as db:
        db.execute("UPDATE volumes SET state = 'deleting' WHERE id = ?", (volume_id,))
        db.execute("DELETE FROM jobs")

    _, report = _reconcile(fresh_server, "--dry-run")
    assert _kinds(report)["stranded"] == {volume_id}
    assert _query(fresh_server, "SELECT state FROM volumes WHERE id = ?", volume_id) == [
        ("deleting",)
    ]
    code, report = _reconcile(fresh_server)
    assert code == 0
    assert _query(fresh_server, "SELECT state FROM volumes WHERE id = ?", volume_id) == [
        ("deleted",)
    ]
    assert not (fresh_server.data_dir / "storage" / "volumes" / volume_id).exists()
