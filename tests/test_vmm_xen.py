"""XenVmm at the command level (Xen cannot run on this host): the exact argv the xl and xm
templates produce, and parsing of recorded ``xl list`` / ``xl block-list`` output."""

from __future__ import annotations

import pytest

from backends.base import AttachedDisk, AttachSpec, Domain, DomainState, LocalSource
from backends.errors import BackendError
from backends.vmm.errors import AttachError, DeviceInUse, DomainNotFound, VmmError
from backends.vmm.xen import (
    XenConfig,
    XenVmm,
    parse_block_list,
    parse_domain_list,
    vdev_name,
    vdev_number,
)
from hostcmds import RecordingRunner, Reply, TemplateError, load_templates
from tests.vmm_fixtures import run

VOL_A = "vol-0a1b2c3d4e5f60718"
VOL_B = "vol-0f0e0d0c0b0a09080"
VOL_NEW = "vol-011223344556677aa"

# Recorded the way xl prints them (tools/xl printf formats), trailing spaces included.
XL_LIST = (
    "Name                                        ID   Mem VCPUs\tState\tTime(s)\n"
    "Domain-0                                     0  4096     4     r-----     812.4\n"
    "web1                                         3  1024     2     -b----      41.0\n"
    "db1                                          4  2048     2     --p---       0.0\n"
    "old1                                         5   512     1     ---s--       3.2\n"
    "dying1                                       6   512     1     -----d       1.0\n"
)
XL_BLOCK_LIST_HEADER = "Vdev  BE  handle state evt-ch ring-ref BE-path                       \n"
XL_BLOCK_LIST = XL_BLOCK_LIST_HEADER + (
    "51712 0   3      4     15     8        /local/domain/0/backend/vbd/3/51712\n"
    "51792 0   3      4     17     1281     /local/domain/0/backend/vbd/3/51792\n"
    "2128  0   3      4     18     1282     /local/domain/0/backend/vbd/3/2128\n"
)
XM_BLOCK_LIST = (
    "Vdev  BE handle state evt-ch ring-ref BE-path\n"
    "51712    0    0     4      6      8     /local/domain/0/backend/vbd/3/51712  \n"
    "51792    0    0     4      7      9     /local/domain/0/backend/vbd/3/51792  \n"
    "2128     0    0     4      8      10    /local/domain/0/backend/vbd/3/2128  \n"
)
PARAMS = {
    "/local/domain/0/backend/vbd/3/51712/params": "/var/lib/xen/images/web1-root.img\n",
    "/local/domain/0/backend/vbd/3/51792/params": f"/dev/ebs/{VOL_A}\n",
    "/local/domain/0/backend/vbd/3/2128/params": (
        f"/dev/disk/by-path/ip-10.0.0.5:3260-iscsi-iqn.2010-10.org.example:{VOL_B}-lun-1\n"
    ),
}


def xenstore(argv: tuple[str, ...]) -> Reply | None:
    if argv[0] == "xenstore-read":
        return Reply(stdout=PARAMS[argv[1]])
    return None


def xen(
    tool: str = "xl", block_list: str = XL_BLOCK_LIST, profile: str | None = None
) -> tuple[XenVmm, RecordingRunner]:
    runner = RecordingRunner(
        [
            ([tool, "list"], Reply(stdout=XL_LIST)),
            ([tool, "block-list"], Reply(stdout=block_list)),
        ],
        responder=xenstore,
        default=Reply(),
    )
    config = XenConfig(profile=profile or f"xen-{tool}")
    return XenVmm(runner, load_templates(), config), runner


LISTING = [
    ["xenstore-read", "/local/domain/0/backend/vbd/3/51712/params"],
    ["xenstore-read", "/local/domain/0/backend/vbd/3/51792/params"],
    ["xenstore-read", "/local/domain/0/backend/vbd/3/2128/params"],
]


@pytest.mark.parametrize("tool", ["xl", "xm"])
def test_attach_runs_the_seed_block_attach_line(tool: str) -> None:
    vmm, runner = xen(tool, block_list=XL_BLOCK_LIST_HEADER)
    spec = AttachSpec(VOL_NEW, "/dev/sdh", LocalSource(f"/dev/ebs/{VOL_NEW}"))
    disk = run(vmm.attach("web1", spec))
    assert disk == AttachedDisk(VOL_NEW, "/dev/sdh", "sdh", f"/dev/ebs/{VOL_NEW}")
    assert runner.argvs == [
        [tool, "block-list", "web1"],
        [tool, "list"],  # no rows: make sure the domain exists
        [tool, "block-attach", "web1", f"phy:/dev/ebs/{VOL_NEW}", "sdh", "w"],
    ]


@pytest.mark.parametrize(("tool", "sample"), [("xl", XL_BLOCK_LIST), ("xm", XM_BLOCK_LIST)])
def test_recorded_block_list_is_read_back_as_attached_volumes(tool: str, sample: str) -> None:
    vmm, runner = xen(tool, block_list=sample)
    disks = run(vmm.list_attached("web1"))
    assert disks == [
        AttachedDisk(VOL_A, "/dev/xvdf", "xvdf", f"/dev/ebs/{VOL_A}"),
        AttachedDisk(
            VOL_B, "/dev/sdf", "sdf", PARAMS["/local/domain/0/backend/vbd/3/2128/params"].strip()
        ),
    ]
    assert runner.argvs == [[tool, "block-list", "web1"], *LISTING]


@pytest.mark.parametrize(
    ("tool", "force", "detach_argv"),
    [
        ("xl", False, ["xl", "block-detach", "web1", "xvdf"]),
        ("xl", True, ["xl", "block-detach", "--force", "web1", "xvdf"]),
        ("xm", False, ["xm", "block-detach", "web1", "xvdf"]),
        ("xm", True, ["xm", "block-detach", "web1", "xvdf", "--force"]),
    ],
)
def test_detach_runs_block_detach_on_the_volumes_virtual_device(
    tool: str, force: bool, detach_argv: list[str]
) -> None:
    vmm, runner = xen(tool)
    run(vmm.detach("web1", VOL_A, force=force))
    assert runner.argvs == [[tool, "block-list", "web1"], *LISTING, detach_argv]


def test_detach_of_a_volume_not_attached_runs_no_block_detach() -> None:
    vmm, runner = xen()
    run(vmm.detach("web1", VOL_NEW))
    assert not any("block-detach" in argv for argv in runner.argvs)


def test_a_missing_domain_is_domain_not_found_and_forced_detach_lets_it_go() -> None:
    # xl block-list prints only its header (exit 0) for an unknown domain.
    vmm, runner = xen(block_list=XL_BLOCK_LIST_HEADER)
    with pytest.raises(DomainNotFound):
        run(vmm.list_attached("ghost"))
    with pytest.raises(DomainNotFound):
        run(vmm.detach("ghost", VOL_A))
    run(vmm.detach("ghost", VOL_A, force=True))
    assert not any("block-detach" in argv for argv in runner.argvs)


def test_xm_block_list_failure_for_a_missing_domain_is_domain_not_found() -> None:
    runner = RecordingRunner(
        [
            (["xm", "list"], Reply(stdout=XL_LIST)),
            (["xm", "block-list"], Reply(1, stderr="Error: the domain 'ghost' does not exist.")),
        ]
    )
    vmm = XenVmm(runner, load_templates(), XenConfig(profile="xen-xm"))
    with pytest.raises(DomainNotFound):
        run(vmm.list_attached("ghost"))


def test_attach_refuses_a_device_in_use_and_returns_an_existing_attachment() -> None:
    vmm, runner = xen()
    taken = AttachSpec(VOL_NEW, "/dev/sdf", LocalSource(f"/dev/ebs/{VOL_NEW}"))
    with pytest.raises(DeviceInUse):
        run(vmm.attach("web1", taken))
    again = AttachSpec(VOL_A, "/dev/xvdf", LocalSource(f"/dev/ebs/{VOL_A}"))
    assert run(vmm.attach("web1", again)).handle == "xvdf"
    with pytest.raises(AttachError, match="attached to web1 as /dev/xvdf"):
        run(vmm.attach("web1", AttachSpec(VOL_A, "/dev/sdg", again.source)))
    assert not any("block-attach" in argv for argv in runner.argvs)


def test_failed_block_attach_is_an_attach_error_and_a_timeout_is_rolled_back() -> None:
    vmm, runner = xen(block_list=XL_BLOCK_LIST_HEADER)
    spec = AttachSpec(VOL_NEW, "/dev/sdh", LocalSource(f"/dev/ebs/{VOL_NEW}"))
    runner.fail_call(3, Reply(1, stderr="libxl: error: device already exists\n"))
    with pytest.raises(AttachError, match="device already exists"):
        run(vmm.attach("web1", spec))
    assert runner.argvs[-1][:2] == ["xl", "block-attach"]
    runner.calls.clear()
    runner.fail_call(3, Reply(timeout=True))
    with pytest.raises(AttachError, match="timed out"):
        run(vmm.attach("web1", spec))
    assert runner.argvs[-2:] == [
        ["xl", "block-attach", "web1", f"phy:/dev/ebs/{VOL_NEW}", "sdh", "w"],
        ["xl", "block-detach", "--force", "web1", "sdh"],
    ]


def test_command_failures_reach_the_service_as_backend_errors() -> None:
    vmm, runner = xen()
    runner.fail_call(1, Reply(timeout=True))
    with pytest.raises(BackendError):
        run(vmm.list_domains())
    with pytest.raises(VmmError, match="shell metacharacter"):
        run(vmm.attach("web1", AttachSpec(VOL_NEW, "/dev/sdh", LocalSource("/dev/x;reboot"))))


def test_recorded_xl_list_gives_domains_and_states_without_dom0() -> None:
    assert parse_domain_list(XL_LIST) == [
        Domain("web1", DomainState.RUNNING),
        Domain("db1", DomainState.STOPPED),
        Domain("old1", DomainState.STOPPED),
        Domain("dying1", DomainState.SHUTTING_DOWN),
    ]
    vmm, runner = xen()
    assert [d.name for d in run(vmm.list_domains())] == ["web1", "db1", "old1", "dying1"]
    assert runner.argvs == [["xl", "list"]]


def test_block_list_parsing_skips_header_and_junk() -> None:
    rows = parse_block_list(XL_BLOCK_LIST + "\nwarning: something\n")
    assert [(r.vdev, r.state, r.backend_path) for r in rows] == [
        (51712, 4, "/local/domain/0/backend/vbd/3/51712"),
        (51792, 4, "/local/domain/0/backend/vbd/3/51792"),
        (2128, 4, "/local/domain/0/backend/vbd/3/2128"),
    ]
    assert parse_block_list(XL_BLOCK_LIST_HEADER) == []


@pytest.mark.parametrize(
    ("name", "number"),
    [
        ("xvda", 51712),
        ("xvdf", 51792),
        ("xvdp", 51952),
        ("xvdq", (1 << 28) | (16 << 8)),
        ("xvdaa", (1 << 28) | (26 << 8)),
        ("sda", 2048),
        ("sdf", 2128),
        ("sdq", 65 << 8),
        ("sddx", (71 << 8) | 240),
        ("hda", 768),
        ("hdd", (22 << 8) | 64),
    ],
)
def test_virtual_device_numbers_follow_xens_numbering_both_ways(name: str, number: int) -> None:
    assert vdev_number(name) == number
    assert vdev_name(number) == name


def test_partitions_have_no_whole_disk_name() -> None:
    assert vdev_name(51713) is None  # xvda1
    assert vdev_name(0xFF00) is None  # unknown major


def test_a_user_defined_profile_drives_a_new_toolstack_without_code() -> None:
    custom = {
        "xen-custom": {
            "infoCmd": "mytool info",
            "listCmd": "mytool list",
            "blockAttachCmd": "mytool attach --domain=<domUId> --disk=phy:<dom0Dev>,<domUDev>,w",
            "blockDetachCmd": "mytool detach <domUId> <domUDev>",
            "blockForceDetachCmd": "mytool detach -f <domUId> <domUDev>",
            "blockListCmd": "mytool block-list <domUId>",
            "backendParamsCmd": "xenstore-read <bePath>/params",
        }
    }
    runner = RecordingRunner(
        [
            (["mytool", "list"], Reply(stdout=XL_LIST)),
            (["mytool", "block-list"], Reply(stdout=XL_BLOCK_LIST_HEADER)),
        ]
    )
    vmm = XenVmm(runner, load_templates(custom), XenConfig(profile="xen-custom"))
    run(vmm.attach("db1", AttachSpec(VOL_NEW, "/dev/sdg", LocalSource("/dev/ebs/v"))))
    assert runner.argvs[-1] == ["mytool", "attach", "--domain=db1", "--disk=phy:/dev/ebs/v,sdg,w"]
    with pytest.raises(TemplateError, match="lacks templates: backendParamsCmd, blockAttachCmd"):
        XenVmm(runner, load_templates({"xen-bad": {"infoCmd": "x"}}), XenConfig(profile="xen-bad"))
