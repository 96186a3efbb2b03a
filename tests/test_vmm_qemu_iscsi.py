"""QemuVmm attaching volumes exported by a real tgtd (tests/tgt_fixtures.py) to real diskless
QEMU VMs through QEMU's iscsi block driver, with the CHAP secret in a QMP secret object."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backends.base import AttachedDisk, AttachSpec, ExportInfo, Initiator, IscsiSource
from backends.export import TgtConfig, TgtExport
from backends.export.tgtshow import parse_targets
from backends.vmm.errors import AttachError
from backends.vmm.qemu import QemuConfig, QemuVmm
from hostcmds import LocalRunner, load_templates
from tests.tgt_fixtures import Tgtd, running_tgtd
from tests.vmm_fixtures import QemuVm, new_volume_id, qmp, run, running_vm, sparse_file

MIB = 1024 * 1024
HOST = Initiator(address="127.0.0.1")


@pytest.fixture
def tgtd(tmp_path: Path) -> Iterator[Tgtd]:
    with running_tgtd(tmp_path) as daemon:
        yield daemon


@pytest.fixture
def vm(tmp_path: Path, tgtd: Tgtd) -> Iterator[QemuVm]:
    with running_vm(tmp_path, "vm1", ports=2) as started:
        yield started


def exported(
    tgtd: Tgtd, tmp_path: Path, initiator: Initiator = HOST
) -> tuple[ExportInfo, IscsiSource, Path]:
    volume_id = new_volume_id()
    path = sparse_file(tmp_path / f"{volume_id}.raw", 64 * MIB)
    backend = TgtExport(
        LocalRunner(),
        load_templates(),
        TgtConfig(tmp_path / "exports", portal=tgtd.portal, control_port=tgtd.control_port),
    )
    info = run(backend.export(volume_id, str(path), initiator))
    assert isinstance(info.source, IscsiSource)
    return info, info.source, path


def spec(info: ExportInfo, device: str = "/dev/sdf") -> AttachSpec:
    return AttachSpec(info.volume_id, device, info.source)


async def objects(vm: QemuVm) -> set[str]:
    return {o["name"] for o in await qmp(vm, "qom-list", {"path": "/objects"})}


async def node_names(vm: QemuVm) -> set[str]:
    return {n["node-name"] for n in await qmp(vm, "query-named-block-nodes", {"flat": True})}


async def qdevs(vm: QemuVm) -> set[str]:
    return {str(b["qdev"]) for b in await qmp(vm, "query-block") if b.get("qdev")}


async def qemu_io(vm: QemuVm, qdev: str, command: str) -> None:
    """Run a qemu-io command on the disk's block backend (HMP), as the guest would write. Its
    report goes to QEMU's stdout, not to the monitor: check the effect, not the output."""
    line = f'qemu-io -d {qdev}/virtio-backend "{command}"'
    answer = await qmp(vm, "human-monitor-command", {"command-line": line})
    assert not answer, answer  # the monitor answers only errors


def test_iscsi_volume_attaches_and_bytes_written_through_qemu_land_in_the_exported_file(
    tgtd: Tgtd, vm: QemuVm, tmp_path: Path
) -> None:
    info, source, path = exported(tgtd, tmp_path)
    volume_id = info.volume_id
    driver = QemuVmm(QemuConfig(socket_dir=tmp_path))
    url = f"iscsi://{tgtd.portal}/{source.iqn}/1"

    async def scenario() -> None:
        disk = await driver.attach("vm1", spec(info))
        assert disk == AttachedDisk(volume_id, "/dev/sdf", f"ebs.{volume_id}.sdf", url)
        assert await driver.list_attached("vm1") == [disk]
        assert await driver.attach("vm1", spec(info)) == disk  # idempotent

        blocks = {b["qdev"]: b for b in await qmp(vm, "query-block") if b.get("qdev")}
        inserted = blocks[f"/machine/peripheral/{disk.handle}/virtio-backend"]["inserted"]
        assert inserted["node-name"] == f"ebs-{volume_id}"
        assert inserted["image"]["virtual-size"] == 64 * MIB
        options = json.loads(inserted["file"].removeprefix("json:"))["file"]
        assert options["driver"] == "iscsi" and options["target"] == source.iqn
        assert options["password-secret"] == f"ebs-{volume_id}-chap"
        assert f"ebs-{volume_id}-chap" in await objects(vm)
        assert source.chap_secret and source.chap_secret not in json.dumps(blocks)
        assert parse_targets(tgtd.show_targets())[source.iqn].sessions == 1

        await qemu_io(vm, disk.handle, "write -P 0xcd 1M 256k")  # returns once written
        with path.open("rb") as handle:
            handle.seek(MIB)
            assert handle.read(256 * 1024) == b"\xcd" * (256 * 1024)

        await driver.detach("vm1", volume_id)
        assert not any(disk.handle in qdev for qdev in await qdevs(vm))
        assert await driver.list_attached("vm1") == []
        assert f"ebs-{volume_id}" not in await node_names(vm)
        assert f"ebs-{volume_id}-chap" not in await objects(vm)
        await driver.detach("vm1", volume_id)  # idempotent

    run(scenario())


def test_wrong_chap_secret_fails_the_attach_and_leaves_no_node_or_secret_object(
    tgtd: Tgtd, vm: QemuVm, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    info, source, _ = exported(tgtd, tmp_path)
    wrong = dataclasses.replace(source, chap_secret="not-the-secret-0123456789")
    driver = QemuVmm(QemuConfig(socket_dir=tmp_path))

    async def scenario() -> None:
        with pytest.raises(AttachError, match="Authentication failure") as failed:
            await driver.attach("vm1", AttachSpec(info.volume_id, "/dev/sdf", wrong))
        assert "not-the-secret" not in str(failed.value)
        assert f"ebs-{info.volume_id}" not in await node_names(vm)
        assert f"ebs-{info.volume_id}-chap" not in await objects(vm)
        assert await driver.list_attached("vm1") == []
        await driver.attach("vm1", spec(info))  # the right secret still works afterwards
        await driver.detach("vm1", info.volume_id)

    run(scenario())
    assert "not-the-secret" not in caplog.text
    assert source.chap_secret and source.chap_secret not in caplog.text


def test_failed_device_add_rolls_back_the_iscsi_node_and_its_secret_object(
    tgtd: Tgtd, vm: QemuVm, tmp_path: Path
) -> None:
    info, _, _ = exported(tgtd, tmp_path)
    driver = QemuVmm(QemuConfig(socket_dir=tmp_path, bus="scsi", scsi_bus="no-such-bus.0"))

    async def scenario() -> None:
        with pytest.raises(AttachError, match="device_add"):
            await driver.attach("vm1", spec(info))
        assert f"ebs-{info.volume_id}" not in await node_names(vm)
        assert f"ebs-{info.volume_id}-chap" not in await objects(vm)

    run(scenario())


def test_leftover_secret_object_of_an_interrupted_attach_is_replaced(
    tgtd: Tgtd, vm: QemuVm, tmp_path: Path
) -> None:
    info, _, _ = exported(tgtd, tmp_path)
    driver = QemuVmm(QemuConfig(socket_dir=tmp_path))
    secret = f"ebs-{info.volume_id}-chap"

    async def scenario() -> None:
        await qmp(vm, "object-add", {"qom-type": "secret", "id": secret, "data": "stale"})
        await driver.attach("vm1", spec(info))
        assert [d.volume_id for d in await driver.list_attached("vm1")] == [info.volume_id]
        await driver.detach("vm1", info.volume_id)
        assert secret not in await objects(vm)

    run(scenario())


def test_configured_initiator_name_is_what_an_export_by_initiator_name_admits(
    tgtd: Tgtd, vm: QemuVm, tmp_path: Path
) -> None:
    name = "iqn.2024-01.org.ebsemu.test:vmm-host-2"
    info, _, _ = exported(tgtd, tmp_path, Initiator(name=name))
    anonymous = QemuVmm(QemuConfig(socket_dir=tmp_path))  # QEMU's default initiator name
    named = QemuVmm.from_options(
        {"socket_dir": str(tmp_path), "initiator_name": name},
        runner=LocalRunner(),
        templates=load_templates(),
    )

    async def scenario() -> Any:
        with pytest.raises(AttachError, match="Target not found"):
            await anonymous.attach("vm1", spec(info))
        disk = await named.attach("vm1", spec(info))
        await named.detach("vm1", info.volume_id)
        return disk

    assert run(scenario()).volume_id == info.volume_id


def test_half_given_chap_credentials_are_refused_before_touching_the_vm(tmp_path: Path) -> None:
    driver = QemuVmm(QemuConfig(socket_dir=tmp_path))
    source = IscsiSource("127.0.0.1:3260", "iqn.2010-10.org.ebsemu:vol-01234567", 1, "user")
    with pytest.raises(AttachError, match="CHAP user needs a secret"):
        run(driver.attach("vm1", AttachSpec("vol-01234567", "/dev/sdf", source)))
