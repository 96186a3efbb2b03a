"""iSCSI volume sources on the libvirt, Xen and host drivers at the argv level (recording
runner): the exact virsh / iscsiadm / xl command lines for attach, detach and a failed attach,
and the CHAP secret in no argv, log line or exception text."""

from __future__ import annotations

import base64
import logging

import pytest

from backends.base import AttachSpec, IscsiSource, RbdSource
from backends.vmm.errors import AttachError
from backends.vmm.host import HostVmm
from backends.vmm.iscsi_login import by_path_device, parse_by_path, parse_session_disks
from backends.vmm.libvirt import LibvirtVmm, parse_disks, secret_uuid
from backends.vmm.xen import XenConfig, XenVmm
from hostcmds import CommandNotFound, RecordingRunner, Reply, load_templates
from tests.vmm_fixtures import run

VOL = "vol-0123456789abcdef0"
IQN = f"iqn.2010-10.org.example:{VOL}"
PORTAL = "10.0.0.5:3260"
SECRET = "s3cr3tChapValue42"
SOURCE = IscsiSource(PORTAL, IQN, 1, chap_user="ebsuser", chap_secret=SECRET)
DEV = f"/dev/disk/by-path/ip-{PORTAL}-iscsi-{IQN}-lun-1"
URI = "qemu:///system"
EMPTY_DOMAIN = "<domain><name>web1</name><devices></devices></domain>"
NETWORK_DOMAIN = f"""<domain><name>web1</name><devices>
  <disk type='network' device='disk'>
    <source protocol='iscsi' name='{IQN}/1'><host name='10.0.0.5' port='3260'/></source>
    <target dev='vdf' bus='virtio'/>
    <serial>vol0123456789abcdef0</serial>
    <alias name='ua-ebs-{VOL}-vdf'/>
  </disk></devices></domain>"""


def virsh(*args: str) -> list[str]:
    return ["virsh", "--connect", URI, *args]


def iscsiadm_node(*args: str) -> list[str]:
    return ["iscsiadm", "--mode", "node", "--targetname", IQN, "--portal", PORTAL, *args]


LOGIN = [
    ["iscsiadm", "--mode", "discovery", "--type", "sendtargets", "--portal", PORTAL],
    iscsiadm_node("--op", "update", "--name", "node.session.auth.authmethod", "--value", "CHAP"),
    iscsiadm_node("--op", "update", "--name", "node.session.auth.username", "--value", "ebsuser"),
    iscsiadm_node("--op", "update", "--name", "node.session.auth.password", "--value", SECRET),
    iscsiadm_node("--login"),
    ["udevadm", "settle", "--timeout=10", f"--exit-if-exists={DEV}"],
]
LOGOUT = [iscsiadm_node("--logout"), iscsiadm_node("--op", "delete")]


def assert_secret_hidden(runner: RecordingRunner, caplog: pytest.LogCaptureFixture) -> None:
    assert all(SECRET not in record.getMessage() for record in caplog.records)
    for call in runner.calls:
        if any(SECRET in arg for arg in call.argv) or (
            call.input and SECRET.encode() in call.input
        ):
            assert SECRET in call.secrets


# -- libvirt ----------------------------------------------------------------------------------


def libvirt(domain_xml: str) -> tuple[LibvirtVmm, RecordingRunner]:
    runner = RecordingRunner([(virsh("dumpxml"), Reply(stdout=domain_xml))], default=Reply())
    return LibvirtVmm(runner, load_templates()), runner


def test_libvirt_iscsi_attach_defines_the_chap_secret_then_attaches_a_network_disk(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    vmm, runner = libvirt(EMPTY_DOMAIN)
    disk = run(vmm.attach("web1", AttachSpec(VOL, "/dev/vdf", SOURCE)))
    uuid = secret_uuid(VOL)
    assert runner.argvs == [
        virsh("dumpxml", "web1"),
        virsh("secret-define", "/dev/stdin"),
        virsh("secret-set-value", "--secret", uuid, "--file", "/dev/stdin", "--plain"),
        virsh("attach-device", "web1", "/dev/stdin", "--live"),
    ]
    define, set_value, attach = runner.calls[1:]
    assert define.input is not None and b'<usage type="iscsi"><target>ebsemu-' in define.input
    assert set_value.input == SECRET.encode() and set_value.secrets == (SECRET,)
    assert attach.input is not None and SECRET.encode() not in attach.input
    (xml_disk,) = parse_disks(f"<domain><devices>{attach.input.decode()}</devices></domain>")
    assert xml_disk.network and xml_disk.source == f"iscsi://10.0.0.5:3260/{IQN}/1"
    assert b'<auth username="ebsuser"><secret type="iscsi" usage="ebsemu-' in attach.input
    assert disk.handle == "vdf" and disk.source == f"iscsi://{PORTAL}/{IQN}/1"
    assert all(SECRET not in arg for argv in runner.argvs for arg in argv)
    assert_secret_hidden(runner, caplog)


def test_libvirt_iscsi_detach_unplugs_the_disk_then_undefines_its_secret() -> None:
    gone = iter([NETWORK_DOMAIN, NETWORK_DOMAIN, EMPTY_DOMAIN])
    runner = RecordingRunner(
        responder=lambda argv: Reply(stdout=next(gone)) if argv[3:4] == ("dumpxml",) else None,
        default=Reply(),
    )
    vmm = LibvirtVmm(runner, load_templates())
    run(vmm.detach("web1", VOL))
    assert runner.argvs == [
        virsh("dumpxml", "web1"),
        virsh("detach-disk", "web1", "vdf", "--live"),
        virsh("dumpxml", "web1"),
        virsh("dumpxml", "web1"),
        virsh("secret-undefine", secret_uuid(VOL)),
    ]


def test_libvirt_iscsi_failed_attach_undefines_the_secret_and_hides_it_from_the_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    vmm, runner = libvirt(EMPTY_DOMAIN)
    runner.reply(
        virsh("attach-device"), Reply(returncode=1, stderr=f"error: bad password {SECRET}\n")
    )
    with pytest.raises(AttachError) as failure:
        run(vmm.attach("web1", AttachSpec(VOL, "/dev/vdf", SOURCE)))
    assert runner.argvs[-2:] == [
        virsh("attach-device", "web1", "/dev/stdin", "--live"),
        virsh("secret-undefine", secret_uuid(VOL)),
    ]
    assert SECRET not in str(failure.value)
    assert_secret_hidden(runner, caplog)


# -- xen --------------------------------------------------------------------------------------

XL_HEADER = "Vdev  BE  handle state evt-ch ring-ref BE-path\n"
XL_ROW = "51792 0   3      4     17     1281     /local/domain/0/backend/vbd/3/51792\n"


def xen(block_list: str = XL_HEADER) -> tuple[XenVmm, RecordingRunner]:
    runner = RecordingRunner(
        [
            (
                ["xl", "list"],
                Reply(stdout="Name ID Mem VCPUs State Time(s)\nweb1 3 1 1 -b---- 1\n"),
            ),
            (["xl", "block-list"], Reply(stdout=block_list)),
            (["xenstore-read"], Reply(stdout=DEV + "\n")),
        ],
        default=Reply(),
    )
    return XenVmm(runner, load_templates(), XenConfig(profile="xen-xl")), runner


def test_xen_iscsi_attach_logs_in_with_chap_then_block_attaches_the_by_path_device(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    vmm, runner = xen()
    disk = run(vmm.attach("web1", AttachSpec(VOL, "/dev/xvdf", SOURCE)))
    assert runner.argvs == [
        ["xl", "block-list", "web1"],
        ["xl", "list"],
        *LOGIN,
        ["xl", "block-attach", "web1", f"phy:{DEV}", "xvdf", "w"],
    ]
    assert disk.source == DEV and disk.handle == "xvdf"
    assert_secret_hidden(runner, caplog)


def test_xen_iscsi_detach_block_detaches_then_logs_out_and_deletes_the_node_record() -> None:
    vmm, runner = xen(XL_HEADER + XL_ROW)
    run(vmm.detach("web1", VOL))
    assert runner.argvs == [
        ["xl", "block-list", "web1"],
        ["xenstore-read", "/local/domain/0/backend/vbd/3/51792/params"],
        ["xl", "block-detach", "web1", "xvdf"],
        *LOGOUT,
    ]


def test_xen_iscsi_failed_block_attach_logs_out_and_hides_the_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    vmm, runner = xen()
    runner.reply(["xl", "block-attach"], Reply(returncode=1, stderr="libxl: error\n"))
    with pytest.raises(AttachError) as failure:
        run(vmm.attach("web1", AttachSpec(VOL, "/dev/xvdf", SOURCE)))
    assert runner.argvs[-3:] == [
        ["xl", "block-attach", "web1", f"phy:{DEV}", "xvdf", "w"],
        *LOGOUT,
    ]
    assert SECRET not in str(failure.value)
    assert_secret_hidden(runner, caplog)


def test_xen_iscsi_failed_login_is_undone_and_its_error_masks_the_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    vmm, runner = xen()
    runner.reply(
        iscsiadm_node("--login"),
        Reply(returncode=24, stderr=f"iscsiadm: Login failed ({SECRET}): Authentication failure\n"),
    )
    with pytest.raises(AttachError) as failure:
        run(vmm.attach("web1", AttachSpec(VOL, "/dev/xvdf", SOURCE)))
    assert runner.argvs[-3:] == [iscsiadm_node("--login"), *LOGOUT]
    assert not any(argv[0] == "xl" and argv[1] == "block-attach" for argv in runner.argvs)
    assert SECRET not in str(failure.value) and "Authentication failure" in str(failure.value)
    assert_secret_hidden(runner, caplog)


# -- host -------------------------------------------------------------------------------------

SESSIONS = ["iscsiadm", "--mode", "session", "--print", "3"]
LOSETUP_LIST = ["losetup", "--json", "--list"]
SESSION_DETAIL = (
    f"Target: {IQN} (non-flash)\n\tCurrent Portal: {PORTAL},1\n"
    "\t\tscsi2 Channel 00 Id 0 Lun: 1\n\t\t\tAttached scsi disk sdb\t\tState: running\n"
)
NO_SESSIONS = Reply(returncode=21, stderr="iscsiadm: No active sessions.\n")


def host(sessions: Reply = NO_SESSIONS) -> tuple[HostVmm, RecordingRunner]:
    runner = RecordingRunner(
        [(SESSIONS, sessions), (LOSETUP_LIST, Reply(stdout='{"loopdevices": []}'))],
        default=Reply(),
    )
    return HostVmm(runner, load_templates()), runner


def test_host_iscsi_attach_logs_in_with_chap_and_hands_over_the_by_path_device(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    vmm, runner = host()
    disk = run(vmm.attach("host", AttachSpec(VOL, "/dev/sdf", SOURCE)))
    assert runner.argvs == [SESSIONS, *LOGIN]
    assert (disk.volume_id, disk.handle, disk.source) == (VOL, DEV, DEV)
    assert_secret_hidden(runner, caplog)


def test_host_iscsi_attach_of_a_logged_in_volume_logs_in_again_never() -> None:
    vmm, runner = host(Reply(stdout=SESSION_DETAIL))
    disk = run(vmm.attach("host", AttachSpec(VOL, "/dev/sdf", SOURCE)))
    assert runner.argvs == [SESSIONS]
    assert disk.handle == DEV


def test_host_lists_iscsi_disks_beside_loop_devices_and_detach_logs_out() -> None:
    vmm, runner = host(Reply(stdout=SESSION_DETAIL))
    disks = run(vmm.list_attached("host"))
    assert [(d.volume_id, d.handle) for d in disks] == [(VOL, DEV)]
    run(vmm.detach("host", VOL))
    assert runner.argvs[-4:] == [LOSETUP_LIST, SESSIONS, *LOGOUT]


def test_host_iscsi_failed_login_is_undone_and_hides_the_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    vmm, runner = host()
    runner.reply(iscsiadm_node("--login"), Reply(returncode=24, stderr="Authentication failure\n"))
    with pytest.raises(AttachError) as failure:
        run(vmm.attach("host", AttachSpec(VOL, "/dev/sdf", SOURCE)))
    assert runner.argvs[-3:] == [iscsiadm_node("--login"), *LOGOUT]
    assert SECRET not in str(failure.value)
    assert_secret_hidden(runner, caplog)


def test_host_iscsi_resize_rescans_the_target_instead_of_a_loop_device() -> None:
    vmm, runner = host(Reply(stdout=SESSION_DETAIL))
    run(vmm.notify_resize("host", VOL, 2 << 30))
    assert runner.argvs[-1] == iscsiadm_node("--rescan")


def test_host_without_open_iscsi_has_no_iscsi_disks() -> None:
    def no_iscsiadm(argv: tuple[str, ...]) -> Reply | None:
        if argv[0] == "iscsiadm":
            raise CommandNotFound(argv, 127, "not installed")
        return None

    runner = RecordingRunner(
        [(LOSETUP_LIST, Reply(stdout='{"loopdevices": []}'))], responder=no_iscsiadm, default=None
    )
    vmm = HostVmm(runner, load_templates())
    assert run(vmm.list_attached("host")) == []
    assert runner.argvs == [LOSETUP_LIST, SESSIONS]


# -- parsing ----------------------------------------------------------------------------------


def test_by_path_device_names_read_back_to_portal_target_and_lun() -> None:
    node = parse_by_path(by_path_device(SOURCE))
    assert node is not None and (node.portal, node.iqn, node.lun) == (PORTAL, IQN, 1)
    assert parse_by_path(f"/dev/ebs/{VOL}") is None


def test_session_detail_maps_each_host_disk_to_its_target_lun() -> None:
    text = (
        "iSCSI Transport Class version 2.0-870\nversion 2.1.8\n"
        f"Target: {IQN} (non-flash)\n\tCurrent Portal: {PORTAL},1\n"
        f"\tPersistent Portal: {PORTAL},1\n\t\tHost Number: 2\tState: running\n"
        "\t\tscsi2 Channel 00 Id 0 Lun: 0\n\t\tscsi2 Channel 00 Id 0 Lun: 1\n"
        "\t\t\tAttached scsi disk sdb\t\tState: running\n"
    )
    disks = parse_session_disks(text)
    assert {k: (v.iqn, v.lun) for k, v in disks.items()} == {"/dev/sdb": (IQN, 1)}


# -- libvirt: Ceph RBD network disks ----------------------------------------------------------

CEPH_KEY = "QVFCdGVzdGtleWZvcmVic2VtdXJiZA=="


def test_libvirt_rbd_attach_without_a_key_is_one_network_disk_with_the_ceph_conf() -> None:
    vmm, runner = libvirt(EMPTY_DOMAIN)
    source = RbdSource("rbd", VOL, "/etc/ceph/ceph.conf", "admin")
    disk = run(vmm.attach("web1", AttachSpec(VOL, "/dev/vdf", source)))
    assert runner.argvs == [
        virsh("dumpxml", "web1"),
        virsh("attach-device", "web1", "/dev/stdin", "--live"),
    ]
    attach = runner.calls[1]
    assert attach.input is not None
    assert b'<source protocol="rbd" name="rbd/' + VOL.encode() + b'">' in attach.input
    assert b'<config file="/etc/ceph/ceph.conf" />' in attach.input
    assert b"<auth" not in attach.input
    (xml_disk,) = parse_disks(f"<domain><devices>{attach.input.decode()}</devices></domain>")
    assert xml_disk.network and xml_disk.source == f"rbd:///rbd/{VOL}"
    assert disk.handle == "vdf" and disk.source == f"rbd://rbd/{VOL}"


def test_libvirt_rbd_attach_with_a_key_defines_a_ceph_secret_holding_the_key_bytes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    vmm, runner = libvirt(EMPTY_DOMAIN)
    source = RbdSource("rbd", VOL, None, "ebs", key=CEPH_KEY)
    run(vmm.attach("web1", AttachSpec(VOL, "/dev/vdf", source)))
    uuid = secret_uuid(VOL)
    assert runner.argvs == [
        virsh("dumpxml", "web1"),
        virsh("secret-define", "/dev/stdin"),
        virsh("secret-set-value", "--secret", uuid, "--file", "/dev/stdin", "--plain"),
        virsh("attach-device", "web1", "/dev/stdin", "--live"),
    ]
    define, set_value, attach = runner.calls[1:]
    assert define.input is not None and b'<usage type="ceph"><name>ebsemu-' in define.input
    assert set_value.input == base64.b64decode(CEPH_KEY) and set_value.secrets == (CEPH_KEY,)
    assert attach.input is not None and CEPH_KEY.encode() not in attach.input
    assert b'<auth username="ebs"><secret type="ceph" usage="ebsemu-' in attach.input
    assert all(CEPH_KEY not in r.getMessage() for r in caplog.records)
