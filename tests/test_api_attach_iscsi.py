"""Storage and VMM apart: with `[export] backend = tgt`, AttachVolume exports the volume from a
real tgtd with per-volume CHAP, and the QEMU VM opens it as an iscsi:// block device."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from ebsemu.service.instances import instance_id
from tests.api_support import FAST, new_volume, poll, volume_segment
from tests.server import ServerProcess
from tests.tgt_fixtures import Tgtd, running_tgtd
from tests.vmm_fixtures import QemuVm, qmp, run, running_vm

MIB = 1024 * 1024


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[ServerProcess, Tgtd, QemuVm]]:
    sockets = tmp_path / "qmp"
    sockets.mkdir()
    with running_tgtd(tmp_path) as tgtd, running_vm(sockets, "vm1", ports=4) as vm:
        config = (
            "[export]\nbackend = tgt\n"
            f"record_dir = {tmp_path / 'exports'}\nportal = {tgtd.portal}\n"
            f"control_port = {tgtd.control_port}\n"
            "[vmm kvm1]\ndriver = qemu\nzone = us-east-1a\n"
            f"socket_dir = {sockets}\ninitiator_address = 127.0.0.1\n"
        )
        # The file backend: tgt exports the volumes' files; the tests read them back.
        server = ServerProcess(tmp_path / "data", config, backend="file")
        server.start()
        try:
            yield server, tgtd, vm
        finally:
            server.stop()


def _recorded_chap_secret(server: ServerProcess, volume_id: str) -> Any:
    rows = server.rows("SELECT record FROM exports WHERE volume_id = ?", volume_id)
    found = [json.loads(record)["source"]["chap_secret"] for (record,) in rows]
    return found[0] if found else None


def _attached(ec2: Any, volume_id: str) -> bool | None:
    [volume] = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"]
    states = [a["State"] for a in volume["Attachments"]]
    return True if states == ["attached"] else None


def test_attach_exports_over_iscsi_with_chap_and_guest_writes_land_in_the_volume(
    lab: tuple[ServerProcess, Tgtd, QemuVm],
) -> None:
    server, tgtd, vm = lab
    ec2 = server.client()
    [reservation] = ec2.describe_instances()["Reservations"]
    instance_id = reservation["Instances"][0]["InstanceId"]
    volume_id = new_volume(ec2)

    ec2.attach_volume(VolumeId=volume_id, InstanceId=instance_id, Device="/dev/sdf")
    poll(lambda: _attached(ec2, volume_id))

    targets = tgtd.show_targets()
    assert f"org.ebsemu:{volume_id}" in targets
    assert "127.0.0.1" in targets  # the initiator ACL names the VMM host only
    assert len(tgtd.accounts()) == 1  # one CHAP account, for this volume
    [disk] = [b for b in run(qmp(vm, "query-block")) if b.get("qdev")]
    opened = disk["inserted"]["file"]  # raw over iscsi, as QEMU describes the node
    assert '"driver": "iscsi"' in opened
    assert f"iqn.2010-10.org.ebsemu:{volume_id}" in opened
    assert '"password-secret"' in opened  # the secret is a QEMU secret object, never inline

    backend = f"{disk['qdev']}"
    out = run(
        qmp(vm, "human-monitor-command",
            {"command-line": f'qemu-io -d {backend} "write -P 0x3c 0 1M"'})
    )  # fmt: skip
    assert out == "", out
    secret = _recorded_chap_secret(server, volume_id)
    assert len(secret) >= 16
    assert secret not in server.log_path.read_text()

    ec2.detach_volume(VolumeId=volume_id)
    ec2.get_waiter("volume_available").wait(VolumeIds=[volume_id], WaiterConfig=FAST)
    assert f"org.ebsemu:{volume_id}" not in tgtd.show_targets()
    assert tgtd.accounts() == []
    with volume_segment(server.data_dir, volume_id).open("rb") as handle:
        assert handle.read(MIB) == b"\x3c" * MIB
    assert _recorded_chap_secret(server, volume_id) is None  # the record went with the export


def test_exports_of_attached_volumes_come_back_after_tgtd_and_the_server_restart(
    lab: tuple[ServerProcess, Tgtd, QemuVm],
) -> None:
    server, tgtd, vm = lab
    ec2 = server.client()
    [reservation] = ec2.describe_instances()["Reservations"]
    instance_id = reservation["Instances"][0]["InstanceId"]
    volume_id = new_volume(ec2)
    ec2.attach_volume(VolumeId=volume_id, InstanceId=instance_id, Device="/dev/sdf")
    poll(lambda: _attached(ec2, volume_id))
    secret = _recorded_chap_secret(server, volume_id)
    accounts = tgtd.accounts()

    tgtd.crash()  # a host reboot: tgtd comes back empty
    tgtd.start()
    assert f"org.ebsemu:{volume_id}" not in tgtd.show_targets()
    server.stop()
    server.start()

    targets = tgtd.show_targets()
    assert f"org.ebsemu:{volume_id}" in targets and "127.0.0.1" in targets
    assert tgtd.accounts() == accounts  # the same CHAP user ...
    assert _recorded_chap_secret(server, volume_id) == secret  # ... and secret as before
    assert _attached(server.client(), volume_id)
    # The VM's iSCSI session logs in again with its secret and its writes land in the volume.
    # The first command after the new login reports the target's reset (a SCSI unit attention),
    # which a guest's SCSI layer retries; so does this test, once.
    [disk] = [b for b in run(qmp(vm, "query-block")) if b.get("qdev")]
    write = f'qemu-io -d {disk["qdev"]} "write -P 0x5e 0 1M"'
    out = run(qmp(vm, "human-monitor-command", {"command-line": write}))
    if "UNIT_ATTENTION" in out:
        out = run(qmp(vm, "human-monitor-command", {"command-line": write}))
    assert out == "", out
    with volume_segment(server.data_dir, volume_id).open("rb") as handle:
        assert handle.read(MIB) == b"\x5e" * MIB


@pytest.fixture
def shared_lab(tmp_path: Path) -> Iterator[tuple[ServerProcess, Tgtd, dict[str, QemuVm]]]:
    """Two VMs behind one initiator (kvm1) and one behind another (kvm2), one zone."""
    near, far = tmp_path / "qmp-1", tmp_path / "qmp-2"
    near.mkdir()
    far.mkdir()
    with (
        running_tgtd(tmp_path) as tgtd,
        running_vm(near, "vm1", ports=2) as vm1,
        running_vm(near, "vm2", ports=2) as vm2,
        running_vm(far, "vm3", ports=2) as vm3,
    ):
        config = (
            "[export]\nbackend = tgt\n"
            f"record_dir = {tmp_path / 'exports'}\nportal = {tgtd.portal}\n"
            f"control_port = {tgtd.control_port}\n"
            "[vmm kvm1]\ndriver = qemu\nzone = us-east-1a\n"
            f"socket_dir = {near}\ninitiator_address = 127.0.0.1\n"
            "[vmm kvm2]\ndriver = qemu\nzone = us-east-1a\n"
            f"socket_dir = {far}\ninitiator_address = 127.0.0.2\n"
        )
        server = ServerProcess(tmp_path / "data", config, backend="file")
        server.start()
        try:
            yield server, tgtd, {"vm1": vm1, "vm2": vm2, "vm3": vm3}
        finally:
            server.stop()


def _write(vm: QemuVm, volume_id: str, command: str) -> str:
    [disk] = [b for b in run(qmp(vm, "query-block")) if volume_id in str(b.get("qdev"))]
    line = f'qemu-io -d {disk["qdev"]} "{command}"'
    return str(run(qmp(vm, "human-monitor-command", {"command-line": line})))


def test_a_multi_attach_volume_shares_one_export_which_stays_until_its_last_detach(
    shared_lab: tuple[ServerProcess, Tgtd, dict[str, QemuVm]],
) -> None:
    server, tgtd, vms = shared_lab
    ec2 = server.client()
    ids = {
        instance["InstanceId"]: instance
        for reservation in ec2.describe_instances()["Reservations"]
        for instance in reservation["Instances"]
    }
    assert len(ids) == 3
    by_vm = {name: instance_id(vmm, name) for name, vmm in VM_HOSTS.items()}
    assert set(by_vm.values()) == set(ids)
    volume_id = new_volume(ec2, VolumeType="io2", Iops=100, Size=4, MultiAttachEnabled=True)
    for name in ("vm1", "vm2"):
        ec2.attach_volume(VolumeId=volume_id, InstanceId=by_vm[name], Device="/dev/sdf")
    attached = {by_vm["vm1"]: "attached", by_vm["vm2"]: "attached"}
    poll(lambda: _states(ec2, volume_id) == attached or None)
    assert tgtd.show_targets().count(f"org.ebsemu:{volume_id}") == 1  # one export for both
    assert len(tgtd.accounts()) == 1

    # vm3 is behind another initiator: the export admits one.
    with pytest.raises(ClientError) as refused:
        ec2.attach_volume(VolumeId=volume_id, InstanceId=by_vm["vm3"], Device="/dev/sdf")
    assert refused.value.response["Error"]["Code"] == "UnsupportedOperation"

    assert _write(vms["vm1"], volume_id, "write -P 0x71 0 1M") == ""
    assert _write(vms["vm2"], volume_id, "write -P 0x72 1M 1M") == ""

    ec2.detach_volume(VolumeId=volume_id, InstanceId=by_vm["vm1"])
    poll(lambda: _states(ec2, volume_id) == {by_vm["vm2"]: "attached"} or None)
    assert f"org.ebsemu:{volume_id}" in tgtd.show_targets()  # vm2 still reads through it
    assert _write(vms["vm2"], volume_id, "write -P 0x73 2M 1M") == ""

    ec2.detach_volume(VolumeId=volume_id, InstanceId=by_vm["vm2"])
    ec2.get_waiter("volume_available").wait(VolumeIds=[volume_id], WaiterConfig=FAST)
    assert f"org.ebsemu:{volume_id}" not in tgtd.show_targets()
    assert tgtd.accounts() == []
    with volume_segment(server.data_dir, volume_id).open("rb") as handle:
        assert handle.read(3 * MIB) == b"\x71" * MIB + b"\x72" * MIB + b"\x73" * MIB


VM_HOSTS = {"vm1": "kvm1", "vm2": "kvm1", "vm3": "kvm2"}


def _states(ec2: Any, volume_id: str) -> dict[str, str]:
    [volume] = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"]
    return {a["InstanceId"]: a["State"] for a in volume["Attachments"]}


def test_detaching_a_multi_attach_volume_from_both_instances_at_once_removes_its_export(
    shared_lab: tuple[ServerProcess, Tgtd, dict[str, QemuVm]],
) -> None:
    """Each detach job saw the other's attachment still recorded and kept the export for it,
    so the target and its CHAP account outlived both attachments. (The VMs are gone, so both
    detaches reach the export at once.)"""
    server, tgtd, vms = shared_lab
    ec2 = server.client()
    by_vm = {name: instance_id(VM_HOSTS[name], name) for name in ("vm1", "vm2")}
    volume_id = new_volume(ec2, VolumeType="io2", Iops=100, Size=4, MultiAttachEnabled=True)
    for instance in by_vm.values():
        ec2.attach_volume(VolumeId=volume_id, InstanceId=instance, Device="/dev/sdf")
    attached = {instance: "attached" for instance in by_vm.values()}
    poll(lambda: _states(ec2, volume_id) == attached or None)
    for name in by_vm:
        vms[name].kill()

    with ThreadPoolExecutor(2) as pool:
        detach = server.client().detach_volume
        list(pool.map(lambda i: detach(VolumeId=volume_id, InstanceId=i), by_vm.values()))
    ec2.get_waiter("volume_available").wait(VolumeIds=[volume_id], WaiterConfig=FAST)
    assert f"org.ebsemu:{volume_id}" not in tgtd.show_targets()
    assert tgtd.accounts() == []
    assert server.rows("SELECT volume_id FROM exports") == []
