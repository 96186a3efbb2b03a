"""ModifyVolume on a volume attached to a real diskless QEMU VM: once the modification is
completed, QMP shows the disk at its new size (no detach), and the bytes the guest had are
still there. A growth the attached volume cannot take fails and leaves the disk as it was."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from ebsemu.model import GIB
from ebsemu.service.instances import instance_id
from tests.api_support import FAST, new_volume, poll, volume_segment
from tests.server import TEST_CONFIG, ZONE, ServerProcess
from tests.vmm_fixtures import HAVE_QEMU, NEEDS_QEMU, QemuVm, qmp, run, running_vm

pytestmark = pytest.mark.skipif(not HAVE_QEMU, reason=NEEDS_QEMU)

VMM = "kvm-a"
VM = "grower"


@dataclass
class Lab:
    server: ServerProcess
    ec2: Any
    vm: QemuVm
    instance: str


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    work = tmp_path_factory.mktemp("modify-attached")
    sockets = work / "qmp"
    sockets.mkdir()
    config = TEST_CONFIG.replace("[limits]\n", "[limits]\nmodification_cooldown_seconds = 0\n")
    config += f"""
[vmm {VMM}]
driver = qemu
zone = {ZONE}
socket_dir = {sockets}
detach_timeout = 10
"""
    with contextlib.ExitStack() as stack:
        vm = stack.enter_context(running_vm(sockets, VM, ports=4))
        # The file backend: the tests check the grown segment files and their layout.
        server = ServerProcess(work / "data", config, backend="file")
        stack.callback(server.stop)
        server.start()
        yield Lab(server, server.client(), vm, instance_id(VMM, VM))


def node_size(vm: QemuVm, volume_id: str) -> int:
    """The virtual size QEMU gives the volume's block node."""
    nodes = run(qmp(vm, "query-named-block-nodes", {"flat": True}))
    (node,) = [n for n in nodes if n["node-name"] == f"ebs-{volume_id}"]
    return int(node["image"]["virtual-size"])


def device_size(vm: QemuVm, volume_id: str) -> int:
    """The virtual size of the guest device the volume is inserted in (query-block)."""
    blocks = run(qmp(vm, "query-block"))
    (block,) = [b for b in blocks if b.get("inserted", {}).get("node-name") == f"ebs-{volume_id}"]
    return int(block["inserted"]["image"]["virtual-size"])


def attached_volume(lab: Lab, device: str) -> str:
    volume_id = new_volume(lab.ec2, Size=1)
    lab.ec2.attach_volume(VolumeId=volume_id, InstanceId=lab.instance, Device=device)

    def attached() -> bool | None:
        (volume,) = lab.ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"]
        assert volume["Attachments"], lab.server.log_path.read_text()[-2000:]
        return True if volume["Attachments"][0]["State"] == "attached" else None

    poll(attached)
    return volume_id


def finished(lab: Lab, volume_id: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        (item,) = lab.ec2.describe_volumes_modifications(VolumeIds=[volume_id])[
            "VolumesModifications"
        ]
        return item if item["ModificationState"] in ("completed", "failed") else None

    return poll(probe, timeout=60)


def detach(lab: Lab, volume_id: str) -> None:
    lab.ec2.detach_volume(VolumeId=volume_id)
    lab.ec2.get_waiter("volume_available").wait(VolumeIds=[volume_id], WaiterConfig=FAST)


def test_an_attached_volume_grows_in_the_running_vm_without_a_detach(lab: Lab) -> None:
    volume_id = attached_volume(lab, "/dev/sdf")
    assert node_size(lab.vm, volume_id) == device_size(lab.vm, volume_id) == GIB
    data = os.urandom(64 * 1024)
    path = volume_segment(lab.server.data_dir, volume_id)
    with path.open("r+b") as handle:
        handle.seek(GIB - len(data))
        handle.write(data)

    lab.ec2.modify_volume(VolumeId=volume_id, Size=3)
    done = finished(lab, volume_id)

    assert done["ModificationState"] == "completed", lab.server.log_path.read_text()[-2000:]
    assert node_size(lab.vm, volume_id) == device_size(lab.vm, volume_id) == 3 * GIB
    (volume,) = lab.ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"]
    assert volume["Size"] == 3 and volume["State"] == "in-use"
    assert volume["Attachments"][0]["State"] == "attached"
    assert path.stat().st_size == 3 * GIB
    with path.open("rb") as handle:
        handle.seek(GIB - len(data))
        assert handle.read(len(data)) == data
    detach(lab, volume_id)


def test_a_growth_past_one_file_fails_for_an_attached_volume_and_leaves_the_disk(
    lab: Lab,
) -> None:
    volume_id = attached_volume(lab, "/dev/sdg")
    # As on a data filesystem that holds at most 1 GiB in one file: the volume's layout
    # records 1 GiB segments, so 2 GiB would take two files, which no VMM can open as one.
    layout = volume_segment(lab.server.data_dir, volume_id).with_name("volume.json")
    recorded = json.loads(layout.read_text())
    layout.write_text(json.dumps({**recorded, "segment_bytes": GIB}))

    lab.ec2.modify_volume(VolumeId=volume_id, Size=2, VolumeType="gp3")
    done = finished(lab, volume_id)

    assert done["ModificationState"] == "failed"
    assert "cannot hold the new size" in done["StatusMessage"]
    (volume,) = lab.ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"]
    assert (volume["Size"], volume["VolumeType"]) == (1, "gp2")
    assert node_size(lab.vm, volume_id) == GIB
    assert sorted(p.name for p in layout.parent.glob("seg-*")) == ["seg-0000"]
    detach(lab, volume_id)
