"""DescribeVolumeStatus of a volume attached over iSCSI: when its target is deleted from the
real tgtd behind the server's back, the volume turns impaired; once a restart has re-applied
the export, EnableVolumeIO makes it ok again."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ebsemu.service.volume_status import EXPORT_LOST
from tests.api_support import new_volume, poll
from tests.server import ServerProcess
from tests.tgt_fixtures import Tgtd, running_tgtd
from tests.vmm_fixtures import running_vm


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[ServerProcess, Tgtd]]:
    sockets = tmp_path / "qmp"
    sockets.mkdir()
    with running_tgtd(tmp_path) as tgtd, running_vm(sockets, "vm1", ports=4):
        config = (
            "[export]\nbackend = tgt\n"
            f"record_dir = {tmp_path / 'exports'}\nportal = {tgtd.portal}\n"
            f"control_port = {tgtd.control_port}\n"
            "[vmm kvm1]\ndriver = qemu\nzone = us-east-1a\n"
            f"socket_dir = {sockets}\ninitiator_address = 127.0.0.1\n"
        )
        # The file backend: tgt exports the volumes' files.
        server = ServerProcess(tmp_path / "data", config, backend="file")
        server.start()
        try:
            yield server, tgtd
        finally:
            server.stop()


def _attached(ec2: Any, volume_id: str) -> bool | None:
    [volume] = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"]
    return True if [a["State"] for a in volume["Attachments"]] == ["attached"] else None


def _status(ec2: Any, volume_id: str) -> dict[str, Any]:
    [item] = ec2.describe_volume_status(VolumeIds=[volume_id])["VolumeStatuses"]
    return dict(item)


def _checked_status(ec2: Any, volume_id: str) -> dict[str, Any]:
    """The status once the volume is checked: `insufficient-data` while its attach job is
    still finishing (a volume with work in progress is not checked)."""

    def checked() -> dict[str, Any] | None:
        item = _status(ec2, volume_id)
        return item if item["VolumeStatus"]["Status"] != "insufficient-data" else None

    return poll(checked)


def _tid(tgtd: Tgtd, volume_id: str) -> str:
    match = re.search(rf"^Target (\d+): \S+:{volume_id}$", tgtd.show_targets(), re.M)
    assert match is not None, tgtd.show_targets()
    return match.group(1)


def test_a_target_deleted_from_tgtd_impairs_the_attached_volume(
    lab: tuple[ServerProcess, Tgtd],
) -> None:
    server, tgtd = lab
    ec2 = server.client()
    [reservation] = ec2.describe_instances()["Reservations"]
    instance_id = reservation["Instances"][0]["InstanceId"]
    volume_id = new_volume(ec2)
    ec2.attach_volume(VolumeId=volume_id, InstanceId=instance_id, Device="/dev/sdf")
    poll(lambda: _attached(ec2, volume_id))

    item = _checked_status(ec2, volume_id)
    assert item["VolumeStatus"]["Status"] == "ok"
    assert item["AttachmentStatuses"] == [
        {"InstanceId": instance_id, "IoPerformance": "not-applicable"}
    ]
    tid = _tid(tgtd, volume_id)
    tgtd.tgtadm("--lld", "iscsi", "--op", "delete", "--force", "--mode", "target", "--tid", tid)

    item = _status(ec2, volume_id)
    assert item["VolumeStatus"]["Status"] == "impaired"
    assert {d["Name"]: d["Status"] for d in item["VolumeStatus"]["Details"]}["io-enabled"] == (
        "failed"
    )
    [event] = item["Events"]
    assert event["Description"] == EXPORT_LOST
    assert [a["Code"] for a in item["Actions"]] == ["enable-volume-io"]
    listed = ec2.describe_volume_status(
        Filters=[{"Name": "attachment-status.instance-id", "Values": [instance_id]}]
    )["VolumeStatuses"]
    assert [i["VolumeId"] for i in listed] == [volume_id]

    server.restart()  # start-up re-applies the recorded export in tgtd
    ec2 = server.client()
    _tid(tgtd, volume_id)
    item = _status(ec2, volume_id)
    assert item["VolumeStatus"]["Status"] == "impaired"  # I/O stays disabled until enabled
    assert item["Events"] == [event]
    ec2.enable_volume_io(VolumeId=volume_id)
    item = _status(ec2, volume_id)
    assert item["VolumeStatus"]["Status"] == "ok"
    assert item["Events"] == [] and item["Actions"] == []
