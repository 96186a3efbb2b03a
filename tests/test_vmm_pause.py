"""VmmBackend.pause / resume, what CreateSnapshots brackets its views with: QEMU over QMP on a
real VM; libvirt and Xen at the argv level (recording runner); the host driver, which cannot
pause; and which volumes of an instance CreateSnapshots selects."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backends.vmm.errors import DomainNotFound, VmmError
from backends.vmm.host import HostVmm
from backends.vmm.libvirt import LibvirtConfig, LibvirtVmm
from backends.vmm.qemu import QemuConfig, QemuVmm
from backends.vmm.xen import XenConfig, XenVmm, domain_flags
from ebsemu import errors
from ebsemu.model import Attachment, AttachmentState
from ebsemu.service.multi_snapshots import select_volumes
from hostcmds import LocalRunner, RecordingRunner, Reply, load_templates
from tests.vmm_fixtures import (
    HAVE_LIBVIRT,
    HAVE_QEMU,
    NEEDS_LIBVIRT,
    NEEDS_QEMU,
    QemuVm,
    libvirt_domain,
    qmp,
    run,
    running_libvirtd,
    running_vm,
    virsh,
)

URI = "qemu:///system"
XL_LIST = (
    "Name                                        ID   Mem VCPUs\tState\tTime(s)\n"
    "Domain-0                                     0  4096     4     r-----     812.4\n"
    "web1                                         3  1024     2     -b----      41.0\n"
    "db1                                          4  2048     2     --p---       0.0\n"
)

# ---- QEMU (a real VM) -------------------------------------------------------------------------


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[QemuVm]:
    with running_vm(tmp_path, "vm1", ports=1) as started:
        yield started


def query_status(vm: QemuVm) -> str:
    return str(run(qmp(vm, "query-status"))["status"])


def test_qemu_pause_stops_the_vm_and_resume_lets_it_run_again(vm: QemuVm) -> None:
    driver = QemuVmm(QemuConfig(socket_dir=vm.socket.parent))
    assert query_status(vm) == "running"
    assert run(driver.pause("vm1")) is True
    assert query_status(vm) == "paused"
    # Paused already: nothing to undo, so the caller must not resume it.
    assert run(driver.pause("vm1")) is False
    assert query_status(vm) == "paused"
    run(driver.resume("vm1"))
    assert query_status(vm) == "running"
    run(driver.resume("vm1"))  # a running VM: no error
    assert query_status(vm) == "running"


def test_qemu_pause_of_a_missing_domain_is_domain_not_found(tmp_path: Path) -> None:
    driver = QemuVmm(QemuConfig(socket_dir=tmp_path))
    with pytest.raises(DomainNotFound):
        run(driver.pause("nobody"))


# ---- libvirt (argv) -----------------------------------------------------------------------------


def libvirt(state: str) -> tuple[LibvirtVmm, RecordingRunner]:
    runner = RecordingRunner(
        [(["virsh", "--connect", URI, "domstate"], Reply(stdout=f"{state}\n\n"))]
    )
    return LibvirtVmm(runner, load_templates()), runner


def test_libvirt_pause_suspends_a_running_domain_and_resume_resumes_it() -> None:
    vmm, runner = libvirt("running")
    assert run(vmm.pause("web1")) is True
    run(vmm.resume("web1"))
    assert runner.argvs == [
        ["virsh", "--connect", URI, "domstate", "web1"],
        ["virsh", "--connect", URI, "suspend", "web1"],
        ["virsh", "--connect", URI, "resume", "web1"],
    ]


def test_libvirt_pause_leaves_a_paused_domain_alone() -> None:
    vmm, runner = libvirt("paused")
    assert run(vmm.pause("web1")) is False
    assert runner.argvs == [["virsh", "--connect", URI, "domstate", "web1"]]


def test_libvirt_pause_of_an_unknown_domain_is_domain_not_found() -> None:
    runner = RecordingRunner(
        [
            (["virsh", "--connect", URI, "domstate"], Reply(returncode=1, stderr="no domain")),
            (["virsh", "--connect", URI, "list"], Reply(stdout=" Id   Name   State\n")),
        ]
    )
    with pytest.raises(DomainNotFound):
        run(LibvirtVmm(runner, load_templates()).pause("ghost"))


@pytest.mark.skipif(not (HAVE_LIBVIRT and HAVE_QEMU), reason=f"{NEEDS_LIBVIRT}; {NEEDS_QEMU}")
def test_libvirt_pause_and_resume_on_a_real_domain(tmp_path: Path) -> None:
    with (
        running_libvirtd(tmp_path) as uri,
        libvirt_domain(tmp_path, f"ebs-test-pause-{os.getpid()}") as domain,
    ):
        vmm = LibvirtVmm(LocalRunner(), load_templates(), LibvirtConfig(uri=uri))
        assert run(vmm.pause(domain)) is True
        assert virsh("domstate", domain).strip() == "paused"
        assert run(vmm.pause(domain)) is False
        run(vmm.resume(domain))
        assert virsh("domstate", domain).strip() == "running"


# ---- Xen (argv) ---------------------------------------------------------------------------------


def xen(tool: str) -> tuple[XenVmm, RecordingRunner]:
    runner = RecordingRunner([([tool, "list"], Reply(stdout=XL_LIST))])
    return XenVmm(runner, load_templates(), XenConfig(profile=f"xen-{tool}")), runner


@pytest.mark.parametrize("tool", ["xl", "xm"])
def test_xen_pause_and_unpause_run_the_template_lines(tool: str) -> None:
    vmm, runner = xen(tool)
    assert run(vmm.pause("web1")) is True
    run(vmm.resume("web1"))
    assert runner.argvs == [[tool, "list"], [tool, "pause", "web1"], [tool, "unpause", "web1"]]


@pytest.mark.parametrize("tool", ["xl", "xm"])
def test_xen_pause_leaves_a_paused_domain_alone_and_refuses_an_unknown_one(tool: str) -> None:
    vmm, runner = xen(tool)
    assert run(vmm.pause("db1")) is False
    with pytest.raises(DomainNotFound):
        run(vmm.pause("ghost"))
    assert runner.argvs == [[tool, "list"], [tool, "list"]]


def test_xen_profile_without_pause_templates_attaches_but_refuses_to_pause() -> None:
    profile = {key: f"mytool {key}" for key in ("infoCmd", "listCmd", "blockListCmd")}
    profile |= {
        "blockAttachCmd": "mytool attach <domUId> <dom0Dev> <domUDev>",
        "blockDetachCmd": "mytool detach <domUId> <domUDev>",
        "blockForceDetachCmd": "mytool detach -f <domUId> <domUDev>",
        "backendParamsCmd": "xenstore-read <bePath>/params",
    }
    runner = RecordingRunner([(["mytool", "listCmd"], Reply(stdout=XL_LIST))])
    vmm = XenVmm(runner, load_templates({"xen-old": profile}), XenConfig(profile="xen-old"))
    with pytest.raises(VmmError, match="no pauseCmd or unpauseCmd template"):
        run(vmm.pause("web1"))
    assert runner.argvs == []


def test_xen_state_flags_are_read_per_domain() -> None:
    assert domain_flags(XL_LIST, "web1") == "-b----"
    assert domain_flags(XL_LIST, "db1") == "--p---"
    assert domain_flags(XL_LIST, "web") is None


# ---- host ---------------------------------------------------------------------------------------


def test_host_cannot_pause_and_runs_nothing() -> None:
    runner = RecordingRunner(default=None)
    vmm = HostVmm(runner, load_templates())
    assert run(vmm.pause("host")) is False
    run(vmm.resume("host"))
    assert runner.argvs == []
    with pytest.raises(DomainNotFound):
        run(vmm.pause("other"))


# ---- which volumes CreateSnapshots takes --------------------------------------------------------


def attachment(volume_id: str, device: str, state: AttachmentState) -> Attachment:
    return Attachment(volume_id, "i-0123456789abcdef0", device, state, datetime.now(UTC))


ROOT = attachment("vol-0000000000000000a", "/dev/xvda", AttachmentState.ATTACHED)
DATA = [
    attachment("vol-0000000000000000c", "/dev/sdg", AttachmentState.ATTACHED),
    attachment("vol-0000000000000000b", "/dev/sdf", AttachmentState.BUSY),
    attachment("vol-0000000000000000d", "/dev/sdh", AttachmentState.ATTACHING),
    attachment("vol-0000000000000000e", "/dev/sdi", AttachmentState.DETACHING),
]


def ids(chosen: list[Attachment]) -> list[str]:
    return [a.volume_id for a in chosen]


def test_attached_and_busy_volumes_are_selected_in_device_order_with_the_boot_volume() -> None:
    chosen = select_volumes([*DATA, ROOT], False, [])
    assert ids(chosen) == ["vol-0000000000000000b", "vol-0000000000000000c", ROOT.volume_id]
    assert [a.device for a in chosen] == ["/dev/sdf", "/dev/sdg", "/dev/xvda"]


def test_exclude_boot_volume_leaves_out_the_root_device_only() -> None:
    assert ids(select_volumes([*DATA, ROOT], True, [])) == [
        "vol-0000000000000000b",
        "vol-0000000000000000c",
    ]
    assert ids(select_volumes([*DATA, ROOT], True, ["vol-0000000000000000c"])) == [
        "vol-0000000000000000b"
    ]


def test_naming_the_boot_volume_among_excluded_data_volumes_is_invalid() -> None:
    with pytest.raises(errors.InvalidParameterValue, match="ExcludeBootVolume"):
        select_volumes([*DATA, ROOT], False, [ROOT.volume_id])
