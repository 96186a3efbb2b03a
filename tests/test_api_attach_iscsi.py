"""Storage and VMM apart: with `[export] backend = tgt`, AttachVolume exports the volume from a
real tgtd with per-volume CHAP, and the QEMU VM opens it as an iscsi:// block device."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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
