"""An encrypted volume exported over iSCSI (tgt) to a QEMU VM: the target serves the LUKS image,
QEMU opens it with the luks driver over its iscsi driver, so ciphertext is all that crosses the
export path and all that the volume file holds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api_support import FAST, poll, volume_segment
from tests.server import ZONE, ServerProcess
from tests.test_encryption_qemu import PLAIN, file_holds, passphrase_of, qemu_io_with_key
from tests.tgt_fixtures import Tgtd, running_tgtd
from tests.vmm_fixtures import QemuVm, qmp, run, running_vm


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[ServerProcess, Tgtd, QemuVm]]:
    sockets = tmp_path / "qmp"
    sockets.mkdir()
    with running_tgtd(tmp_path) as tgtd, running_vm(sockets, "vm1", ports=2) as vm:
        config = (
            "[export]\nbackend = tgt\n"
            f"record_dir = {tmp_path / 'exports'}\nportal = {tgtd.portal}\n"
            f"control_port = {tgtd.control_port}\n"
            f"[vmm kvm1]\ndriver = qemu\nzone = {ZONE}\n"
            f"socket_dir = {sockets}\ninitiator_address = 127.0.0.1\n"
        )
        server = ServerProcess(tmp_path / "data", config)
        server.start()
        try:
            yield server, tgtd, vm
        finally:
            server.stop()


def _attached(ec2: Any, volume_id: str) -> bool | None:
    [volume] = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"]
    assert volume["State"] != "available" or volume["Attachments"], "the attach failed"
    return True if [a["State"] for a in volume["Attachments"]] == ["attached"] else None


def test_encrypted_volume_over_iscsi_opens_as_luks_in_qemu_and_stays_ciphertext_on_disk(
    lab: tuple[ServerProcess, Tgtd, QemuVm],
) -> None:
    server, tgtd, vm = lab
    ec2 = server.client()
    [reservation] = ec2.describe_instances()["Reservations"]
    instance_id = reservation["Instances"][0]["InstanceId"]
    volume_id = ec2.create_volume(AvailabilityZone=ZONE, Size=1, Encrypted=True)["VolumeId"]
    ec2.get_waiter("volume_available").wait(VolumeIds=[volume_id], WaiterConfig=FAST)

    ec2.attach_volume(VolumeId=volume_id, InstanceId=instance_id, Device="/dev/sdf")
    poll(lambda: _attached(ec2, volume_id), timeout=60)
    assert f"org.ebsemu:{volume_id}" in tgtd.show_targets()
    [disk] = [b for b in run(qmp(vm, "query-block")) if b.get("qdev")]
    assert disk["inserted"]["drv"] == "luks"
    assert '"driver": "iscsi"' in disk["inserted"]["file"]
    assert disk["inserted"]["image"]["virtual-size"] == 1024**3
    out = run(
        qmp(vm, "human-monitor-command",
            {"command-line": f'qemu-io -d {disk["qdev"]} "write -P 0x5a 0 1M"'})
    )  # fmt: skip
    assert out == "", out

    ec2.detach_volume(VolumeId=volume_id)
    ec2.get_waiter("volume_available").wait(VolumeIds=[volume_id], WaiterConfig=FAST)
    segment = volume_segment(server.data_dir, volume_id)
    assert not file_holds(segment, PLAIN)
    done = qemu_io_with_key(segment, passphrase_of(server, volume_id), "read -P 0x5a 0 1M")
    assert done.returncode == 0 and "verification failed" not in done.stdout, done.stderr
