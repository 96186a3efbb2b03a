"""ModifyVolume of a volume attached over iSCSI (`[export] backend = tgt`, a real tgtd) to a
real QEMU VM: the target reopens the LUN at the new size, QEMU's iscsi driver takes the
block_resize, and QMP shows the grown disk without a detach."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ebsemu.model import GIB
from tests.api_support import FAST, new_volume, poll
from tests.server import ServerProcess
from tests.tgt_fixtures import HAVE_TOOLS, NEEDS_TOOLS, Tgtd, running_tgtd
from tests.vmm_fixtures import HAVE_QEMU, NEEDS_QEMU, QemuVm, qmp, run, running_vm

pytestmark = [
    pytest.mark.skipif(not HAVE_TOOLS, reason=NEEDS_TOOLS),
    pytest.mark.skipif(not HAVE_QEMU, reason=NEEDS_QEMU),
]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[ServerProcess, Tgtd, QemuVm]]:
    sockets = tmp_path / "qmp"
    sockets.mkdir()
    with running_tgtd(tmp_path) as tgtd, running_vm(sockets, "vm1", ports=4) as vm:
        config = (
            "[limits]\nmodification_cooldown_seconds = 0\n"
            "[export]\nbackend = tgt\n"
            f"record_dir = {tmp_path / 'exports'}\nportal = {tgtd.portal}\n"
            f"control_port = {tgtd.control_port}\n"
            "[vmm kvm1]\ndriver = qemu\nzone = us-east-1a\n"
            f"socket_dir = {sockets}\ninitiator_address = 127.0.0.1\n"
        )
        # The file backend: tgt exports the volumes' files (resized in place).
        server = ServerProcess(tmp_path / "data", config, backend="file")
        server.start()
        try:
            yield server, tgtd, vm
        finally:
            server.stop()


def _disk_size(vm: QemuVm, volume_id: str) -> int:
    blocks = [b for b in run(qmp(vm, "query-block")) if b.get("inserted")]
    (block,) = [b for b in blocks if b["inserted"]["node-name"] == f"ebs-{volume_id}"]
    return int(block["inserted"]["image"]["virtual-size"])


def _state(ec2: Any, volume_id: str) -> dict[str, Any] | None:
    (item,) = ec2.describe_volumes_modifications(VolumeIds=[volume_id])["VolumesModifications"]
    return item if item["ModificationState"] in ("completed", "failed") else None


def test_an_iscsi_attached_volume_grows_in_the_running_vm(
    lab: tuple[ServerProcess, Tgtd, QemuVm],
) -> None:
    server, tgtd, vm = lab
    ec2 = server.client()
    [reservation] = ec2.describe_instances()["Reservations"]
    instance_id = reservation["Instances"][0]["InstanceId"]
    volume_id = new_volume(ec2, Size=1)
    ec2.attach_volume(VolumeId=volume_id, InstanceId=instance_id, Device="/dev/sdf")

    def attached() -> bool | None:
        [volume] = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"]
        return True if [a["State"] for a in volume["Attachments"]] == ["attached"] else None

    poll(attached)
    assert _disk_size(vm, volume_id) == GIB

    ec2.modify_volume(VolumeId=volume_id, Size=2)
    done = poll(lambda: _state(ec2, volume_id), timeout=60)

    assert done["ModificationState"] == "completed"
    assert _disk_size(vm, volume_id) == 2 * GIB
    assert "Size: 2147 MB" in tgtd.show_targets()
    ec2.detach_volume(VolumeId=volume_id)
    ec2.get_waiter("volume_available").wait(VolumeIds=[volume_id], WaiterConfig=FAST)
