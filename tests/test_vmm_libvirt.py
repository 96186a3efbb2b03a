"""LibvirtVmm: against a real libvirtd and a q35 domain when one can be started here, and at
the argv level (recording runner) for the exact virsh command lines."""

from __future__ import annotations

import dataclasses
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.base import (
    AttachedDisk,
    AttachSpec,
    Domain,
    DomainState,
    IscsiSource,
    LocalSource,
)
from backends.vmm.errors import AttachError, DeviceInUse, DomainNotFound, VmmError
from backends.vmm.libvirt import (
    LibvirtConfig,
    LibvirtVmm,
    iscsi_disk_xml,
    parse_disks,
    parse_domain_list,
)
from hostcmds import LocalRunner, RecordingRunner, Reply, load_templates
from tests.vmm_fixtures import (
    HAVE_LIBVIRT,
    HAVE_QEMU,
    NEEDS_LIBVIRT,
    NEEDS_QEMU,
    libvirt_domain,
    new_volume_id,
    run,
    running_libvirtd,
    source_path,
    sparse_file,
    virsh,
)

MIB = 1024 * 1024
VOL = "vol-0123456789abcdef0"

VIRSH_LIST = """\
 Id   Name          State
------------------------------
 6    web1          running
 7    batch job     paused
 -    old-vm        shut off
 9    leaving       in shutdown
"""

# From `virsh dumpxml` of a domain with one disk attached by this driver and one root disk.
DUMPXML = f"""<domain type='kvm' id='6'>
  <name>web1</name>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/web1.qcow2' index='2'/>
      <target dev='vda' bus='virtio'/>
      <alias name='virtio-disk0'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='/srv/ebs/{VOL}.raw' index='1'/>
      <backingStore/>
      <target dev='vdf' bus='virtio'/>
      <serial>vol0123456789abcdef0</serial>
      <alias name='ua-ebs-{VOL}-sdf'/>
      <address type='pci' domain='0x0000' bus='0x02' slot='0x00' function='0x0'/>
    </disk>
    <disk type='block' device='disk'>
      <source dev='/dev/ebs/vol-0aaaaaaaaaaaaaaaa'/>
      <target dev='vdg' bus='virtio'/>
      <serial>vol0aaaaaaaaaaaaaaaa</serial>
      <alias name='virtio-disk6'/>
    </disk>
  </devices>
</domain>
"""


def recorded(dumpxml: str = DUMPXML) -> tuple[LibvirtVmm, RecordingRunner]:
    runner = RecordingRunner(
        [
            (["virsh", "--connect", "qemu:///system", "dumpxml"], Reply(stdout=dumpxml)),
            (["virsh", "--connect", "qemu:///system", "list"], Reply(stdout=VIRSH_LIST)),
        ]
    )
    return LibvirtVmm(runner, load_templates()), runner


def test_virsh_list_is_parsed_with_multi_word_names_and_states() -> None:
    assert parse_domain_list(VIRSH_LIST) == [
        Domain("web1", DomainState.RUNNING),
        Domain("batch job", DomainState.STOPPED),
        Domain("old-vm", DomainState.STOPPED),
        Domain("leaving", DomainState.STOPPING),
    ]


def test_dumpxml_disks_map_to_volumes_by_alias_then_serial() -> None:
    vmm, _ = recorded()
    assert [d.target for d in parse_disks(DUMPXML)] == ["vda", "vdf", "vdg"]
    assert run(vmm.list_attached("web1")) == [
        AttachedDisk(VOL, "/dev/sdf", "vdf", f"/srv/ebs/{VOL}.raw"),
        AttachedDisk("vol-0aaaaaaaaaaaaaaaa", None, "vdg", "/dev/ebs/vol-0aaaaaaaaaaaaaaaa"),
    ]


def test_attach_runs_attach_disk_with_serial_alias_and_live() -> None:
    vmm, runner = recorded()
    volume_id = "vol-0bbbbbbbbbbbbbbbb"
    disk = run(vmm.attach("web1", AttachSpec(volume_id, "/dev/xvdh", LocalSource("/srv/v.raw"))))
    assert disk == AttachedDisk(volume_id, "/dev/xvdh", "vdh", "/srv/v.raw")
    assert runner.argvs[-1] == [
        "virsh",
        "--connect",
        "qemu:///system",
        "attach-disk",
        "web1",
        "/srv/v.raw",
        "vdh",
        "--targetbus",
        "virtio",
        "--driver",
        "qemu",
        "--subdriver",
        "raw",
        "--serial",
        "vol0bbbbbbbbbbbbbbbb",
        "--alias",
        f"ua-ebs-{volume_id}-xvdh",
        "--live",
    ]


def test_scsi_bus_uses_sd_targets_and_the_full_volume_id_as_serial() -> None:
    runner = RecordingRunner(
        [(["virsh", "--connect", "qemu+ssh://vmm1/system", "dumpxml"], Reply(stdout=DUMPXML))]
    )
    config = LibvirtConfig(uri="qemu+ssh://vmm1/system", bus="scsi")
    vmm = LibvirtVmm(runner, load_templates(), config)
    volume_id = "vol-0bbbbbbbbbbbbbbbb"
    run(vmm.attach("web1", AttachSpec(volume_id, "/dev/sdh", LocalSource("/srv/v.raw"))))
    attach = runner.argvs[-1]
    assert attach[6:9] == ["sdh", "--targetbus", "scsi"]
    assert attach[attach.index("--serial") + 1] == volume_id


def test_used_target_and_existing_attachment_are_found_before_running_attach_disk() -> None:
    vmm, runner = recorded()
    with pytest.raises(DeviceInUse):
        run(vmm.attach("web1", AttachSpec(new_volume_id(), "/dev/sda", LocalSource("/x"))))
    existing = run(vmm.attach("web1", AttachSpec(VOL, "/dev/sdf", LocalSource("/x"))))
    assert existing.handle == "vdf"
    with pytest.raises(AttachError, match="as /dev/sdf"):
        run(vmm.attach("web1", AttachSpec(VOL, "/dev/sdk", LocalSource("/x"))))
    assert not any("attach-disk" in argv for argv in runner.argvs)


def test_detach_of_a_vanished_domain_raises_unless_forced() -> None:
    runner = RecordingRunner(
        [
            (["virsh", "--connect", "qemu:///system", "dumpxml"], Reply(1, stderr="not found")),
            (["virsh", "--connect", "qemu:///system", "list"], Reply(stdout=VIRSH_LIST)),
        ]
    )
    vmm = LibvirtVmm(runner, load_templates())
    with pytest.raises(DomainNotFound):
        run(vmm.detach("gone", VOL))
    run(vmm.detach("gone", VOL, force=True))
    assert not any("detach-disk" in argv for argv in runner.argvs)


def test_a_shared_disk_is_attached_shareable_and_its_network_xml_says_so() -> None:
    vmm, runner = recorded()
    volume_id = new_volume_id()
    spec = AttachSpec(volume_id, "/dev/sdh", LocalSource("/srv/v.raw"), shared=True)
    run(vmm.attach("web1", spec))
    assert runner.argvs[-1][-3:] == ["--mode", "shareable", "--live"]
    source = IscsiSource("127.0.0.1:3260", f"iqn.2010-10.org.ebsemu:{volume_id}", 1)
    shared = ET.fromstring(
        iscsi_disk_xml(
            volume_id, source, target="vdh", bus="virtio", serial="s", alias="a", shared=True
        )
    )
    alone = ET.fromstring(
        iscsi_disk_xml(volume_id, source, target="vdh", bus="virtio", serial="s", alias="a")
    )
    assert shared.find("shareable") is not None and alone.find("shareable") is None


# -- real libvirtd ----------------------------------------------------------------------------

needs_libvirt = pytest.mark.skipif(
    not (HAVE_LIBVIRT and HAVE_QEMU), reason=f"{NEEDS_LIBVIRT}; {NEEDS_QEMU}"
)


@pytest.fixture(scope="module")
def libvirtd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_libvirtd(tmp_path_factory.mktemp("libvirtd")) as uri:
        yield uri


@pytest.fixture
def domain(libvirtd: str, tmp_path: Path) -> Iterator[str]:
    with libvirt_domain(tmp_path, f"ebs-test-{os.getpid()}-{tmp_path.name[-8:]}") as name:
        yield name


def real_vmm(uri: str) -> LibvirtVmm:
    return LibvirtVmm(LocalRunner(), load_templates(), LibvirtConfig(uri=uri, detach_timeout=15))


def volume(tmp_path: Path, device: str, size: int = 32 * MIB) -> AttachSpec:
    volume_id = new_volume_id()
    path = sparse_file(tmp_path / f"{volume_id}.raw", size)
    return AttachSpec(volume_id, device, LocalSource(str(path)))


@needs_libvirt
def test_attach_disk_and_detach_disk_on_a_live_q35_domain(
    libvirtd: str, domain: str, tmp_path: Path
) -> None:
    vmm = real_vmm(libvirtd)
    first, second = volume(tmp_path, "/dev/sdf"), volume(tmp_path, "/dev/sdg")

    async def scenario() -> None:
        await vmm.check_setup()
        assert Domain(domain, DomainState.RUNNING) in await vmm.list_domains()
        one = await vmm.attach(domain, first)
        two = await vmm.attach(domain, second)
        assert (one.handle, two.handle) == ("vdf", "vdg")
        assert await vmm.list_attached(domain) == [one, two]
        live = {d.target: d for d in parse_disks(virsh("dumpxml", domain))}
        assert live["vdf"].serial == first.volume_id.replace("-", "")
        assert live["vdf"].source == source_path(first)
        await vmm.detach(domain, second.volume_id)
        await vmm.detach(domain, first.volume_id)
        assert await vmm.list_attached(domain) == []
        assert "vdf" not in virsh("domblklist", domain)
        await vmm.detach(domain, first.volume_id)  # already gone: no-op

    run(scenario())


@needs_libvirt
def test_notify_resize_grows_the_disk_in_the_domain(
    libvirtd: str, domain: str, tmp_path: Path
) -> None:
    vmm = real_vmm(libvirtd)
    spec = volume(tmp_path, "/dev/sdf", 32 * MIB)

    async def scenario() -> None:
        await vmm.attach(domain, spec)
        os.truncate(source_path(spec), 48 * MIB)
        await vmm.notify_resize(domain, spec.volume_id, 48 * MIB)
        assert f"Capacity:       {48 * MIB}" in virsh("domblkinfo", domain, "vdf")
        with pytest.raises(VmmError, match="will not shrink"):
            await vmm.notify_resize(domain, spec.volume_id, 32 * MIB)
        await vmm.detach(domain, spec.volume_id)

    run(scenario())


@needs_libvirt
def test_a_destroyed_domain_is_not_found_and_forced_detach_succeeds(
    libvirtd: str, tmp_path: Path
) -> None:
    vmm = real_vmm(libvirtd)
    spec = volume(tmp_path, "/dev/sdf")
    with libvirt_domain(tmp_path, f"ebs-test-{os.getpid()}-gone") as name:
        run(vmm.attach(name, spec))
    with pytest.raises(DomainNotFound):
        run(vmm.detach(name, spec.volume_id))
    run(vmm.detach(name, spec.volume_id, force=True))


@needs_libvirt
def test_a_shared_disk_is_attached_to_two_domains_at_once(
    libvirtd: str, domain: str, tmp_path: Path
) -> None:
    vmm = real_vmm(libvirtd)
    spec = volume(tmp_path, "/dev/sdf")
    shared = dataclasses.replace(spec, shared=True)
    with libvirt_domain(tmp_path, f"ebs-test-{os.getpid()}-peer") as peer:

        async def scenario() -> None:
            await vmm.attach(domain, shared)
            await vmm.attach(peer, shared)  # QEMU's write lock would refuse a second writer
            for name in (domain, peer):
                assert [d.volume_id for d in await vmm.list_attached(name)] == [spec.volume_id]
                assert "<shareable/>" in virsh("dumpxml", name)
            await vmm.detach(peer, spec.volume_id)
            await vmm.detach(domain, spec.volume_id)

        run(scenario())
