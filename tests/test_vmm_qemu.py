"""QemuVmm against real diskless QEMU VMs (q35, ACPI PCI hot-plug off, pcie-root-ports,
virtio-scsi), driven over their QMP sockets; the QMP client's failure paths against a fake
server. Tests that need QEMU skip, naming it, where it is not installed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backends.base import AttachedDisk, AttachSpec, Domain, DomainState, LocalSource, RbdSource
from backends.errors import BackendError
from backends.vmm.errors import (
    AttachError,
    DetachTimeout,
    DeviceInUse,
    DomainNotFound,
    NoFreeSlot,
    VmmError,
)
from backends.vmm.naming import compact_serial
from backends.vmm.qemu import QemuConfig, QemuVmm
from backends.vmm.qmp import QmpClient, QmpConnectionError, QmpError, QmpTimeout
from tests.api_support import poll
from tests.vmm_fixtures import (
    QemuVm,
    new_volume_id,
    qmp,
    run,
    running_vm,
    source_path,
    sparse_file,
)

MIB = 1024 * 1024


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[QemuVm]:
    with running_vm(tmp_path, "vm1", ports=4) as started:
        yield started


def vmm(directory: Path, **config: Any) -> QemuVmm:
    return QemuVmm(QemuConfig(socket_dir=directory, **config))


def spec(tmp_path: Path, device: str = "/dev/sdf", size: int = 64 * MIB) -> AttachSpec:
    volume_id = new_volume_id()
    path = sparse_file(tmp_path / f"{volume_id}.raw", size)
    return AttachSpec(volume_id, device, LocalSource(str(path)))


async def block_devices(vm: QemuVm) -> dict[str, dict[str, Any]]:
    """query-block entries by qdev path, only those with a device attached."""
    return {b["qdev"]: b for b in await qmp(vm, "query-block") if b.get("qdev")}


async def node_names(vm: QemuVm) -> set[str]:
    return {n["node-name"] for n in await qmp(vm, "query-named-block-nodes", {"flat": True})}


async def devices_on_ports(vm: QemuVm) -> dict[str, list[str]]:
    """Root port id -> ids of the devices on its bus (from QOM: query-pci shows a bridge's
    devices only once guest firmware has numbered the bus)."""
    ports = {}
    for entry in await qmp(vm, "qom-list", {"path": "/machine/peripheral"}):
        if entry["type"] == "child<pcie-root-port>":
            port = entry["name"]
            bus = f"/machine/peripheral/{port}/{port}"
            children = [c["name"] for c in await qmp(vm, "qom-list", {"path": bus})]
            ports[port] = [
                (await qmp(vm, "qom-get", {"path": bus, "property": child})).rsplit("/", 1)[-1]
                for child in children
                if child.startswith("child[")
            ]
    return ports


def test_attach_raw_sparse_file_shows_in_query_block_and_query_pci_with_serial(
    vm: QemuVm, tmp_path: Path
) -> None:
    want = spec(tmp_path)
    driver = vmm(tmp_path)

    async def scenario() -> None:
        disk = await driver.attach("vm1", want)
        assert disk == AttachedDisk(
            want.volume_id, "/dev/sdf", f"ebs.{want.volume_id}.sdf", source_path(want)
        )
        blocks = await block_devices(vm)
        entry = blocks[f"/machine/peripheral/{disk.handle}/virtio-backend"]
        assert entry["inserted"]["file"] == source_path(want)
        assert entry["inserted"]["node-name"] == f"ebs-{want.volume_id}"
        assert entry["inserted"]["image"]["virtual-size"] == 64 * MIB
        assert (await devices_on_ports(vm))["rp1"] == [disk.handle]
        serial = await qmp(
            vm, "qom-get", {"path": f"/machine/peripheral/{disk.handle}", "property": "serial"}
        )
        assert serial == compact_serial(want.volume_id) == want.volume_id.replace("-", "")
        assert await driver.list_attached("vm1") == [disk]

    run(scenario())


def test_eight_volumes_attach_to_one_vm_and_detach_in_another_order(tmp_path: Path) -> None:
    specs = [spec(tmp_path, f"/dev/sd{letter}") for letter in "fghijklm"]
    driver = vmm(tmp_path)

    async def scenario(vm: QemuVm) -> None:
        for s in specs:
            await driver.attach("vm8", s)
        attached = await driver.list_attached("vm8")
        assert sorted(d.volume_id for d in attached) == sorted(s.volume_id for s in specs)
        assert all(devs for devs in (await devices_on_ports(vm)).values())
        for index in (3, 0, 7, 5, 1, 6, 2, 4):
            gone = specs[index].volume_id
            await driver.detach("vm8", gone)
            left = {d.volume_id for d in await driver.list_attached("vm8")}
            assert gone not in left
            assert f"ebs-{gone}" not in await node_names(vm)
            assert not any(gone in qdev for qdev in await block_devices(vm))
        assert await driver.list_attached("vm8") == []
        assert all(devs == [] for devs in (await devices_on_ports(vm)).values())

    with running_vm(tmp_path, "vm8", ports=8) as vm:
        run(scenario(vm))


def test_failed_device_add_rolls_back_the_block_node(vm: QemuVm, tmp_path: Path) -> None:
    want = spec(tmp_path)
    driver = vmm(tmp_path, bus="scsi", scsi_bus="no-such-bus.0")

    async def scenario() -> None:
        with pytest.raises(AttachError, match="device_add"):
            await driver.attach("vm1", want)
        assert f"ebs-{want.volume_id}" not in await node_names(vm)
        assert await driver.list_attached("vm1") == []

    run(scenario())


def test_no_free_hotplug_port_fails_without_leaving_a_block_node(tmp_path: Path) -> None:
    want = spec(tmp_path)
    driver = vmm(tmp_path)

    async def scenario(vm: QemuVm) -> None:
        with pytest.raises(NoFreeSlot):
            await driver.attach("full", want)
        assert not any(n.startswith("ebs-") for n in await node_names(vm))

    with running_vm(tmp_path, "full", ports=2, port_options=",hotplug=off") as vm:
        run(scenario(vm))


def test_attach_fills_ports_then_reports_no_free_slot(tmp_path: Path) -> None:
    specs = [spec(tmp_path, f"/dev/sd{letter}") for letter in "fgh"]
    driver = vmm(tmp_path)

    async def scenario(vm: QemuVm) -> None:
        await driver.attach("two", specs[0])
        await driver.attach("two", specs[1])
        with pytest.raises(NoFreeSlot):
            await driver.attach("two", specs[2])
        assert f"ebs-{specs[2].volume_id}" not in await node_names(vm)

    with running_vm(tmp_path, "two", ports=2) as vm:
        run(scenario(vm))


def test_detach_of_a_volume_not_attached_is_a_no_op(vm: QemuVm, tmp_path: Path) -> None:
    driver = vmm(tmp_path)
    want = spec(tmp_path)

    async def scenario() -> None:
        await driver.detach("vm1", new_volume_id())
        await driver.attach("vm1", want)
        await driver.detach("vm1", want.volume_id)
        await driver.detach("vm1", want.volume_id)
        assert await driver.list_attached("vm1") == []

    run(scenario())


def test_scsi_hd_on_virtio_scsi_attaches_with_the_volume_id_as_serial(
    vm: QemuVm, tmp_path: Path
) -> None:
    driver = vmm(tmp_path, bus="scsi")
    want = spec(tmp_path, "/dev/xvdg")

    async def scenario() -> None:
        disk = await driver.attach("vm1", want)
        assert disk.handle == f"ebs.{want.volume_id}.xvdg"
        serial = await qmp(
            vm, "qom-get", {"path": f"/machine/peripheral/{disk.handle}", "property": "serial"}
        )
        assert serial == want.volume_id
        assert await driver.list_attached("vm1") == [disk]
        await driver.detach("vm1", want.volume_id)
        assert await driver.list_attached("vm1") == []
        assert f"ebs-{want.volume_id}" not in await node_names(vm)

    run(scenario())


def test_attach_again_is_idempotent_and_a_used_device_name_is_refused(
    vm: QemuVm, tmp_path: Path
) -> None:
    driver = vmm(tmp_path)
    first = spec(tmp_path, "/dev/sdf")
    second = spec(tmp_path, "/dev/sdf")

    async def scenario() -> None:
        disk = await driver.attach("vm1", first)
        assert await driver.attach("vm1", first) == disk
        with pytest.raises(DeviceInUse):
            await driver.attach("vm1", second)
        with pytest.raises(AttachError, match="attached to vm1 as /dev/sdf"):
            await driver.attach("vm1", AttachSpec(first.volume_id, "/dev/sdg", first.source))
        assert await driver.list_attached("vm1") == [disk]
        assert f"ebs-{second.volume_id}" not in await node_names(vm)

    run(scenario())


def test_leftover_block_node_of_an_interrupted_attach_is_replaced(
    vm: QemuVm, tmp_path: Path
) -> None:
    driver = vmm(tmp_path)
    want = spec(tmp_path)
    stale = sparse_file(tmp_path / "stale.raw", MIB)

    async def scenario() -> None:
        await qmp(
            vm,
            "blockdev-add",
            {
                "driver": "raw",
                "node-name": f"ebs-{want.volume_id}",
                "file": {"driver": "file", "filename": str(stale)},
            },
        )
        disk = await driver.attach("vm1", want)
        assert disk.source == source_path(want)
        [listed] = await driver.list_attached("vm1")
        assert listed.source == source_path(want)

    run(scenario())


def test_sources_that_cannot_open_and_bad_names_leave_the_vm_untouched(
    vm: QemuVm, tmp_path: Path
) -> None:
    driver = vmm(tmp_path)
    missing_conf = str(tmp_path / "missing-ceph.conf")

    async def scenario() -> None:
        with pytest.raises(AttachError, match="cannot open"):
            await driver.attach(
                "vm1", AttachSpec(new_volume_id(), "/dev/sdf", RbdSource("p", "i", missing_conf))
            )
        with pytest.raises(AttachError, match="No such file"):
            await driver.attach(
                "vm1", AttachSpec(new_volume_id(), "/dev/sdf", LocalSource("/nonexistent"))
            )
        with pytest.raises(VmmError, match="device name"):
            await driver.attach("vm1", spec(tmp_path, "/dev/sdf1"))
        with pytest.raises(VmmError, match="domain name"):
            await driver.list_attached("../vm1")
        assert not any(n.startswith("ebs-") for n in await node_names(vm))

    run(scenario())


def test_list_domains_reports_a_running_vm_and_a_stale_socket_as_terminated(
    tmp_path: Path,
) -> None:
    driver = vmm(tmp_path)
    with running_vm(tmp_path, "gone") as gone:
        gone.kill()  # as a crash: the socket file stays behind
    assert gone.socket.is_socket()
    with running_vm(tmp_path, "alive"):
        domains = {d.name: d.state for d in run(driver.list_domains())}
    assert domains == {"alive": DomainState.RUNNING, "gone": DomainState.TERMINATED}


def test_a_stopped_vm_is_pending_however_often_it_is_asked_never_terminated(
    tmp_path: Path,
) -> None:
    """A QEMU that takes no connection (stopped here; also one whose QMP connection another
    client holds) fills its one-connection backlog: the next connects fail with EAGAIN, which
    used to read as a domain gone, and the API then released (and deleted) volumes still
    plugged into a running guest."""
    driver = vmm(tmp_path, connect_timeout=0.3)
    with running_vm(tmp_path, "frozen") as vm:
        os.kill(vm.pid, signal.SIGSTOP)
        try:
            seen = [{d.name: d.state for d in run(driver.list_domains())} for _ in range(4)]
            with pytest.raises(VmmError) as raised:
                run(driver.list_attached("frozen"))
            assert not isinstance(raised.value, DomainNotFound)
        finally:
            os.kill(vm.pid, signal.SIGCONT)
        assert seen == [{"frozen": DomainState.PENDING}] * 4

        def running() -> bool | None:
            states = {d.name: d.state for d in run(driver.list_domains())}
            return True if states == {"frozen": DomainState.RUNNING} else None

        poll(running, timeout=20)


def test_detach_from_a_vanished_vm_raises_unless_forced(tmp_path: Path) -> None:
    driver = vmm(tmp_path)
    want = spec(tmp_path)
    with running_vm(tmp_path, "short") as vm:
        run(driver.attach("short", want))
        vm.kill()
    assert vm.socket.is_socket()
    with pytest.raises(DomainNotFound):
        run(driver.detach("short", want.volume_id))
    run(driver.detach("short", want.volume_id, force=True))
    with pytest.raises(DomainNotFound):
        run(driver.detach("never-existed", want.volume_id))
    run(driver.detach("never-existed", want.volume_id, force=True))


def test_notify_resize_grows_the_disk_and_never_shrinks_it(vm: QemuVm, tmp_path: Path) -> None:
    driver = vmm(tmp_path)
    want = spec(tmp_path, size=64 * MIB)

    async def scenario() -> None:
        await driver.attach("vm1", want)
        os.truncate(source_path(want), 128 * MIB)  # the storage backend grows the volume
        await driver.notify_resize("vm1", want.volume_id, 128 * MIB)
        [entry] = [b for b in await qmp(vm, "query-block") if b.get("qdev")]
        assert entry["inserted"]["image"]["virtual-size"] == 128 * MIB
        with pytest.raises(VmmError, match="will not shrink"):
            await driver.notify_resize("vm1", want.volume_id, 64 * MIB)
        assert os.path.getsize(source_path(want)) == 128 * MIB
        with pytest.raises(VmmError, match="not attached"):
            await driver.notify_resize("vm1", new_volume_id(), 128 * MIB)

    run(scenario())


def test_detach_times_out_when_the_guest_never_releases_the_disk(tmp_path: Path) -> None:
    # With ACPI PCI hot-plug on, unplug needs a guest OS to acknowledge it; this VM has none.
    driver = vmm(tmp_path, detach_timeout=1.0)
    want = spec(tmp_path)

    async def scenario(vm: QemuVm) -> None:
        await driver.attach("acpi", want)
        with pytest.raises(DetachTimeout):
            await driver.detach("acpi", want.volume_id)
        assert f"ebs-{want.volume_id}" in await node_names(vm)
        assert [d.volume_id for d in await driver.list_attached("acpi")] == [want.volume_id]

    with running_vm(tmp_path, "acpi", acpi_hotplug=True) as vm:
        run(scenario(vm))


def test_check_setup_names_a_missing_socket_directory(tmp_path: Path) -> None:
    run(vmm(tmp_path).check_setup())
    with pytest.raises(BackendError, match="does not exist"):
        run(vmm(tmp_path / "missing").check_setup())


# -- the QMP client against a fake server -----------------------------------------------------

GREETING = {"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}}, "capabilities": []}}


async def serve(path: Path, behaviour: str) -> asyncio.Server:
    """A unix socket server that plays a broken or slow QEMU."""

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def send(message: dict[str, Any]) -> None:
            writer.write(json.dumps(message).encode() + b"\n")

        if behaviour == "silent":
            await reader.read()  # never greets
        elif behaviour == "not-qmp":
            send({"hello": "world"})
        else:
            send(GREETING)
            while line := await reader.readline():
                command = json.loads(line)
                if command["execute"] == "qmp_capabilities":
                    send({"return": {}, "id": command["id"]})
                elif behaviour == "hangup":
                    break
                elif behaviour == "answers":
                    send({"event": "DEVICE_DELETED", "data": {"device": "other"}})
                    send({"event": "DEVICE_DELETED", "data": {"device": "d1"}})
                    send({"error": {"class": "GenericError", "desc": "nope"}, "id": command["id"]})
                # "mute": swallow every other command
        writer.close()

    return await asyncio.start_unix_server(session, path=str(path))


def test_qmp_client_times_out_a_silent_qemu_and_a_command_never_answered(tmp_path: Path) -> None:
    async def scenario() -> None:
        silent = await serve(tmp_path / "silent.qmp", "silent")
        mute = await serve(tmp_path / "mute.qmp", "mute")
        async with silent, mute:
            with pytest.raises(QmpTimeout):
                await QmpClient.connect(tmp_path / "silent.qmp", timeout=0.3)
            async with await QmpClient.connect(tmp_path / "mute.qmp", timeout=2) as client:
                with pytest.raises(QmpTimeout, match="query-block unanswered"):
                    await client.execute("query-block", timeout=0.3)

    run(scenario())


def test_qmp_client_reports_a_broken_connection_and_a_non_qmp_peer(tmp_path: Path) -> None:
    async def scenario() -> None:
        hangup = await serve(tmp_path / "hangup.qmp", "hangup")
        other = await serve(tmp_path / "other.qmp", "not-qmp")
        async with hangup, other:
            async with await QmpClient.connect(tmp_path / "hangup.qmp", timeout=2) as client:
                with pytest.raises(QmpConnectionError):
                    await client.execute("query-block", timeout=2)
            with pytest.raises(QmpConnectionError, match="not a QMP greeting"):
                await QmpClient.connect(tmp_path / "other.qmp", timeout=2)
            with pytest.raises(QmpConnectionError):
                await QmpClient.connect(tmp_path / "absent.qmp", timeout=2)

    run(scenario())


def test_qmp_events_reach_a_waiter_registered_before_the_command(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with (
            await serve(tmp_path / "ev.qmp", "answers"),
            await QmpClient.connect(tmp_path / "ev.qmp", timeout=2) as client,
        ):
            deleted = client.expect_event("DEVICE_DELETED", lambda d: d["device"] == "d1")
            with pytest.raises(QmpError, match="GenericError: nope"):
                await client.execute("device_del", {"id": "d1"}, timeout=2)
            event = await asyncio.wait_for(deleted, 2)
            assert event["data"] == {"device": "d1"}
            assert [e["data"]["device"] for e in client.recent_events] == ["other", "d1"]

    run(scenario())


def test_a_domain_whose_qemu_does_not_answer_is_listed_as_pending(tmp_path: Path) -> None:
    driver = vmm(tmp_path, connect_timeout=0.3)

    async def scenario() -> None:
        async with await serve(tmp_path / "hung.qmp", "silent"):
            assert await driver.list_domains() == [Domain("hung", DomainState.PENDING)]

    run(scenario())
