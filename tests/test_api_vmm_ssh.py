"""A VMM host reached over SSH (a real sshd on 127.0.0.1), driven over the EC2 API by boto3:
the `host` driver's losetup commands run through the SSH connection, so AttachVolume gives the
remote host a loop device over the volume's file and DetachVolume takes it away; with the host
down, an attach is rolled back and the volume is `available` again, with nothing left behind."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ebsemu.service.instances import instance_id
from tests.api_support import FAST, new_volume, poll, volume_segment
from tests.server import TEST_CONFIG, ZONE, ServerProcess
from tests.ssh_fixtures import HAVE_SSHD, NEEDS_SSHD, SshServer
from tests.test_api_attach_host import loop_devices, loop_devices_usable

pytestmark = [
    pytest.mark.skipif(not HAVE_SSHD, reason=NEEDS_SSHD),
    pytest.mark.skipif(
        not loop_devices_usable(), reason="needs loop devices (/dev/loop-control, losetup --find)"
    ),
]

VMM = "far"
DOMAIN = "far-host"


@dataclass
class FarHost:
    sshd: SshServer
    server: ServerProcess
    ec2: Any
    instance: str

    def segment(self, volume_id: str) -> str:
        return str(volume_segment(self.server.data_dir, volume_id))


@pytest.fixture
def far(tmp_path: Path) -> Iterator[FarHost]:
    sshd = SshServer(tmp_path / "sshd")
    sshd.start()
    config = TEST_CONFIG + (
        f"[vmm {VMM}]\ndriver = host\nzone = {ZONE}\ndomain = {DOMAIN}\n"
        f"url = {sshd.url}\nkey_file = {sshd.client_key}\nknown_hosts = {sshd.known_hosts}\n"
    )
    # The file backend: the remote VMM is given the volumes' segment file paths.
    server = ServerProcess(tmp_path / "data", config, backend="file")
    try:
        server.start()
        yield FarHost(sshd, server, server.client(), instance_id(VMM, DOMAIN))
    finally:
        server.stop()
        sshd.stop()
        for back_file, device in loop_devices().items():
            if back_file.startswith(str(server.data_dir) + "/"):
                subprocess.run(["losetup", "--detach", device], timeout=10, check=False)


def _attachment_state(ec2: Any, volume_id: str) -> str | None:
    (volume,) = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"]
    return volume["Attachments"][0]["State"] if volume["Attachments"] else None


def test_attach_and_detach_run_losetup_on_the_vmm_host_over_ssh(far: FarHost) -> None:
    (reservation,) = far.ec2.describe_instances()["Reservations"]
    assert reservation["Instances"][0]["InstanceId"] == far.instance
    volume_id = new_volume(far.ec2)

    far.ec2.attach_volume(VolumeId=volume_id, InstanceId=far.instance, Device="/dev/sdf")
    poll(lambda: True if _attachment_state(far.ec2, volume_id) == "attached" else None)
    assert far.segment(volume_id) in loop_devices()  # set up by losetup run through sshd
    assert far.sshd.logins() >= 1

    far.ec2.detach_volume(VolumeId=volume_id)
    far.ec2.get_waiter("volume_available").wait(VolumeIds=[volume_id], WaiterConfig=FAST)
    assert far.segment(volume_id) not in loop_devices()


def test_a_vmm_host_that_is_down_rolls_the_attach_back(far: FarHost) -> None:
    volume_id = new_volume(far.ec2)
    far.sshd.stop()

    far.ec2.attach_volume(VolumeId=volume_id, InstanceId=far.instance, Device="/dev/sdf")
    far.ec2.get_waiter("volume_available").wait(VolumeIds=[volume_id], WaiterConfig=FAST)
    (volume,) = far.ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"]
    assert volume["State"] == "available" and volume["Attachments"] == []
    assert far.segment(volume_id) not in loop_devices()
    log = far.server.log_path.read_text(errors="replace")
    assert f"volume {volume_id}: attach to {far.instance} rolled back" in log

    far.sshd.start()  # back: the same volume attaches now
    far.ec2.attach_volume(VolumeId=volume_id, InstanceId=far.instance, Device="/dev/sdf")
    poll(lambda: True if _attachment_state(far.ec2, volume_id) == "attached" else None)
    assert far.segment(volume_id) in loop_devices()
