"""A volume on a storage host reached over SSH is exported from that host: the tgt export runs
its tgtadm commands through the storage host's SSH runner (a real sshd and a real tgtd on
127.0.0.1), a QEMU VM opens the volume over iSCSI, and the guest's writes land in the volume's
file on the storage host."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.api_support import FAST, new_volume, poll
from tests.server import TEST_CONFIG, ServerProcess
from tests.ssh_fixtures import HAVE_SSHD, NEEDS_SSHD, SshServer
from tests.tgt_fixtures import Tgtd, running_tgtd
from tests.vmm_fixtures import QemuVm, qmp, run, running_vm

pytestmark = pytest.mark.skipif(not HAVE_SSHD, reason=NEEDS_SSHD)

MIB = 1024 * 1024


@dataclass
class Lab:
    server: ServerProcess
    sshd: SshServer
    tgtd: Tgtd
    vm: QemuVm
    far: Path
    records: Path


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    sockets = tmp_path / "qmp"
    sockets.mkdir()
    sshd = SshServer(tmp_path / "sshd")
    sshd.start()
    try:
        with running_tgtd(tmp_path) as tgtd, running_vm(sockets, "vm1", ports=4) as vm:
            far, records = tmp_path / "far", tmp_path / "exports"
            config = TEST_CONFIG + (
                "[storage far]\nzone = us-east-1a\nbackend = remote-file\n"
                f"url = {sshd.url}\nkey_file = {sshd.client_key}\n"
                f"known_hosts = {sshd.known_hosts}\npath = {far}\n"
                f"export_portal = {tgtd.portal}\n"
                "[export]\nbackend = tgt\n"
                f"record_dir = {records}\nportal = 192.0.2.1:3260\n"
                f"control_port = {tgtd.control_port}\n"
                "[vmm kvm1]\ndriver = qemu\nzone = us-east-1a\n"
                f"socket_dir = {sockets}\ninitiator_address = 127.0.0.1\n"
            )
            server = ServerProcess(tmp_path / "data", config)
            server.start()
            try:
                yield Lab(server, sshd, tgtd, vm, far, records)
            finally:
                server.stop()
    finally:
        sshd.stop()


def _attached(ec2: Any, volume_id: str) -> bool | None:
    [volume] = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"]
    return True if [a["State"] for a in volume["Attachments"]] == ["attached"] else None


def test_a_remote_storage_hosts_volume_is_exported_from_that_host(lab: Lab) -> None:
    ec2 = lab.server.client()
    [reservation] = ec2.describe_instances()["Reservations"]
    instance_id = reservation["Instances"][0]["InstanceId"]
    volume_id = new_volume(ec2)

    ec2.attach_volume(VolumeId=volume_id, InstanceId=instance_id, Device="/dev/sdf")
    poll(lambda: _attached(ec2, volume_id))

    targets = lab.tgtd.show_targets()
    assert f"org.ebsemu:{volume_id}" in targets
    assert str(lab.far / "volumes" / volume_id) in targets  # the backing store: the host's file
    log = lab.server.log_path.read_text()
    assert f"on {lab.sshd.user}@127.0.0.1:{lab.sshd.port}: tgtadm" in log  # run over SSH
    assert (lab.records / "far").is_dir()  # this host's export records, apart
    [disk] = [b for b in run(qmp(lab.vm, "query-block")) if b.get("qdev")]
    assert lab.tgtd.portal.split(":")[-1] in disk["inserted"]["file"]  # the host's own portal
    out = run(
        qmp(lab.vm, "human-monitor-command",
            {"command-line": f'qemu-io -d {disk["qdev"]} "write -P 0x5a 0 1M"'})
    )  # fmt: skip
    assert out == "", out

    lab.server.restart()  # start-up reconciliation keeps the attached volume's export
    assert f"org.ebsemu:{volume_id}" in lab.tgtd.show_targets()
    assert "export without an attachment" not in lab.server.log_path.read_text()

    ec2.detach_volume(VolumeId=volume_id)
    ec2.get_waiter("volume_available").wait(VolumeIds=[volume_id], WaiterConfig=FAST)
    assert f"org.ebsemu:{volume_id}" not in lab.tgtd.show_targets()
    with (lab.far / "volumes" / volume_id).open("rb") as handle:
        assert handle.read(MIB) == b"\x5a" * MIB
