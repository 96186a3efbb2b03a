"""Which instances a Multi-Attach volume may be attached to at once (AttachmentService), on a
real core whose VMM hosts are not reached: QEMU shares a disk for writing, Xen does not.
(Sharing through an iSCSI export, one initiator only, is tested with real VMs and tgtd in
test_api_attach_iscsi.py.)"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from backends.vmm.qemu import QemuConfig, QemuVmm
from backends.vmm.xen import XenVmm
from ebsemu import config, errors
from ebsemu.app import build_core, build_services
from ebsemu.model import (
    Attachment,
    AttachmentState,
    Instance,
    Volume,
    VolumeState,
    VolumeType,
    utcnow,
)
from ebsemu.service.attachments import MULTI_ATTACH_MOST
from ebsemu.service.core import Core
from hostcmds import RecordingRunner, load_templates
from tests.server import ZONE

OWNER = "000000000000"
REGION = "us-east-1"
VOLUME = "vol-0123456789abcdef0"


def instance(name: str, vmm: str) -> Instance:
    return Instance(f"i-{name}", OWNER, REGION, ZONE, vmm, name, "running", utcnow())


def shared_volume(*holders: Instance) -> Volume:
    return Volume(
        id=VOLUME,
        owner_id=OWNER,
        region=REGION,
        zone=ZONE,
        size_gib=4,
        volume_type=VolumeType.IO2,
        state=VolumeState.IN_USE,
        create_time=utcnow(),
        iops=100,
        multi_attach=True,
        attachments=[
            Attachment(
                "vol-0123456789abcdef0", h.id, "/dev/sdf", AttachmentState.ATTACHED, utcnow()
            )
            for h in holders
        ],
    )


@pytest.fixture
def core(tmp_path: Path) -> Core:
    data = tmp_path / "data"
    data.mkdir()
    built = build_core(config.load(None, data_dir=data))
    built.vmms.update(
        kvm=QemuVmm(QemuConfig(tmp_path / "qmp")),
        kvm2=QemuVmm(QemuConfig(tmp_path / "qmp2")),
        xen=XenVmm(RecordingRunner([]), load_templates()),
    )
    return built


def refusal(core: Core, volume: Volume, new: Instance, *known: Instance) -> str | None:
    """The error code attaching ``volume`` to ``new`` gets, or None when it may be attached."""

    async def check() -> str | None:
        await core.store.open()
        try:
            for vmm in {i.vmm for i in (new, *known)}:
                await core.store.sync_instances(vmm, [i for i in (new, *known) if i.vmm == vmm])
            attachments = build_services(core).attachments
            await attachments._check_shared(volume, new)
        except errors.ApiError as exc:
            return exc.code
        finally:
            await core.store.close()
        return None

    return asyncio.run(check())


def test_qemu_instances_share_a_volume_up_to_sixteen_and_each_holds_it_once(core: Core) -> None:
    web, db = instance("web", "kvm"), instance("db", "kvm2")
    assert refusal(core, shared_volume(web), db, web) is None
    assert refusal(core, shared_volume(web), web, web) == "VolumeInUse"
    many = [instance(f"n{n}", "kvm") for n in range(MULTI_ATTACH_MOST)]
    assert refusal(core, shared_volume(*many), db, *many) == "AttachmentLimitExceeded"
    single = shared_volume(web)
    single.multi_attach = False
    assert refusal(core, single, db, web) == "VolumeInUse"


def test_a_xen_guest_neither_joins_nor_holds_a_shared_volume(core: Core) -> None:
    web, guest = instance("web", "kvm"), instance("guest", "xen")
    assert refusal(core, shared_volume(web), guest, web) == "UnsupportedOperation"
    assert refusal(core, shared_volume(guest), web, guest) == "UnsupportedOperation"
