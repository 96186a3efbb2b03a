"""AttachVolume, DetachVolume, DescribeInstances and ModifyInstanceAttribute through boto3 against
a real server whose instances are real diskless QEMU VMs (q35, ACPI PCI hot-plug off, spare
pcie-root-ports), in two zones with a QEMU VMM host each. QMP (query-block, QOM) proves what
each VM holds. One server and one set of VMs serve the module; every test leaves the volumes it
attached detached again."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from backends.vmm.qmp import QmpClient
from ebsemu.service.instances import instance_id
from tests.api_support import (
    FAST,
    aws_error,
    block_path,
    new_snapshot,
    new_volume,
    poll,
    volume_segment,
)
from tests.block_support import StoredBlock
from tests.server import ZONE, ServerProcess
from tests.vmm_fixtures import HAVE_QEMU, NEEDS_QEMU, QemuVm, qmp, run, running_vm

pytestmark = pytest.mark.skipif(not HAVE_QEMU, reason=NEEDS_QEMU)

MIB = 1024 * 1024
BLOCK = 512 * 1024
ZONE_B = "us-east-1b"
VMM_A = "kvm-a"
VMM_B = "kvm-b"
LIMIT = 8  # max_attachments_per_instance
MISSING_INSTANCE = "i-0123456789abcdef0"
MISSING_VOLUME = "vol-0123456789abcdef0"

# VM name -> (VMM host, hot-plug ports). Every VM starts before the server, so discovery
# sees all of them from the first request on.
VMS = {
    "web": (VMM_A, 10),  # the workhorse: attach/detach, eight volumes, data
    "tiny": (VMM_A, 1),  # one hot-plug port only
    "spare": (VMM_A, 0),  # one more instance, so that DescribeInstances has pages of 5
    "doomed": (VMM_A, 2),  # SIGKILLed by the termination test
    "frozen": (VMM_A, 2),  # SIGSTOPped for a while, then continued
    "gone-kill": (VMM_A, 2),  # SIGKILLed, then a volume is detached from it
    "gone-term": (VMM_A, 2),  # shut down (SIGTERM), then a volume is force-detached
    "far": (VMM_B, 2),  # the other zone
}


@dataclass
class Lab:
    server: ServerProcess
    ec2: Any
    resource: Any  # the boto3 resource API
    vms: dict[str, QemuVm]
    ids: dict[str, str]  # VM name -> instance id

    def log_tail(self) -> str:
        return self.server.log_path.read_text(errors="replace")[-2000:]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    work = tmp_path_factory.mktemp("attach")
    dirs = {VMM_A: work / "qmp-a", VMM_B: work / "qmp-b"}
    for directory in dirs.values():
        directory.mkdir()
    config = f"""\
[server]
deleted_visible_seconds = 2

[region us-east-1]
zones = {ZONE}, {ZONE_B}

[limits]
max_attachments_per_instance = {LIMIT}

[vmm {VMM_A}]
driver = qemu
zone = {ZONE}
socket_dir = {dirs[VMM_A]}
detach_timeout = 10

[vmm {VMM_B}]
driver = qemu
zone = {ZONE_B}
socket_dir = {dirs[VMM_B]}
detach_timeout = 10
"""
    with contextlib.ExitStack() as stack:
        vms = {
            name: stack.enter_context(running_vm(dirs[vmm], name, ports=ports))
            for name, (vmm, ports) in VMS.items()
        }
        # The file backend: the VMs' disks are the volumes' segment files (assert_vm_holds).
        server = ServerProcess(work / "data", config, backend="file")
        stack.callback(server.stop)
        server.start()
        ids = {name: instance_id(vmm, name) for name, (vmm, _) in VMS.items()}
        yield Lab(server, server.client(), server.resource(), vms, ids)


# ---- helpers --------------------------------------------------------------------------------


def describe_volume(ec2: Any, volume_id: str) -> dict[str, Any]:
    (volume,) = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"]
    return dict(volume)


def describe_instance(ec2: Any, iid: str) -> dict[str, Any]:
    (reservation,) = ec2.describe_instances(InstanceIds=[iid])["Reservations"]
    (instance,) = reservation["Instances"]
    return dict(instance)


def instance_ids(ec2: Any, **params: Any) -> list[str]:
    return [
        instance["InstanceId"]
        for reservation in ec2.describe_instances(**params)["Reservations"]
        for instance in reservation["Instances"]
    ]


def wait_attached(lab: Lab, volume_id: str) -> list[str]:
    """Poll DescribeVolumes until the volume's attachment is `attached`; the attachment states
    seen on the way. Fails at once if the attachment disappears (the attach failed)."""
    seen: list[str] = []

    def attached() -> list[str] | None:
        volume = describe_volume(lab.ec2, volume_id)
        if not volume["Attachments"]:
            pytest.fail(f"attach of {volume_id} failed ({volume['State']}):\n{lab.log_tail()}")
        state = volume["Attachments"][0]["State"]
        assert volume["State"] == "in-use"
        if not seen or seen[-1] != state:
            seen.append(state)
        return seen if state == "attached" else None

    return poll(attached)


def wait_all_attached(lab: Lab, volume_ids: list[str]) -> None:
    """Poll DescribeVolumes until every volume's attachment is `attached`."""

    def attached() -> bool | None:
        states = []
        for volume in lab.ec2.describe_volumes(VolumeIds=volume_ids)["Volumes"]:
            if not volume["Attachments"]:
                pytest.fail(f"attach of {volume['VolumeId']} failed:\n{lab.log_tail()}")
            states.append(volume["Attachments"][0]["State"])
        return True if set(states) == {"attached"} else None

    poll(attached)


def new_volumes(lab: Lab, count: int) -> list[str]:
    """``count`` new volumes in the first zone, created at once and waited for together."""
    ids = [lab.ec2.create_volume(AvailabilityZone=ZONE, Size=1)["VolumeId"] for _ in range(count)]
    lab.ec2.get_waiter("volume_available").wait(VolumeIds=ids, WaiterConfig=FAST)
    return ids


def wait_available(lab: Lab, volume_id: str) -> dict[str, Any]:
    lab.ec2.get_waiter("volume_available").wait(VolumeIds=[volume_id], WaiterConfig=FAST)
    volume = describe_volume(lab.ec2, volume_id)
    assert volume["Attachments"] == []
    return volume


def attach(lab: Lab, vm: str, device: str = "/dev/sdf", *, zone: str = ZONE) -> str:
    """A new volume attached to ``vm`` as ``device``, waited for; its id."""
    volume_id = new_volume(lab.ec2, AvailabilityZone=zone)
    lab.ec2.attach_volume(VolumeId=volume_id, InstanceId=lab.ids[vm], Device=device)
    wait_attached(lab, volume_id)
    return volume_id


def detach(lab: Lab, volume_id: str) -> None:
    lab.ec2.detach_volume(VolumeId=volume_id)
    wait_available(lab, volume_id)


@dataclass
class VmView:
    disks: dict[str, dict[str, Any]]  # query-block entries of the service's disks, by qdev id
    serials: dict[str, str]  # qdev id -> the disk's serial
    nodes: set[str]  # the service's block nodes (ebs-<volume id>)


async def _vm_view(vm: QemuVm) -> VmView:
    async with await QmpClient.connect(vm.socket, timeout=5) as client:
        disks = {}
        for block in await client.execute("query-block", timeout=10):
            parts = str(block.get("qdev") or "").split("/")
            qdev_id = next((p for p in parts if p.startswith("ebs.vol-")), None)
            if qdev_id is not None:
                disks[qdev_id] = block
        serials = {
            qdev_id: await client.execute(
                "qom-get",
                {"path": f"/machine/peripheral/{qdev_id}", "property": "serial"},
                timeout=10,
            )
            for qdev_id in disks
        }
        nodes = await client.execute("query-named-block-nodes", {"flat": True}, timeout=10)
    return VmView(disks, serials, {n["node-name"] for n in nodes if n["node-name"][:4] == "ebs-"})


def vm_view(vm: QemuVm) -> VmView:
    """What the VM holds of the service's making, read over one QMP connection."""
    return run(_vm_view(vm))


def assert_vm_holds(lab: Lab, vm: str, expected: dict[str, str]) -> None:
    """``vm`` holds exactly the volumes ``expected`` (volume id -> device name): one disk each,
    with the volume's file behind it and the volume id (sans dash) as its serial, and no
    block node of any other volume."""
    view = vm_view(lab.vms[vm])
    want = {f"ebs.{v}.{device.removeprefix('/dev/')}": v for v, device in expected.items()}
    assert set(view.disks) == set(want)
    for qdev_id, volume_id in want.items():
        inserted = view.disks[qdev_id]["inserted"]
        assert inserted["node-name"] == f"ebs-{volume_id}"
        assert inserted["file"] == str(volume_segment(lab.server.data_dir, volume_id))
        assert view.serials[qdev_id] == volume_id.replace("-", "")
    assert view.nodes == {f"ebs-{v}" for v in expected}


def mappings(ec2: Any, iid: str) -> dict[str, dict[str, Any]]:
    """DescribeInstances' block device mappings of an instance, by volume id."""
    found = describe_instance(ec2, iid)["BlockDeviceMappings"]
    return {m["Ebs"]["VolumeId"]: m for m in found}


# ---- DescribeInstances ----------------------------------------------------------------------


def test_describe_instances_lists_every_vm_running_in_its_zone_under_a_derived_id(
    lab: Lab,
) -> None:
    reservations = lab.ec2.describe_instances()["Reservations"]
    by_id = {r["Instances"][0]["InstanceId"]: r for r in reservations}
    assert all(len(r["Instances"]) == 1 for r in reservations)
    for name, (vmm, _) in VMS.items():
        iid = lab.ids[name]
        assert iid == instance_id(vmm, name)
        assert len(iid) == 19 and iid.startswith("i-")
        instance = by_id[iid]["Instances"][0]
        assert by_id[iid]["ReservationId"].startswith("r-")
        assert by_id[iid]["OwnerId"] == "000000000000"
        if name in ("doomed", "gone-kill", "gone-term"):
            continue  # other tests may have ended these VMs already
        assert instance["State"] == {"Code": 16, "Name": "running"}
        assert instance["Placement"]["AvailabilityZone"] == (ZONE_B if vmm == VMM_B else ZONE)
    # The resource API reads the same.
    far = lab.resource.Instance(lab.ids["far"])
    assert far.state["Name"] == "running"
    assert far.placement["AvailabilityZone"] == ZONE_B
    assert far.block_device_mappings == []


def test_describe_instances_by_ids_and_by_instance_id_and_zone_filters(lab: Lab) -> None:
    web, far = lab.ids["web"], lab.ids["far"]
    assert sorted(instance_ids(lab.ec2, InstanceIds=[web, far])) == sorted([web, far])
    filtered = instance_ids(lab.ec2, Filters=[{"Name": "instance-id", "Values": [far]}])
    assert filtered == [far]
    in_b = instance_ids(lab.ec2, Filters=[{"Name": "availability-zone", "Values": [ZONE_B]}])
    assert in_b == [far]
    in_a = instance_ids(lab.ec2, Filters=[{"Name": "availability-zone", "Values": [ZONE]}])
    assert web in in_a and far not in in_a
    both = instance_ids(
        lab.ec2,
        InstanceIds=[web, far],
        Filters=[{"Name": "availability-zone", "Values": [ZONE]}],
    )
    assert both == [web]


def test_describe_instances_pages_with_max_results_and_next_token(lab: Lab) -> None:
    everything = instance_ids(lab.ec2)
    assert len(everything) >= len(VMS) > 5
    pages: list[list[str]] = []
    token: str | None = None
    while True:
        params: dict[str, Any] = {"MaxResults": 5}
        if token:
            params["NextToken"] = token
        response = lab.ec2.describe_instances(**params)
        pages.append([r["Instances"][0]["InstanceId"] for r in response["Reservations"]])
        token = response.get("NextToken")
        if not token:
            break
    assert len(pages) >= 2 and all(len(page) <= 5 for page in pages)
    assert [iid for page in pages for iid in page] == everything
    paginated = lab.ec2.get_paginator("describe_instances").paginate(
        PaginationConfig={"PageSize": 5}
    )
    assert [
        i["InstanceId"] for page in paginated for r in page["Reservations"] for i in r["Instances"]
    ] == everything


def test_describe_instances_of_an_unknown_id_is_not_found_and_of_a_bad_id_malformed(
    lab: Lab,
) -> None:
    code, message, status = aws_error(
        lab.ec2.describe_instances, InstanceIds=[lab.ids["web"], MISSING_INSTANCE]
    )
    assert (code, status) == ("InvalidInstanceID.NotFound", 400)
    assert MISSING_INSTANCE in message
    for bad in ("i-xyz", "vol-0123456789abcdef0", "i-0123456789ABCDEF0"):
        code, _, _ = aws_error(lab.ec2.describe_instances, InstanceIds=[bad])
        assert code == "InvalidInstanceID.Malformed", bad


def test_describe_instances_filters_by_tag(lab: Lab) -> None:
    lab.ec2.create_tags(Resources=[lab.ids["tiny"]], Tags=[{"Key": "role", "Value": "tiny"}])
    found = instance_ids(lab.ec2, Filters=[{"Name": "tag:role", "Values": ["tiny"]}])
    assert found == [lab.ids["tiny"]]
    assert describe_instance(lab.ec2, lab.ids["tiny"])["Tags"] == [{"Key": "role", "Value": "tiny"}]


# ---- attach and detach ----------------------------------------------------------------------


def test_attach_goes_attaching_then_attached_and_the_vm_holds_a_disk_with_the_volume_serial(
    lab: Lab,
) -> None:
    web = lab.ids["web"]
    volume_id = new_volume(lab.ec2)
    answer = lab.ec2.attach_volume(VolumeId=volume_id, InstanceId=web, Device="/dev/sdf")
    assert answer["State"] == "attaching"
    assert (answer["VolumeId"], answer["InstanceId"], answer["Device"]) == (
        volume_id,
        web,
        "/dev/sdf",
    )
    seen = wait_attached(lab, volume_id)
    assert seen in (["attaching", "attached"], ["attached"])
    volume = describe_volume(lab.ec2, volume_id)
    assert volume["State"] == "in-use"
    (attachment,) = volume["Attachments"]
    assert attachment["InstanceId"] == web and attachment["Device"] == "/dev/sdf"
    assert attachment["AttachTime"] == answer["AttachTime"]
    assert attachment["DeleteOnTermination"] is False
    assert_vm_holds(lab, "web", {volume_id: "/dev/sdf"})
    mapping = mappings(lab.ec2, web)[volume_id]
    assert mapping["DeviceName"] == "/dev/sdf"
    assert mapping["Ebs"]["Status"] == "attached"
    by_volume = [{"Name": "block-device-mapping.volume-id", "Values": [volume_id]}]
    assert instance_ids(lab.ec2, Filters=by_volume) == [web]
    by_attachment = [{"Name": "attachment.instance-id", "Values": [web]}]
    found = lab.ec2.describe_volumes(Filters=by_attachment)["Volumes"]
    assert [v["VolumeId"] for v in found] == [volume_id]
    detach(lab, volume_id)
    assert_vm_holds(lab, "web", {})
    assert instance_ids(lab.ec2, Filters=by_volume) == []
    assert mappings(lab.ec2, web) == {}


def test_resource_api_attach_volume_in_use_waiter_and_detach_from_instance(lab: Lab) -> None:
    volume = lab.resource.Volume(new_volume(lab.ec2))
    instance = lab.resource.Instance(lab.ids["web"])
    answer = instance.attach_volume(VolumeId=volume.id, Device="/dev/sdg")
    assert answer["State"] == "attaching"
    lab.ec2.get_waiter("volume_in_use").wait(VolumeIds=[volume.id], WaiterConfig=FAST)
    wait_attached(lab, volume.id)
    volume.reload()
    assert volume.state == "in-use"
    assert volume.attachments[0]["InstanceId"] == instance.id
    instance.reload()
    assert [m["Ebs"]["VolumeId"] for m in instance.block_device_mappings] == [volume.id]
    assert [v.id for v in instance.volumes.all()] == [volume.id]
    assert volume.detach_from_instance()["State"] == "detaching"
    lab.ec2.get_waiter("volume_available").wait(VolumeIds=[volume.id], WaiterConfig=FAST)
    volume.reload()
    assert volume.attachments == []
    assert_vm_holds(lab, "web", {})


@pytest.mark.parametrize(
    "how",
    ["volume-id-only", "with-instance-id", "with-instance-id-and-device", "force"],
)
def test_detach_removes_the_disk_from_the_vm_and_makes_the_volume_available(
    lab: Lab, how: str
) -> None:
    volume_id = attach(lab, "web", "/dev/sdh")
    assert_vm_holds(lab, "web", {volume_id: "/dev/sdh"})
    params: dict[str, Any] = {"VolumeId": volume_id}
    if how.startswith("with-instance-id"):
        params["InstanceId"] = lab.ids["web"]
    if how.endswith("device"):
        params["Device"] = "/dev/sdh"
    if how == "force":
        params["Force"] = True
    answer = lab.ec2.detach_volume(**params)
    assert answer["State"] == "detaching"
    assert (answer["InstanceId"], answer["Device"]) == (lab.ids["web"], "/dev/sdh")
    wait_available(lab, volume_id)
    assert_vm_holds(lab, "web", {})
    assert mappings(lab.ec2, lab.ids["web"]) == {}


def test_eight_volumes_attach_to_one_vm_a_ninth_exceeds_the_limit_and_they_detach_in_another_order(
    lab: Lab,
) -> None:
    web = lab.ids["web"]
    devices = [f"/dev/sd{letter}" for letter in "fghijklm"]
    *volumes, ninth = new_volumes(lab, len(devices) + 1)
    for volume_id, device in zip(volumes, devices, strict=True):  # all in flight at once
        lab.ec2.attach_volume(VolumeId=volume_id, InstanceId=web, Device=device)
    wait_all_attached(lab, volumes)
    held = dict(zip(volumes, devices, strict=True))
    assert_vm_holds(lab, "web", held)
    assert {v: m["DeviceName"] for v, m in mappings(lab.ec2, web).items()} == held

    code, _, _ = aws_error(lab.ec2.attach_volume, VolumeId=ninth, InstanceId=web, Device="/dev/sdn")
    assert code == "AttachmentLimitExceeded"
    assert describe_volume(lab.ec2, ninth)["State"] == "available"

    for index in (3, 0, 7, 5, 1, 6, 2, 4):
        volume_id = volumes[index]
        lab.ec2.detach_volume(VolumeId=volume_id, InstanceId=web)
        wait_available(lab, volume_id)
        del held[volume_id]
        assert_vm_holds(lab, "web", held)
    assert mappings(lab.ec2, web) == {}


def test_delete_volume_of_an_attached_volume_is_volume_in_use(lab: Lab) -> None:
    volume_id = attach(lab, "web")
    code, _, status = aws_error(lab.ec2.delete_volume, VolumeId=volume_id)
    assert (code, status) == ("VolumeInUse", 400)
    assert describe_volume(lab.ec2, volume_id)["State"] == "in-use"
    assert_vm_holds(lab, "web", {volume_id: "/dev/sdf"})
    detach(lab, volume_id)
    lab.ec2.delete_volume(VolumeId=volume_id)


def test_attach_of_an_attached_volume_is_volume_in_use_and_a_used_device_invalid_parameter(
    lab: Lab,
) -> None:
    web, tiny = lab.ids["web"], lab.ids["tiny"]
    first = attach(lab, "web", "/dev/sdf")
    for instance, device in ((web, "/dev/sdg"), (web, "/dev/sdf"), (tiny, "/dev/sdf")):
        code, _, _ = aws_error(
            lab.ec2.attach_volume, VolumeId=first, InstanceId=instance, Device=device
        )
        assert code == "VolumeInUse", (instance, device)
    second = new_volume(lab.ec2)
    code, message, _ = aws_error(
        lab.ec2.attach_volume, VolumeId=second, InstanceId=web, Device="/dev/sdf"
    )
    assert code == "InvalidParameterValue"
    assert "/dev/sdf" in message
    assert describe_volume(lab.ec2, second)["State"] == "available"
    assert_vm_holds(lab, "web", {first: "/dev/sdf"})
    detach(lab, first)


@contextlib.contextmanager
def block_held_back(block: StoredBlock, data: bytes) -> Iterator[None]:
    """Replace the stored block with a FIFO where the store also looks for blocks (the earlier
    one-file-per-block layout): a restore that reads it waits (in its worker thread) until the
    block is fed in on exit; then the block stays there as a file."""
    block.unlink()
    path = block.legacy_path
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    try:
        yield
    finally:
        deadline = time.monotonic() + 20
        while True:  # no reader yet (the restore has not opened it): ENXIO
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError as exc:
                if exc.errno != errno.ENXIO or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        os.set_blocking(fd, True)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        path.unlink()
        path.write_bytes(data)


def test_attach_of_a_creating_volume_is_incorrect_state(lab: Lab) -> None:
    source = new_volume(lab.ec2)
    data = os.urandom(BLOCK)
    with volume_segment(lab.server.data_dir, source).open("r+b") as handle:
        handle.write(data)
    snapshot_id = new_snapshot(lab.ec2, source)
    # The restore of the new volume waits for its one block: the volume stays `creating`.
    with block_held_back(block_path(lab.server.data_dir, data), data):
        volume_id = lab.ec2.create_volume(AvailabilityZone=ZONE, SnapshotId=snapshot_id)["VolumeId"]
        assert describe_volume(lab.ec2, volume_id)["State"] == "creating"
        code, message, status = aws_error(
            lab.ec2.attach_volume,
            VolumeId=volume_id,
            InstanceId=lab.ids["web"],
            Device="/dev/sdf",
        )
        assert (code, status) == ("IncorrectState", 400)
        assert "creating" in message
        assert describe_volume(lab.ec2, volume_id)["State"] == "creating"
    volume = wait_available(lab, volume_id)
    assert volume["Attachments"] == []
    assert_vm_holds(lab, "web", {})
    with volume_segment(lab.server.data_dir, volume_id).open("rb") as handle:
        assert handle.read(BLOCK) == data


def test_attach_across_zones_is_zone_mismatch_and_within_the_other_zone_works(lab: Lab) -> None:
    volume_a = new_volume(lab.ec2)
    code, _, _ = aws_error(
        lab.ec2.attach_volume, VolumeId=volume_a, InstanceId=lab.ids["far"], Device="/dev/sdf"
    )
    assert code == "InvalidVolume.ZoneMismatch"
    assert describe_volume(lab.ec2, volume_a)["State"] == "available"
    volume_b = attach(lab, "far", "/dev/sdf", zone=ZONE_B)
    assert_vm_holds(lab, "far", {volume_b: "/dev/sdf"})
    code, _, _ = aws_error(
        lab.ec2.attach_volume,
        VolumeId=new_volume(lab.ec2, AvailabilityZone=ZONE_B),
        InstanceId=lab.ids["web"],
        Device="/dev/sdf",
    )
    assert code == "InvalidVolume.ZoneMismatch"
    detach(lab, volume_b)
    assert_vm_holds(lab, "far", {})


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"InstanceId": MISSING_INSTANCE}, "InvalidInstanceID.NotFound"),
        ({"InstanceId": "i-xyz"}, "InvalidInstanceID.Malformed"),
        ({"Device": "/dev/foo"}, "InvalidParameterValue"),
        ({"Device": "sdf"}, "InvalidParameterValue"),
        ({"Device": "/dev/sdf; reboot"}, "InvalidParameterValue"),
        ({"VolumeId": MISSING_VOLUME}, "InvalidVolume.NotFound"),
    ],
)
def test_attach_error_leaves_the_volume_available(
    lab: Lab, change: dict[str, str], expected: str
) -> None:
    volume_id = new_volume(lab.ec2)
    params = {"VolumeId": volume_id, "InstanceId": lab.ids["web"], "Device": "/dev/sdf"}
    code, _, status = aws_error(lab.ec2.attach_volume, **{**params, **change})
    assert (code, status) == (expected, 400)
    assert describe_volume(lab.ec2, volume_id)["State"] == "available"
    assert_vm_holds(lab, "web", {})


def test_detach_errors_leave_the_attachment_in_place(lab: Lab) -> None:
    loose = new_volume(lab.ec2)
    code, message, _ = aws_error(lab.ec2.detach_volume, VolumeId=loose)
    assert code == "IncorrectState" and "available" in message
    volume_id = attach(lab, "web", "/dev/sdf")
    for params, expected in (
        ({"InstanceId": lab.ids["tiny"]}, "InvalidAttachment.NotFound"),
        ({"Device": "/dev/sdz"}, "InvalidAttachment.NotFound"),
        ({"InstanceId": "i-xyz"}, "InvalidInstanceID.Malformed"),
        ({"VolumeId": MISSING_VOLUME}, "InvalidVolume.NotFound"),
    ):
        code, _, _ = aws_error(lab.ec2.detach_volume, **{"VolumeId": volume_id, **params})
        assert code == expected, params
    assert describe_volume(lab.ec2, volume_id)["Attachments"][0]["State"] == "attached"
    assert_vm_holds(lab, "web", {volume_id: "/dev/sdf"})
    detach(lab, volume_id)


def test_attach_to_a_vm_without_a_free_hotplug_port_fails_back_to_available_leaving_nothing(
    lab: Lab,
) -> None:
    tiny = lab.ids["tiny"]
    first = attach(lab, "tiny", "/dev/sdf")  # takes the one port
    second = new_volume(lab.ec2)
    answer = lab.ec2.attach_volume(VolumeId=second, InstanceId=tiny, Device="/dev/sdg")
    assert answer["State"] == "attaching"
    volume = wait_available(lab, second)
    assert volume["Attachments"] == []
    assert_vm_holds(lab, "tiny", {first: "/dev/sdf"})
    assert set(mappings(lab.ec2, tiny)) == {first}
    detach(lab, first)
    # The port is free again: the volume that did not fit attaches now.
    lab.ec2.attach_volume(VolumeId=second, InstanceId=tiny, Device="/dev/sdg")
    wait_attached(lab, second)
    assert_vm_holds(lab, "tiny", {second: "/dev/sdg"})
    detach(lab, second)


def test_windows_style_device_name_xvdg_attaches_to_the_vm(lab: Lab) -> None:
    volume_id = new_volume(lab.ec2)
    lab.ec2.attach_volume(VolumeId=volume_id, InstanceId=lab.ids["web"], Device="xvdg")
    wait_attached(lab, volume_id)
    assert describe_volume(lab.ec2, volume_id)["Attachments"][0]["Device"] == "xvdg"
    assert_vm_holds(lab, "web", {volume_id: "xvdg"})
    lab.ec2.detach_volume(VolumeId=volume_id, Device="xvdg")
    wait_available(lab, volume_id)
    assert_vm_holds(lab, "web", {})


def test_delete_on_termination_set_by_modify_instance_attribute_shows_in_both_describes(
    lab: Lab,
) -> None:
    web = lab.ids["web"]
    volume_id = attach(lab, "web", "/dev/sdf")
    for value in (True, False):
        lab.ec2.modify_instance_attribute(
            InstanceId=web,
            BlockDeviceMappings=[{"DeviceName": "/dev/sdf", "Ebs": {"DeleteOnTermination": value}}],
        )
        attachment = describe_volume(lab.ec2, volume_id)["Attachments"][0]
        assert attachment["DeleteOnTermination"] is value
        assert mappings(lab.ec2, web)[volume_id]["Ebs"]["DeleteOnTermination"] is value
    detach(lab, volume_id)


def test_modify_instance_attribute_changes_every_mapping_or_none(lab: Lab) -> None:
    web = lab.ids["web"]
    volume_id = attach(lab, "web", "xvdg")

    def delete_on_termination() -> bool:
        return bool(mappings(lab.ec2, web)[volume_id]["Ebs"]["DeleteOnTermination"])

    assert delete_on_termination() is False
    code, message, _ = aws_error(
        lab.ec2.modify_instance_attribute,
        InstanceId=web,
        BlockDeviceMappings=[
            {"DeviceName": "xvdg", "Ebs": {"DeleteOnTermination": True}},
            {"DeviceName": "/dev/sdz", "Ebs": {"DeleteOnTermination": True}},
        ],
    )
    assert code == "InvalidParameterValue" and "/dev/sdz" in message
    assert delete_on_termination() is False  # the first mapping was not applied either
    # xvdg is /dev/xvdg: the same attachment point, however it is written.
    lab.ec2.modify_instance_attribute(
        InstanceId=web,
        BlockDeviceMappings=[{"DeviceName": "/dev/xvdg", "Ebs": {"DeleteOnTermination": True}}],
    )
    assert delete_on_termination() is True
    other = new_volume(lab.ec2)
    code, _, _ = aws_error(
        lab.ec2.attach_volume, VolumeId=other, InstanceId=web, Device="/dev/xvdg"
    )
    assert code == "InvalidParameterValue"  # refused at once, not rolled back later
    assert describe_volume(lab.ec2, other)["State"] == "available"
    lab.ec2.modify_instance_attribute(
        InstanceId=web,
        BlockDeviceMappings=[{"DeviceName": "xvdg", "Ebs": {"DeleteOnTermination": False}}],
    )
    lab.ec2.detach_volume(VolumeId=volume_id, Device="xvdg")
    wait_available(lab, volume_id)


def attachments(lab: Lab, volume_id: str) -> tuple[str, dict[str, str]]:
    """The volume's state and its attachments' states, by instance id."""
    volume = describe_volume(lab.ec2, volume_id)
    return volume["State"], {a["InstanceId"]: a["State"] for a in volume["Attachments"]}


def qemu_io(lab: Lab, vm: str, volume_id: str, device: str, command: str) -> str:
    """Run a qemu-io command on the guest disk of ``volume_id`` in ``vm``; its output."""
    backend = f"ebs.{volume_id}.{device.removeprefix('/dev/')}/virtio-backend"
    line = f'qemu-io -d {backend} "{command}"'
    return str(run(qmp(lab.vms[vm], "human-monitor-command", {"command-line": line})))


def test_a_multi_attach_volume_is_written_in_one_vm_and_read_in_another_until_the_last_detach(
    lab: Lab,
) -> None:
    volume_id = new_volume(lab.ec2, VolumeType="io2", Iops=100, Size=4, MultiAttachEnabled=True)
    web, tiny = lab.ids["web"], lab.ids["tiny"]
    lab.ec2.attach_volume(VolumeId=volume_id, InstanceId=web, Device="/dev/sdh")
    lab.ec2.attach_volume(VolumeId=volume_id, InstanceId=tiny, Device="/dev/sdf")
    both = ("in-use", {web: "attached", tiny: "attached"})
    poll(lambda: attachments(lab, volume_id) == both or None)
    assert_vm_holds(lab, "web", {volume_id: "/dev/sdh"})
    assert_vm_holds(lab, "tiny", {volume_id: "/dev/sdf"})
    assert mappings(lab.ec2, tiny)[volume_id]["DeviceName"] == "/dev/sdf"

    # One instance holds it once; a volume without Multi-Attach, one instance only.
    code, _, _ = aws_error(
        lab.ec2.attach_volume, VolumeId=volume_id, InstanceId=web, Device="/dev/sdi"
    )
    assert code == "VolumeInUse"
    plain = attach(lab, "web", "/dev/sdi")
    code, _, _ = aws_error(
        lab.ec2.attach_volume, VolumeId=plain, InstanceId=tiny, Device="/dev/sdg"
    )
    assert code == "VolumeInUse"
    detach(lab, plain)

    # Both guests hold the disk writable at once (QEMU locks no one out of a shared disk).
    for vm, device in (("web", "sdh"), ("tiny", "sdf")):
        path = f"/machine/peripheral/ebs.{volume_id}.{device}"
        assert run(qmp(lab.vms[vm], "qom-get", {"path": path, "property": "share-rw"})) is True
    assert qemu_io(lab, "web", volume_id, "/dev/sdh", "write -P 0x6d 0 1M") == ""
    assert qemu_io(lab, "tiny", volume_id, "/dev/sdf", "write -P 0x2e 1M 1M") == ""
    both_written = b"\x6d" * MIB + b"\x2e" * MIB
    with volume_segment(lab.server.data_dir, volume_id).open("rb") as handle:
        assert handle.read(2 * MIB) == both_written

    # Which attachment to end must be said; the other one stays, and so does the volume.
    code, message, _ = aws_error(lab.ec2.detach_volume, VolumeId=volume_id)
    assert code == "MissingParameter" and "InstanceId" in message
    lab.ec2.detach_volume(VolumeId=volume_id, InstanceId=web)
    poll(lambda: attachments(lab, volume_id) == ("in-use", {tiny: "attached"}) or None)
    assert_vm_holds(lab, "web", {})
    assert_vm_holds(lab, "tiny", {volume_id: "/dev/sdf"})
    assert qemu_io(lab, "tiny", volume_id, "/dev/sdf", "write -P 0x3f 2M 1M") == ""

    lab.ec2.detach_volume(VolumeId=volume_id, InstanceId=tiny)
    wait_available(lab, volume_id)
    assert_vm_holds(lab, "tiny", {})
    with volume_segment(lab.server.data_dir, volume_id).open("rb") as handle:
        assert handle.read(3 * MIB) == both_written + b"\x3f" * MIB


def test_multi_attach_cannot_be_enabled_on_an_attached_volume_whose_guest_holds_it_alone(
    lab: Lab,
) -> None:
    """The guest that holds it opened it without share-rw: a second instance's attach was
    accepted, then failed in QEMU ("Failed to get write lock") and was rolled back."""
    volume_id = new_volume(lab.ec2, VolumeType="io2", Iops=100, Size=4)
    web = lab.ids["web"]
    lab.ec2.attach_volume(VolumeId=volume_id, InstanceId=web, Device="/dev/sdh")
    wait_attached(lab, volume_id)

    code, message, status = aws_error(
        lab.ec2.modify_volume, VolumeId=volume_id, MultiAttachEnabled=True
    )
    assert (code, status) == ("InvalidParameterValue", 400) and "attached" in message
    assert describe_volume(lab.ec2, volume_id)["MultiAttachEnabled"] is False

    detach(lab, volume_id)
    modified = lab.ec2.modify_volume(VolumeId=volume_id, MultiAttachEnabled=True)
    assert modified["VolumeModification"]["TargetMultiAttachEnabled"] is True


# ---- VMs that end ---------------------------------------------------------------------------


def test_killed_vm_becomes_terminated_and_releases_its_volumes_deleting_those_marked(
    lab: Lab,
) -> None:
    doomed = lab.ids["doomed"]
    keep = attach(lab, "doomed", "/dev/sdf")
    drop = attach(lab, "doomed", "/dev/sdg")
    lab.ec2.modify_instance_attribute(
        InstanceId=doomed,
        BlockDeviceMappings=[{"DeviceName": "/dev/sdg", "Ebs": {"DeleteOnTermination": True}}],
    )
    lab.vms["doomed"].kill()

    def terminated() -> dict[str, Any] | None:
        instance = describe_instance(lab.ec2, doomed)
        return instance if instance["State"]["Name"] == "terminated" else None

    instance = poll(terminated)
    assert instance["State"] == {"Code": 48, "Name": "terminated"}
    assert instance["BlockDeviceMappings"] == []
    wait_available(lab, keep)

    def dropped() -> str | None:
        try:
            state = describe_volume(lab.ec2, drop)["State"]
        except lab.ec2.exceptions.ClientError as exc:
            assert exc.response["Error"]["Code"] == "InvalidVolume.NotFound"
            return "gone"
        return state if state == "deleted" else None

    poll(dropped)
    gone = [{"Name": "instance-state-name", "Values": ["terminated"]}]
    assert doomed in instance_ids(lab.ec2, Filters=gone)
    running = [{"Name": "instance-state-name", "Values": ["running"]}]
    live = instance_ids(lab.ec2, Filters=running)
    assert doomed not in live and lab.ids["web"] in live
    code, _, _ = aws_error(
        lab.ec2.attach_volume, VolumeId=keep, InstanceId=doomed, Device="/dev/sdf"
    )
    assert code == "IncorrectInstanceState"


def test_a_vm_that_stops_answering_for_a_while_keeps_its_volumes(lab: Lab) -> None:
    """A QEMU that takes no QMP connection for a while (stopped here; as well one whose QMP
    connection another client holds) is pending, not terminated. Taking it for terminated
    released its volumes while they were still plugged in, and deleted those marked
    DeleteOnTermination under the running guest."""
    frozen = lab.ids["frozen"]
    volume_id = attach(lab, "frozen", "/dev/sdf")
    lab.ec2.modify_instance_attribute(
        InstanceId=frozen,
        BlockDeviceMappings=[{"DeviceName": "/dev/sdf", "Ebs": {"DeleteOnTermination": True}}],
    )
    pid = lab.vms["frozen"].pid
    os.kill(pid, signal.SIGSTOP)
    try:
        states = set()
        until = time.monotonic() + 20  # long enough for the QMP backlog to fill
        while time.monotonic() < until:
            states.add(describe_instance(lab.ec2, frozen)["State"]["Name"])
            time.sleep(1)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert "terminated" not in states, states

    def running() -> dict[str, Any] | None:
        instance = describe_instance(lab.ec2, frozen)
        return instance if instance["State"]["Name"] == "running" else None

    assert [m["Ebs"]["VolumeId"] for m in poll(running)["BlockDeviceMappings"]] == [volume_id]
    assert describe_volume(lab.ec2, volume_id)["State"] == "in-use"
    assert_vm_holds(lab, "frozen", {volume_id: "/dev/sdf"})
    detach(lab, volume_id)


@pytest.mark.parametrize(("vm", "force"), [("gone-kill", False), ("gone-term", True)])
def test_detach_from_a_vanished_vm_makes_the_volume_available(
    lab: Lab, vm: str, force: bool
) -> None:
    volume_id = attach(lab, vm, "/dev/sdf")
    if vm == "gone-kill":
        lab.vms[vm].kill()  # SIGKILL: the QMP socket file stays, nobody answers on it
    else:
        lab.vms[vm].stop()
    # At once, before discovery (which only DescribeInstances and AttachVolume run) sees the
    # VM gone: the detach itself has to cope with the missing domain.
    answer = lab.ec2.detach_volume(VolumeId=volume_id, Force=force)
    assert answer["State"] == "detaching"
    wait_available(lab, volume_id)
    assert (
        lab.ec2.describe_volumes(
            Filters=[{"Name": "attachment.instance-id", "Values": [lab.ids[vm]]}]
        )["Volumes"]
        == []
    )


# ---- restart and data -----------------------------------------------------------------------


def test_instance_ids_and_attachments_survive_a_server_restart(lab: Lab) -> None:
    before = sorted(instance_ids(lab.ec2))
    volume_id = attach(lab, "web", "/dev/sdi")
    lab.server.restart()
    assert sorted(instance_ids(lab.ec2)) == before
    volume = describe_volume(lab.ec2, volume_id)
    assert volume["State"] == "in-use"
    assert volume["Attachments"][0]["State"] == "attached"
    assert mappings(lab.ec2, lab.ids["web"])[volume_id]["DeviceName"] == "/dev/sdi"
    assert_vm_holds(lab, "web", {volume_id: "/dev/sdi"})
    detach(lab, volume_id)
    assert_vm_holds(lab, "web", {})


def test_bytes_written_through_the_vms_disk_are_in_the_volume_and_its_snapshot_after_detach(
    lab: Lab,
) -> None:
    volume_id = attach(lab, "web", "/dev/sdj")
    backend = f"ebs.{volume_id}.sdj/virtio-backend"  # the guest device's own block backend
    out = run(
        qmp(
            lab.vms["web"],
            "human-monitor-command",
            {"command-line": f'qemu-io -d {backend} "write -P 0x5a 0 1M"'},
        )
    )
    assert out == "", out
    detach(lab, volume_id)
    written = b"\x5a" * MIB
    with volume_segment(lab.server.data_dir, volume_id).open("rb") as handle:
        assert handle.read(MIB + BLOCK) == written + bytes(BLOCK)
    snapshot_id = new_snapshot(lab.ec2, volume_id)
    assert block_path(lab.server.data_dir, written[:BLOCK]).is_file()
    restored = new_volume(lab.ec2, SnapshotId=snapshot_id)
    with volume_segment(lab.server.data_dir, restored).open("rb") as handle:
        assert handle.read(MIB + BLOCK) == written + bytes(BLOCK)
