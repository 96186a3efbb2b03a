"""ModifyVolume of a volume attached to a real libvirt domain (libvirtd started here when none
runs): once the modification is completed, `virsh domblkinfo` shows the disk at its new size,
without a detach."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from ebsemu.model import GIB
from ebsemu.service.instances import instance_id
from tests.api_support import FAST, new_volume, poll
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


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    work = tmp_path_factory.mktemp("modify-libvirt")
    with running_libvirtd(work) as uri:
        domain = f"ebs-test-{secrets.token_hex(4)}"
        with libvirt_domain(work, domain):
            config = f"""\
[limits]
modification_cooldown_seconds = 0

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
                yield server, domain
            finally:
                server.stop()


def capacity(domain: str, target: str) -> int:
    found = re.search(r"^Capacity:\s*(\d+)", virsh("domblkinfo", domain, target), re.MULTILINE)
    assert found
    return int(found.group(1))


def test_an_attached_volume_grows_in_the_libvirt_domain(lab: tuple[ServerProcess, str]) -> None:
    server, domain = lab
    ec2: Any = server.client()
    volume_id = new_volume(ec2, Size=1)
    ec2.attach_volume(VolumeId=volume_id, InstanceId=instance_id(VMM, domain), Device="/dev/sdf")

    def attached() -> bool | None:
        (volume,) = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"]
        assert volume["Attachments"], server.log_path.read_text()[-2000:]
        return True if volume["Attachments"][0]["State"] == "attached" else None

    poll(attached, timeout=30)
    assert capacity(domain, "vdf") == GIB

    ec2.modify_volume(VolumeId=volume_id, Size=2)

    def finished() -> dict[str, Any] | None:
        (item,) = ec2.describe_volumes_modifications(VolumeIds=[volume_id])["VolumesModifications"]
        return item if item["ModificationState"] in ("completed", "failed") else None

    assert poll(finished, timeout=60)["ModificationState"] == "completed"
    assert capacity(domain, "vdf") == 2 * GIB
    ec2.detach_volume(VolumeId=volume_id)
    ec2.get_waiter("volume_available").wait(VolumeIds=[volume_id], WaiterConfig=FAST)
