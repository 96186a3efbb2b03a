"""The `host` VMM through the API: the machine running ebsemu is itself an instance, and
AttachVolume gives it a real loop device over the volume's file (checked with losetup and by
reading and writing the device); DetachVolume takes the loop device away again."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ebsemu.service.instances import instance_id
from tests.api_support import FAST, new_volume, poll, volume_segment
from tests.server import ZONE, ServerProcess

MIB = 1024 * 1024
GIB = 1024 * MIB
VMM = "self"
DOMAIN = "host"


def loop_devices_usable() -> bool:
    if shutil.which("losetup") is None or not os.path.exists("/dev/loop-control"):
        return False
    probe = subprocess.run(["losetup", "--find"], capture_output=True, timeout=10, check=False)
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(
    not loop_devices_usable(), reason="needs loop devices (/dev/loop-control, losetup --find)"
)


def loop_devices() -> dict[str, str]:
    """Every loop device on the host: backing file -> device (losetup --json --list)."""
    out = subprocess.run(
        ["losetup", "--json", "--list"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    if not out.strip():
        return {}
    return {
        str(entry.get("back-file") or "").removesuffix(" (deleted)"): str(entry["name"])
        for entry in json.loads(out)["loopdevices"]
    }


@dataclass
class HostLab:
    server: ServerProcess
    ec2: Any
    instance: str

    def segment(self, volume_id: str) -> str:
        return str(volume_segment(self.server.data_dir, volume_id))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostLab]:
    work = tmp_path_factory.mktemp("attach-host")
    config = f"""\
[server]
deleted_visible_seconds = 2

[vmm {VMM}]
driver = host
zone = {ZONE}
domain = {DOMAIN}
"""
    # The file backend: the host VMM loop-mounts the volumes' segment files.
    server = ServerProcess(work / "data", config, backend="file")
    try:
        server.start()
        yield HostLab(server, server.client(), instance_id(VMM, DOMAIN))
    finally:
        server.stop()
        # No loop device over this server's files outlives the module, whatever happened.
        for back_file, device in loop_devices().items():
            if back_file.startswith(str(server.data_dir) + "/"):
                subprocess.run(["losetup", "--detach", device], timeout=10, check=False)


def attach(lab: HostLab, device: str, volume_id: str | None = None) -> str:
    """Attach ``volume_id`` (a new volume if None) to the host; wait until it is attached."""
    volume_id = volume_id or new_volume(lab.ec2)
    answer = lab.ec2.attach_volume(VolumeId=volume_id, InstanceId=lab.instance, Device=device)
    assert answer["State"] == "attaching"

    def attached() -> bool | None:
        (volume,) = lab.ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"]
        if not volume["Attachments"]:
            log = lab.server.log_path.read_text(errors="replace")[-2000:]
            pytest.fail(f"attach of {volume_id} failed:\n{log}")
        return True if volume["Attachments"][0]["State"] == "attached" else None

    poll(attached)
    return volume_id


def detach(lab: HostLab, volume_id: str) -> None:
    assert lab.ec2.detach_volume(VolumeId=volume_id)["State"] == "detaching"
    lab.ec2.get_waiter("volume_available").wait(VolumeIds=[volume_id], WaiterConfig=FAST)


def test_the_host_is_one_running_instance(lab: HostLab) -> None:
    reservations = lab.ec2.describe_instances()["Reservations"]
    assert [r["Instances"][0]["InstanceId"] for r in reservations] == [lab.instance]
    instance = reservations[0]["Instances"][0]
    assert instance["State"] == {"Code": 16, "Name": "running"}
    assert instance["Placement"]["AvailabilityZone"] == ZONE


def test_attach_sets_up_a_loop_device_carrying_the_volumes_bytes_and_detach_removes_it(
    lab: HostLab,
) -> None:
    volume_id = new_volume(lab.ec2)
    before = os.urandom(4096)
    with open(lab.segment(volume_id), "r+b") as handle:
        handle.seek(3 * MIB)
        handle.write(before)
    attach(lab, "/dev/sdf", volume_id)
    device = loop_devices()[lab.segment(volume_id)]
    name = Path(device).name
    assert int(Path(f"/sys/block/{name}/size").read_text()) * 512 == GIB
    fd = os.open(device, os.O_RDWR)
    try:
        assert os.pread(fd, 4096, 3 * MIB) == before
        after = os.urandom(4096)
        os.pwrite(fd, after, 5 * MIB)
        os.fsync(fd)
    finally:
        os.close(fd)
    with open(lab.segment(volume_id), "rb") as handle:
        handle.seek(5 * MIB)
        assert handle.read(4096) == after
    (reservation,) = lab.ec2.describe_instances(InstanceIds=[lab.instance])["Reservations"]
    (mapping,) = reservation["Instances"][0]["BlockDeviceMappings"]
    assert (mapping["DeviceName"], mapping["Ebs"]["VolumeId"]) == ("/dev/sdf", volume_id)

    detach(lab, volume_id)
    assert lab.segment(volume_id) not in loop_devices()
    (volume,) = lab.ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"]
    assert volume["Attachments"] == []


def test_two_volumes_get_two_loop_devices_and_detaching_one_keeps_the_other(
    lab: HostLab,
) -> None:
    first = attach(lab, "/dev/sdg")
    second = attach(lab, "/dev/sdh")
    loops = loop_devices()
    assert lab.segment(first) in loops and lab.segment(second) in loops
    assert loops[lab.segment(first)] != loops[lab.segment(second)]
    detach(lab, first)
    loops = loop_devices()
    assert lab.segment(first) not in loops and lab.segment(second) in loops
    detach(lab, second)
    assert lab.segment(second) not in loop_devices()
