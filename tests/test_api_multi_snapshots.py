"""CreateSnapshots through boto3 against a real server whose instance is a real QEMU VM with
three volumes attached.

The VM has a second QMP monitor, outside the VMM's socket directory, on which the test watches
QEMU's STOP and RESUME events and writes into the disks through QEMU's own block layer
(``qemu-io`` on each disk's BlockBackend), as the guest would. What proves one instant: the VM
was stopped (a STOP event, query-status `paused` seen by nobody else) before the first view was
taken and resumed (RESUME) after the last, in the order the server logged them; each snapshot
holds what was written through QEMU before the call and nothing written after it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.config import Config as BotoConfig

from backends import sparse
from backends.vmm.qmp import QmpClient
from ebsemu.service.instances import instance_id
from tests.api_support import (
    DRY_RUN_MESSAGE,
    FAST,
    aws_error,
    new_volume,
    poll,
    tag_spec,
    unique,
    volume_segment,
)
from tests.server import DEFAULT_ACCOUNT, TEST_CONFIG, ZONE, ServerProcess
from tests.vmm_fixtures import HAVE_QEMU, NEEDS_QEMU, QemuVm, qemu_argv

pytestmark = pytest.mark.skipif(not HAVE_QEMU, reason=NEEDS_QEMU)

BLOCK = 512 * 1024
VMM = "kvm"
VM = "db"
DEVICES = ("/dev/sdf", "/dev/sdg", "/dev/sdh")
MISSING_INSTANCE = "i-0123456789abcdef0"


@dataclass
class Lab:
    server: ServerProcess
    ec2: Any
    once: Any  # a client that does not retry (for answers that are errors by design)
    vm: QemuVm
    watch: Path  # the second QMP monitor's socket
    iid: str
    volumes: dict[str, str]  # device -> volume id

    def log(self) -> str:
        return self.server.log_path.read_text(errors="replace")


@contextlib.contextmanager
def watched_vm(socket_dir: Path, watch: Path) -> Iterator[QemuVm]:
    """A diskless QEMU VM whose QMP socket the VMM finds in ``socket_dir``, with a second
    QMP monitor at ``watch`` for the test."""
    socket = socket_dir / f"{VM}.qmp"
    pidfile = watch.with_suffix(".pid")
    argv = [*qemu_argv(socket, pidfile, ports=4), "-qmp", f"unix:{watch},server=on,wait=off"]
    subprocess.run(argv, check=True, timeout=30, capture_output=True)
    vm = QemuVm(VM, socket, int(pidfile.read_text().strip()))
    try:
        yield vm
    finally:
        vm.stop()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    work = tmp_path_factory.mktemp("multi")
    socket_dir = work / "qmp"
    socket_dir.mkdir()
    config = (
        TEST_CONFIG
        + f"""
[vmm {VMM}]
driver = qemu
zone = {ZONE}
socket_dir = {socket_dir}
"""
    )
    with contextlib.ExitStack() as stack:
        vm = stack.enter_context(watched_vm(socket_dir, work / "watch.sock"))
        # The file backend: the tests read and break the volumes' segment files.
        server = ServerProcess(work / "data", config, backend="file")
        stack.callback(server.stop)
        server.start()
        ec2 = server.client()
        once = server.client(config=BotoConfig(retries={"total_max_attempts": 1}))
        iid = instance_id(VMM, VM)
        volumes = {}
        for device in DEVICES:
            volume_id = new_volume(
                ec2, TagSpecifications=tag_spec("volume", Name=f"data-{device[-3:]}")
            )
            ec2.attach_volume(VolumeId=volume_id, InstanceId=iid, Device=device)
            volumes[device] = volume_id
        ec2.get_waiter("volume_in_use").wait(VolumeIds=list(volumes.values()), WaiterConfig=FAST)
        poll(lambda: True if attached_count(ec2, list(volumes.values())) == 3 else None)
        yield Lab(server, ec2, once, vm, work / "watch.sock", iid, volumes)


def attached_count(ec2: Any, volume_ids: list[str]) -> int:
    found = ec2.describe_volumes(VolumeIds=volume_ids)["Volumes"]
    return sum(1 for v in found if v["Attachments"] and v["Attachments"][0]["State"] == "attached")


# ---- the watching monitor -------------------------------------------------------------------


async def _hmp(watch: Path, command: str) -> str:
    async with await QmpClient.connect(watch, timeout=5) as client:
        out = await client.execute("human-monitor-command", {"command-line": command}, timeout=30)
    return str(out)


def write_through_qemu(lab: Lab, device: str, index: int, fill: int) -> None:
    """Write one 512 KiB block of byte ``fill`` at block ``index`` of the disk attached as
    ``device``, through that disk's BlockBackend in QEMU (as the guest's writes go)."""
    qdev = f"/machine/peripheral/ebs.{lab.volumes[device]}.{device[5:]}/virtio-backend"
    command = f'qemu-io -d {qdev} "write -P {fill:#x} {index * BLOCK} {BLOCK}"'
    out = asyncio.run(_hmp(lab.watch, command))
    assert out == "", out  # qemu-io reports errors only
    assert read_block(lab, lab.volumes[device], index) == bytes([fill]) * BLOCK


def status(lab: Lab) -> str:
    async def query() -> str:
        async with await QmpClient.connect(lab.watch, timeout=5) as client:
            return str((await client.execute("query-status", timeout=10))["status"])

    return asyncio.run(query())


class Watcher:
    """Holds a connection to the watching monitor while a call runs: the events QEMU emits
    meanwhile (STOP, RESUME) are kept with their timestamps."""

    def __init__(self, lab: Lab) -> None:
        self._lab = lab
        self.events: list[dict[str, Any]] = []

    def during(self, call: Any) -> Any:
        async def watched() -> Any:
            async with await QmpClient.connect(self._lab.watch, timeout=5) as client:
                result = await asyncio.to_thread(call)
                await asyncio.sleep(0.2)  # let the last events arrive
                self.events = [e for e in client.recent_events if e["event"] in NAMES]
            return result

        return asyncio.run(watched())

    @property
    def names(self) -> list[str]:
        return [e["event"] for e in self.events]


NAMES = ("STOP", "RESUME")


def read_block(lab: Lab, volume_id: str, index: int) -> bytes:
    with volume_segment(lab.server.data_dir, volume_id).open("rb") as handle:
        handle.seek(index * BLOCK)
        return handle.read(BLOCK)


def restore(lab: Lab, snapshot_id: str) -> str:
    return new_volume(lab.ec2, SnapshotId=snapshot_id)


def by_volume(snapshots: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {s["VolumeId"]: s for s in snapshots}


# ---- tests ------------------------------------------------------------------------------------


def test_three_volumes_are_snapshotted_at_one_instant_with_the_vm_paused_meanwhile(
    lab: Lab,
) -> None:
    run = unique()
    fills = {device: 0x11 * (n + 1) for n, device in enumerate(DEVICES)}
    for device, fill in fills.items():
        write_through_qemu(lab, device, 4, fill)
    log_start = len(lab.log())
    watcher = Watcher(lab)
    answer = watcher.during(
        lambda: lab.ec2.create_snapshots(
            InstanceSpecification={"InstanceId": lab.iid},
            Description=f"consistent {run}",
            TagSpecifications=tag_spec("snapshot", run=run),
        )
    )
    for device in DEVICES:  # after the call: in the volumes, not in the snapshots
        write_through_qemu(lab, device, 4, 0xEE)
    snapshots = answer["Snapshots"]
    assert sorted(s["VolumeId"] for s in snapshots) == sorted(lab.volumes.values())
    for snapshot in snapshots:
        assert snapshot["State"] == "pending"
        assert snapshot["Description"] == f"consistent {run}"
        assert snapshot["OwnerId"] == DEFAULT_ACCOUNT
        assert snapshot["VolumeSize"] == 1
        assert snapshot["Tags"] == [{"Key": "run", "Value": run}]
    assert len({s["StartTime"] for s in snapshots}) == 1

    # QEMU stopped once and resumed once, and runs again.
    assert watcher.names == ["STOP", "RESUME"]
    assert status(lab) == "running"
    # The server's log: paused, then every view, then resumed.
    log = lab.log()[log_start:]
    paused = log.index(f"{VM}: paused (stop)")
    resumed = log.index(f"{VM}: resumed (cont)")
    views = [m.start() for m in re.finditer(r"froze volume (vol-\w+) as view", log)]
    frozen = re.findall(r"froze volume (vol-\w+) as view", log)
    assert sorted(frozen) == sorted(lab.volumes.values())
    assert all(paused < at < resumed for at in views)

    ids = [s["SnapshotId"] for s in snapshots]
    lab.ec2.get_waiter("snapshot_completed").wait(SnapshotIds=ids, WaiterConfig=FAST)
    described = by_volume(lab.ec2.describe_snapshots(SnapshotIds=ids)["Snapshots"])
    for device, volume_id in lab.volumes.items():
        snapshot = described[volume_id]
        assert snapshot["State"] == "completed"
        restored = restore(lab, snapshot["SnapshotId"])
        assert read_block(lab, restored, 4) == bytes([fills[device]]) * BLOCK
        assert read_block(lab, volume_id, 4) == bytes([0xEE]) * BLOCK
        lab.ec2.delete_volume(VolumeId=restored)
    for snapshot_id in ids:
        lab.ec2.delete_snapshot(SnapshotId=snapshot_id)


def test_create_snapshot_pauses_the_vm_while_it_copies_an_attached_volume(lab: Lab) -> None:
    """Without reflink the view is a copy, which a guest writing meanwhile would tear: the VM
    is paused for it. A reflinked view is taken at one instant and needs no pause."""
    volume_id = lab.volumes["/dev/sdg"]
    write_through_qemu(lab, "/dev/sdg", 9, 0x5A)
    log_start = len(lab.log())
    watcher = Watcher(lab)
    snapshot_id = watcher.during(lambda: lab.ec2.create_snapshot(VolumeId=volume_id))["SnapshotId"]
    write_through_qemu(lab, "/dev/sdg", 9, 0xA5)  # after the call: not in the snapshot
    assert status(lab) == "running"
    log = lab.log()[log_start:]
    froze = log.index(f"froze volume {volume_id} as view {snapshot_id}")
    if sparse.reflinks(lab.server.data_dir / "storage" / "views"):
        assert watcher.names == []
    else:
        assert watcher.names == ["STOP", "RESUME"]
        assert log.index(f"{VM}: paused (stop)") < froze < log.index(f"{VM}: resumed (cont)")
    lab.ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[snapshot_id], WaiterConfig=FAST)
    restored = restore(lab, snapshot_id)
    assert read_block(lab, restored, 9) == bytes([0x5A]) * BLOCK
    lab.ec2.delete_volume(VolumeId=restored)
    lab.ec2.delete_snapshot(SnapshotId=snapshot_id)


def test_excluded_data_volumes_are_left_out_and_boot_exclusion_keeps_data_volumes(
    lab: Lab,
) -> None:
    left_out = lab.volumes["/dev/sdg"]
    answer = lab.ec2.create_snapshots(
        InstanceSpecification={
            "InstanceId": lab.iid,
            "ExcludeBootVolume": True,
            "ExcludeDataVolumeIds": [left_out],
        }
    )
    got = sorted(s["VolumeId"] for s in answer["Snapshots"])
    assert got == sorted([lab.volumes["/dev/sdf"], lab.volumes["/dev/sdh"]])
    every = lab.ec2.create_snapshots(
        InstanceSpecification={
            "InstanceId": lab.iid,
            "ExcludeDataVolumeIds": list(lab.volumes.values()),
        }
    )
    assert every["Snapshots"] == []
    ids = [s["SnapshotId"] for s in answer["Snapshots"]]
    lab.ec2.get_waiter("snapshot_completed").wait(SnapshotIds=ids, WaiterConfig=FAST)
    for snapshot_id in ids:
        lab.ec2.delete_snapshot(SnapshotId=snapshot_id)
    assert status(lab) == "running"


def test_copy_tags_from_source_puts_each_volumes_tags_on_its_snapshot(lab: Lab) -> None:
    run = unique()
    answer = lab.ec2.create_snapshots(
        InstanceSpecification={"InstanceId": lab.iid},
        CopyTagsFromSource="volume",
        TagSpecifications=tag_spec("snapshot", run=run),
    )
    found = by_volume(answer["Snapshots"])
    for device, volume_id in lab.volumes.items():
        tags = {t["Key"]: t["Value"] for t in found[volume_id]["Tags"]}
        assert tags == {"Name": f"data-{device[-3:]}", "run": run}
    ids = [s["SnapshotId"] for s in answer["Snapshots"]]
    lab.ec2.get_waiter("snapshot_completed").wait(SnapshotIds=ids, WaiterConfig=FAST)
    described = by_volume(lab.ec2.describe_snapshots(SnapshotIds=ids)["Snapshots"])
    assert {t["Key"] for t in described[lab.volumes["/dev/sdf"]]["Tags"]} == {"Name", "run"}
    for snapshot_id in ids:
        lab.ec2.delete_snapshot(SnapshotId=snapshot_id)


def test_a_failing_view_resumes_the_vm_drops_the_views_taken_and_creates_nothing(
    lab: Lab,
) -> None:
    run = unique()
    broken = lab.volumes["/dev/sdg"]
    layout = volume_segment(lab.server.data_dir, broken).with_name("volume.json")
    hidden = layout.with_name(".volume.json.hidden")
    views = lab.server.data_dir / "storage" / "views"
    before = set(os.listdir(views)) if views.exists() else set()
    layout.rename(hidden)  # the view of this volume cannot be taken
    try:
        watcher = Watcher(lab)
        code, message, status_code = watcher.during(
            lambda: aws_error(
                lab.once.create_snapshots,
                InstanceSpecification={"InstanceId": lab.iid},
                TagSpecifications=tag_spec("snapshot", run=run),
            )
        )
    finally:
        hidden.rename(layout)
    assert (code, status_code) == ("InternalError", 500)
    assert broken in message
    assert watcher.names == ["STOP", "RESUME"]
    assert status(lab) == "running"
    found = lab.ec2.describe_snapshots(Filters=[{"Name": "tag:run", "Values": [run]}])
    assert found["Snapshots"] == []
    after = set(os.listdir(views)) if views.exists() else set()
    assert after <= before  # no view left (one an earlier test's snapshot dropped may be gone)


def _snapshot_all(lab: Lab) -> dict[str, str]:
    """CreateSnapshots of the instance, waited for: volume id -> snapshot id."""
    answer = lab.ec2.create_snapshots(InstanceSpecification={"InstanceId": lab.iid})
    ids = {s["VolumeId"]: s["SnapshotId"] for s in answer["Snapshots"]}
    waiter = lab.ec2.get_waiter("snapshot_completed")
    waiter.wait(SnapshotIds=list(ids.values()), WaiterConfig=FAST)
    return ids


def test_later_views_hold_only_the_changed_blocks_and_a_failure_leaves_no_manifest(
    lab: Lab,
) -> None:
    if sparse.reflinks(lab.server.data_dir / "storage"):
        pytest.skip("the data filesystem has reflink: views share extents, nothing is hashed")
    for device in DEVICES:
        write_through_qemu(lab, device, 6, 0x21)
    first = _snapshot_all(lab)
    for device in DEVICES:
        write_through_qemu(lab, device, 7, 0x31)
    second = _snapshot_all(lab)
    log = lab.log()
    for volume_id, snapshot_id in second.items():
        assert f"froze volume {volume_id} as view {snapshot_id} by digest" in log
        differ = f"volume {volume_id}: 1 of 2048 blocks differ from snapshot {first[volume_id]}"
        assert differ in log
    restored = restore(lab, second[lab.volumes["/dev/sdf"]])
    assert read_block(lab, restored, 6) == bytes([0x21]) * BLOCK
    assert read_block(lab, restored, 7) == bytes([0x31]) * BLOCK
    lab.ec2.delete_volume(VolumeId=restored)

    write_through_qemu(lab, "/dev/sdf", 8, 0x41)  # the other two stay as they were: no view
    third = _snapshot_all(lab)
    log = lab.log()
    for device, volume_id in lab.volumes.items():
        unchanged = re.search(rf"snapshot {third[volume_id]}: completed, \d+ blocks, none ch", log)
        viewed = f"froze volume {volume_id} as view {third[volume_id]} by digest" in log
        assert (bool(unchanged), viewed) == (device != "/dev/sdf", device == "/dev/sdf")
    restored = restore(lab, third[lab.volumes["/dev/sdg"]])
    assert read_block(lab, restored, 6) == bytes([0x21]) * BLOCK
    assert read_block(lab, restored, 7) == bytes([0x31]) * BLOCK
    lab.ec2.delete_volume(VolumeId=restored)

    # The last volume cannot be frozen: the two frozen before it had their manifests seeded.
    layout = volume_segment(lab.server.data_dir, lab.volumes["/dev/sdh"]).with_name("volume.json")
    hidden = layout.with_name(".volume.json.hidden")
    log_start = len(lab.log())
    layout.rename(hidden)
    try:
        code, _, _ = aws_error(
            lab.once.create_snapshots, InstanceSpecification={"InstanceId": lab.iid}
        )
    finally:
        hidden.rename(layout)
    assert code == "InternalError"
    log = lab.log()[log_start:]
    given_up = re.findall(r"snapshot (snap-\w+) of (vol-\w+): freezing the blocks", log)
    assert {volume_id for _, volume_id in given_up} == set(lab.volumes.values())
    for snapshot_id, _ in given_up:
        assert f"snapshot {snapshot_id}: manifest dropped" in log
    manifests = {row[0] for row in lab.server.rows("SELECT snapshot_id FROM snapshot_blocks")}
    assert manifests <= {*first.values(), *second.values(), *third.values()}
    for snapshot_id in (*first.values(), *second.values(), *third.values()):
        lab.ec2.delete_snapshot(SnapshotId=snapshot_id)


def test_a_vm_paused_already_is_not_resumed_by_create_snapshots(lab: Lab) -> None:
    async def hmp_stop_cont(command: str) -> None:
        async with await QmpClient.connect(lab.watch, timeout=5) as client:
            await client.execute(command, timeout=10)

    asyncio.run(hmp_stop_cont("stop"))
    try:
        watcher = Watcher(lab)
        answer = watcher.during(
            lambda: lab.ec2.create_snapshots(InstanceSpecification={"InstanceId": lab.iid})
        )
        assert watcher.names == []
        assert status(lab) == "paused"
    finally:
        asyncio.run(hmp_stop_cont("cont"))
    ids = [s["SnapshotId"] for s in answer["Snapshots"]]
    assert len(ids) == 3
    lab.ec2.get_waiter("snapshot_completed").wait(SnapshotIds=ids, WaiterConfig=FAST)
    for snapshot_id in ids:
        lab.ec2.delete_snapshot(SnapshotId=snapshot_id)


def test_unknown_instances_outposts_bad_options_and_dry_run_are_refused(lab: Lab) -> None:
    code, message, _ = aws_error(
        lab.ec2.create_snapshots, InstanceSpecification={"InstanceId": MISSING_INSTANCE}
    )
    assert code == "InvalidInstanceID.NotFound" and MISSING_INSTANCE in message
    code, _, _ = aws_error(lab.ec2.create_snapshots, InstanceSpecification={"InstanceId": "i-nope"})
    assert code == "InvalidInstanceID.Malformed"
    spec = {"InstanceId": lab.iid}
    code, message, _ = aws_error(
        lab.ec2.create_snapshots,
        InstanceSpecification=spec,
        OutpostArn="arn:aws:outposts:us-east-1:123456789012:outpost/op-1",
    )
    assert code == "UnsupportedOperation" and "Outpost" in message
    code, _, _ = aws_error(
        lab.ec2.create_snapshots, InstanceSpecification=spec, CopyTagsFromSource="instance"
    )
    assert code == "InvalidParameterValue"
    code, _, _ = aws_error(
        lab.ec2.create_snapshots,
        InstanceSpecification={**spec, "ExcludeDataVolumeIds": ["vol-nope"]},
    )
    assert code == "InvalidVolumeID.Malformed"
    code, _, _ = aws_error(
        lab.ec2.create_snapshots, InstanceSpecification=spec, Description="x" * 256
    )
    assert code == "InvalidParameterValue"
    code, _, _ = aws_error(
        lab.ec2.create_snapshots,
        InstanceSpecification=spec,
        TagSpecifications=tag_spec("volume", a="b"),
    )
    assert code == "InvalidParameterValue"
    run = unique()
    watcher = Watcher(lab)
    code, message, status_code = watcher.during(
        lambda: aws_error(
            lab.ec2.create_snapshots,
            InstanceSpecification=spec,
            DryRun=True,
            TagSpecifications=tag_spec("snapshot", run=run),
        )
    )
    assert (code, message, status_code) == ("DryRunOperation", DRY_RUN_MESSAGE, 412)
    assert watcher.names == []
    found = lab.ec2.describe_snapshots(Filters=[{"Name": "tag:run", "Values": [run]}])
    assert found["Snapshots"] == []


def test_aws_cli_create_snapshots_with_exclusions_and_copied_tags(lab: Lab) -> None:
    left_out = lab.volumes["/dev/sdh"]
    argv = [
        str(Path(sys.executable).with_name("aws")),
        "ec2",
        "create-snapshots",
        "--instance-specification",
        f"InstanceId={lab.iid},ExcludeBootVolume=true,ExcludeDataVolumeIds={left_out}",
        "--copy-tags-from-source",
        "volume",
        "--description",
        "cli set",
        "--endpoint-url",
        lab.server.url,
        "--output",
        "json",
    ]
    done = subprocess.run(
        argv, env=lab.server.cli_env(), capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    snapshots = json.loads(done.stdout)["Snapshots"]
    assert sorted(s["VolumeId"] for s in snapshots) == sorted(
        [lab.volumes["/dev/sdf"], lab.volumes["/dev/sdg"]]
    )
    assert {s["Description"] for s in snapshots} == {"cli set"}
    assert {t["Value"] for s in snapshots for t in s["Tags"]} == {"data-sdf", "data-sdg"}
    ids = [s["SnapshotId"] for s in snapshots]
    lab.ec2.get_waiter("snapshot_completed").wait(SnapshotIds=ids, WaiterConfig=FAST)
    for snapshot_id in ids:
        lab.ec2.delete_snapshot(SnapshotId=snapshot_id)
