"""The `libvirt` VMM through the API, against a real libvirtd (started here when none runs; the
module skips, naming what is missing, when it cannot start) and a transient q35 domain:
DescribeInstances lists the domain, AttachVolume and DetachVolume plug its disk in and out,
as `virsh dumpxml` and the domain's own QEMU (query-block) show."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from backends.vmm.libvirt import parse_disks
from ebsemu.service.instances import instance_id
from tests.api_support import FAST, new_volume, poll, volume_segment
from tests.server import ZONE, ServerProcess
from tests.vmm_fixtures import (
    HAVE_LIBVIRT,
    HAVE_QEMU,
    NEEDS_LIBVIRT,
    NEEDS_QEMU,
    libvirt_domain,
    running_libvirtd,
    virsh,
)

pytestmark = [
    pytest.mark.skipif(not HAVE_QEMU, reason=NEEDS_QEMU),
    pytest.mark.skipif(not HAVE_LIBVIRT, reason=NEEDS_LIBVIRT),
]

VMM = "lv1"


@dataclass
class LibvirtLab:
    server: ServerProcess
    ec2: Any
    domain: str
    instance: str


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LibvirtLab]:
    work = tmp_path_factory.mktemp("attach-libvirt")
    with running_libvirtd(work) as uri:
        domain = f"ebs-test-{secrets.token_hex(4)}"
        with libvirt_domain(work, domain):
            config = f"""\
[server]
deleted_visible_seconds = 2

[vmm {VMM}]
driver = libvirt
zone = {ZONE}
uri = {uri}
detach_timeout = 20
"""
            # The file backend: the domains' disk sources are the volumes' segment files.
            server = ServerProcess(work / "data", config, backend="file")
            try:
                server.start()
                yield LibvirtLab(server, server.client(), domain, instance_id(VMM, domain))
            finally:
                server.stop()


def domain_disks(domain: str) -> dict[str, tuple[str | None, str | None, str | None]]:
    """The domain's live disks: target -> (source, serial, alias), from virsh dumpxml."""
    return {d.target: (d.source, d.serial, d.alias) for d in parse_disks(virsh("dumpxml", domain))}


def qemu_block_files(domain: str) -> set[str]:
    """Files behind the block devices the domain's QEMU process holds (query-block)."""
    reply = json.loads(virsh("qemu-monitor-command", domain, '{"execute": "query-block"}'))
    return {b["inserted"]["file"] for b in reply["return"] if b.get("inserted")}


def test_the_libvirt_domain_is_a_running_instance(lab: LibvirtLab) -> None:
    (reservation,) = lab.ec2.describe_instances(InstanceIds=[lab.instance])["Reservations"]
    (instance,) = reservation["Instances"]
    assert instance["State"] == {"Code": 16, "Name": "running"}
    assert instance["Placement"]["AvailabilityZone"] == ZONE
    assert instance["BlockDeviceMappings"] == []


def test_attach_and_detach_through_the_api_plug_the_disk_in_and_out_of_the_domain(
    lab: LibvirtLab,
) -> None:
    volume_id = new_volume(lab.ec2)
    source = str(volume_segment(lab.server.data_dir, volume_id))
    answer = lab.ec2.attach_volume(VolumeId=volume_id, InstanceId=lab.instance, Device="/dev/sdf")
    assert answer["State"] == "attaching"

    def attached() -> bool | None:
        (volume,) = lab.ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"]
        if not volume["Attachments"]:
            log = lab.server.log_path.read_text(errors="replace")[-2000:]
            pytest.fail(f"attach of {volume_id} failed:\n{log}")
        return True if volume["Attachments"][0]["State"] == "attached" else None

    poll(attached, timeout=30)
    disks = domain_disks(lab.domain)
    assert disks["vdf"] == (source, volume_id.replace("-", ""), f"ua-ebs-{volume_id}-sdf")
    assert source in qemu_block_files(lab.domain)
    (reservation,) = lab.ec2.describe_instances(InstanceIds=[lab.instance])["Reservations"]
    (mapping,) = reservation["Instances"][0]["BlockDeviceMappings"]
    assert (mapping["DeviceName"], mapping["Ebs"]["VolumeId"]) == ("/dev/sdf", volume_id)

    assert lab.ec2.detach_volume(VolumeId=volume_id)["State"] == "detaching"
    lab.ec2.get_waiter("volume_available").wait(VolumeIds=[volume_id], WaiterConfig=FAST)
    assert "vdf" not in domain_disks(lab.domain)
    assert source not in qemu_block_files(lab.domain)
    (volume,) = lab.ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"]
    assert volume["Attachments"] == []
