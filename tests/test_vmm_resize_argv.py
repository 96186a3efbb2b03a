"""notify_resize at the command level for the VMMs whose tools cannot run here (Xen) or where
the exact command line matters (virsh): the argv each one runs when an attached volume grew."""

from __future__ import annotations

import pytest

from backends.vmm.errors import VmmError
from hostcmds import Reply
from tests.test_vmm_libvirt import VOL, recorded
from tests.test_vmm_xen import LISTING, PARAMS, VOL_A, VOL_B, VOL_NEW, xen
from tests.vmm_fixtures import run

GIB = 1024**3
VIRSH = ["virsh", "--connect", "qemu:///system"]


def test_libvirt_reads_the_capacity_then_runs_blockresize_in_bytes() -> None:
    vmm, runner = recorded()
    runner.reply([*VIRSH, "domblkinfo"], Reply(stdout=f"Capacity:       {GIB}\nAllocation: 0\n"))
    run(vmm.notify_resize("web1", VOL, 3 * GIB))
    assert runner.argvs == [
        [*VIRSH, "dumpxml", "web1"],
        [*VIRSH, "domblkinfo", "web1", "vdf"],
        [*VIRSH, "blockresize", "web1", "vdf", f"{3 * GIB}B"],
    ]


def test_libvirt_refuses_to_shrink_and_to_resize_a_volume_not_attached() -> None:
    vmm, runner = recorded()
    runner.reply([*VIRSH, "domblkinfo"], Reply(stdout=f"Capacity:       {4 * GIB}\n"))
    with pytest.raises(VmmError, match="will not shrink"):
        run(vmm.notify_resize("web1", VOL, 3 * GIB))
    with pytest.raises(VmmError, match="not attached"):
        run(vmm.notify_resize("web1", VOL_NEW, 3 * GIB))
    assert not any("blockresize" in argv for argv in runner.argvs)


@pytest.mark.parametrize("tool", ["xl", "xm"])
def test_xen_runs_no_command_for_a_grown_dom0_device(tool: str) -> None:
    vmm, runner = xen(tool)
    run(vmm.notify_resize("web1", VOL_A, 3 * GIB))  # an LV in dom0: blkback sees it grow
    assert runner.argvs == [[tool, "block-list", "web1"], *LISTING]


@pytest.mark.parametrize("tool", ["xl", "xm"])
def test_xen_rescans_the_iscsi_session_of_a_grown_iscsi_disk(tool: str) -> None:
    vmm, runner = xen(tool)
    run(vmm.notify_resize("web1", VOL_B, 3 * GIB))
    path = PARAMS["/local/domain/0/backend/vbd/3/2128/params"].strip()
    assert path.startswith("/dev/disk/by-path/ip-10.0.0.5:3260-iscsi-")
    iqn = f"iqn.2010-10.org.example:{VOL_B}"
    assert runner.argvs == [
        [tool, "block-list", "web1"],
        *LISTING,
        ["iscsiadm", "--mode", "node", "--targetname", iqn, "--portal", "10.0.0.5:3260",
         "--rescan"],
    ]  # fmt: skip


def test_xen_refuses_a_volume_not_attached() -> None:
    vmm, _ = xen()
    with pytest.raises(VmmError, match="not attached"):
        run(vmm.notify_resize("web1", VOL_NEW, 3 * GIB))
