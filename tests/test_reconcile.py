"""`ebsemu reconcile`: the store against the file storage and the block store — a dry run
reports and changes nothing, a real run removes only what ebsemu owns and settles the rest
(a VM's disk no attachment records is detached); a running server holds the data directory
against both a second server and a real run."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from ebsemu.service.instances import instance_id
from tests.api_support import FAST, new_snapshot, new_volume, poll
from tests.block_support import StoredBlock
from tests.server import TEST_CONFIG, ZONE, ServerProcess
from tests.vmm_fixtures import HAVE_QEMU, NEEDS_QEMU, qmp, run, running_vm

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
    return server.rows(sql, *params)


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
    StoredBlock.of(fresh_server.data_dir / "blocks", data).unlink()

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
    fresh_server.sql("UPDATE volumes SET state = 'deleting' WHERE id = ?", volume_id)
    fresh_server.sql("DELETE FROM job_steps")
    fresh_server.sql("DELETE FROM jobs")

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


@pytest.mark.skipif(not HAVE_QEMU, reason=NEEDS_QEMU)
def test_a_disk_in_a_vm_that_no_attachment_records_is_detached_by_reconcile(
    tmp_path: Path,
) -> None:
    sockets = tmp_path / "qmp"
    sockets.mkdir()
    config = TEST_CONFIG + (
        f"\n[vmm rec-kvm]\ndriver = qemu\nzone = {ZONE}\nsocket_dir = {sockets}\n"
        "detach_timeout = 10\n"
    )
    with running_vm(sockets, "recvm", ports=2) as vm:
        server = ServerProcess(tmp_path / "data", config)
        server.start()
        try:
            ec2 = server.client()
            volume_id = new_volume(ec2)
            ec2.attach_volume(
                VolumeId=volume_id, InstanceId=instance_id("rec-kvm", "recvm"), Device="/dev/sdf"
            )
            ec2.get_waiter("volume_in_use").wait(VolumeIds=[volume_id], WaiterConfig=FAST)
            poll(lambda: True if _attached(ec2, volume_id) else None)
            assert volume_id in json.dumps(run(qmp(vm, "query-block")))
        finally:
            server.stop()
        # the record is lost
        server.sql("DELETE FROM attachments WHERE volume_id = ?", volume_id)
        server.sql("UPDATE volumes SET state = 'available' WHERE id = ?", volume_id)

        _, report = _reconcile(server, "--dry-run")
        orphan = f"{instance_id('rec-kvm', 'recvm')}/{volume_id}"
        assert _kinds(report)["orphan-disk"] == {orphan}
        assert volume_id in json.dumps(run(qmp(vm, "query-block")))
        _, report = _reconcile(server)
        assert _kinds(report)["orphan-disk"] == {orphan}
        assert volume_id not in json.dumps(run(qmp(vm, "query-block")))


def _attached(ec2: Any, volume_id: str) -> bool:
    [volume] = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"]
    return [a["State"] for a in volume["Attachments"]] == ["attached"]
