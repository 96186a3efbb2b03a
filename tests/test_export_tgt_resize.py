"""A grown volume exported by a real tgtd: tgtd keeps the size it read when the LUN was opened,
``refresh_size`` reopens the LUN so the target presents the new size, and QEMU's iscsi driver
then takes ``block_resize`` (before, it refuses to grow an iSCSI device)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.base import AttachSpec, ExportInfo, Initiator, IscsiSource
from backends.export import TgtConfig, TgtExport
from backends.export.records import RecordDirectory, TargetRecord
from backends.vmm.errors import VmmError
from backends.vmm.qemu import QemuConfig, QemuVmm
from hostcmds import LocalRunner, RecordingRunner, Reply, load_templates
from tests.tgt_fixtures import HAVE_TOOLS, NEEDS_TOOLS, Tgtd, iscsi_url, libiscsi, running_tgtd
from tests.vmm_fixtures import (
    HAVE_QEMU,
    NEEDS_QEMU,
    QemuVm,
    new_volume_id,
    qmp,
    run,
    running_vm,
    sparse_file,
)

MIB = 1024 * 1024
HOST = Initiator(address="127.0.0.1")

needs_tgt = pytest.mark.skipif(not HAVE_TOOLS, reason=NEEDS_TOOLS)


@pytest.fixture
def tgtd(tmp_path: Path) -> Iterator[Tgtd]:
    if not HAVE_TOOLS:
        pytest.skip(NEEDS_TOOLS)
    with running_tgtd(tmp_path) as daemon:
        yield daemon


def exporter(tgtd: Tgtd, tmp_path: Path) -> TgtExport:
    return TgtExport(
        LocalRunner(),
        load_templates(),
        TgtConfig(tmp_path / "exports", portal=tgtd.portal, control_port=tgtd.control_port),
    )


def exported(tgtd: Tgtd, tmp_path: Path) -> tuple[TgtExport, ExportInfo, IscsiSource, Path]:
    volume_id = new_volume_id()
    path = sparse_file(tmp_path / f"{volume_id}.raw", 64 * MIB)
    backend = exporter(tgtd, tmp_path)
    info = run(backend.export(volume_id, str(path), HOST))
    assert isinstance(info.source, IscsiSource)
    return backend, info, info.source, path


def target_size(source: IscsiSource) -> int:
    """The capacity the target reports (READ CAPACITY 16), read with the volume's CHAP."""
    done = libiscsi("iscsi-readcapacity16", iscsi_url(source))
    assert done.returncode == 0, done.stderr
    found = re.search(r"Total size:(\d+)", done.stdout)
    assert found, done.stdout
    return int(found.group(1))


@needs_tgt
def test_refresh_size_makes_tgtd_present_the_grown_backing_file(tgtd: Tgtd, tmp_path: Path) -> None:
    backend, info, source, path = exported(tgtd, tmp_path)
    assert target_size(source) == 64 * MIB
    os.truncate(path, 96 * MIB)
    assert target_size(source) == 64 * MIB  # tgtd keeps the size it opened the LUN with

    run(backend.refresh_size(info.volume_id))

    assert target_size(source) == 96 * MIB
    assert "Online: Yes" in tgtd.show_targets().split("LUN: 1", 1)[1]
    run(backend.refresh_size(info.volume_id))  # idempotent
    assert target_size(source) == 96 * MIB
    run(backend.refresh_size(new_volume_id()))  # no such export: nothing to do


@pytest.mark.skipif(not HAVE_QEMU, reason=NEEDS_QEMU)
@needs_tgt
def test_qemu_sees_the_new_size_of_an_iscsi_volume_after_the_target_reopened_it(
    tgtd: Tgtd, tmp_path: Path
) -> None:
    backend, info, _, path = exported(tgtd, tmp_path)
    volume_id = info.volume_id
    driver = QemuVmm(QemuConfig(socket_dir=tmp_path))

    async def node_size(vm: QemuVm) -> int:
        nodes = await qmp(vm, "query-named-block-nodes", {"flat": True})
        (node,) = [n for n in nodes if n["node-name"] == f"ebs-{volume_id}"]
        return int(node["image"]["virtual-size"])

    with running_vm(tmp_path, "vm1", ports=2) as vm:

        async def scenario() -> None:
            await driver.attach("vm1", AttachSpec(volume_id, "/dev/sdf", info.source))
            assert await node_size(vm) == 64 * MIB
            os.truncate(path, 128 * MIB)
            with pytest.raises(VmmError):  # the target still reports 64 MiB
                await driver.notify_resize("vm1", volume_id, 128 * MIB)
            assert await node_size(vm) == 64 * MIB

            await backend.refresh_size(volume_id)
            await driver.notify_resize("vm1", volume_id, 128 * MIB)

            assert await node_size(vm) == 128 * MIB
            blocks = [b for b in await qmp(vm, "query-block") if b.get("inserted")]
            (block,) = [b for b in blocks if b["inserted"]["node-name"] == f"ebs-{volume_id}"]
            assert block["inserted"]["image"]["virtual-size"] == 128 * MIB
            line = f'qemu-io -d {block["qdev"]} "write -P 0xab 120M 64k"'
            assert not await qmp(vm, "human-monitor-command", {"command-line": line})
            with path.open("rb") as handle:
                handle.seek(120 * MIB)
                assert handle.read(64 * 1024) == b"\xab" * (64 * 1024)
            await driver.detach("vm1", volume_id)

        run(scenario())


def test_refresh_size_argv_takes_the_lun_offline_reopens_its_path_and_puts_it_online(
    tmp_path: Path,
) -> None:
    volume_id = "vol-0a1b2c3d4e5f60718"
    iqn = f"iqn.2010-10.org.ebsemu:{volume_id}"
    shown = (
        f"Target 3: {iqn}\n    System information:\n        Driver: iscsi\n"
        "        State: ready\n    LUN information:\n        LUN: 1\n"
        "            Type: disk\n            Backing store type: rdwr\n"
        f"            Backing store path: /data/{volume_id}\n"
    )
    runner = RecordingRunner([(["tgtadm", "-C", "7", "--lld", "iscsi", "--op", "show"],
                               Reply(stdout=shown))], default=Reply())  # fmt: skip
    backend = TgtExport(runner, load_templates(), TgtConfig(tmp_path / "exports", control_port=7))
    RecordDirectory(tmp_path / "exports").ensure()
    RecordDirectory(tmp_path / "exports").save(
        TargetRecord(
            volume_id=volume_id,
            iqn=iqn,
            lun=1,
            backing_store=f"/data/{volume_id}",
            bs_type="rdwr",
            initiator=HOST,
            chap_user="ebs-0011223344556677",
            chap_secret="s3cret-s3cret",
        )
    )
    run(backend.refresh_size(volume_id))
    update = ["tgtadm", "-C", "7", "--lld", "iscsi", "--op", "update", "--mode", "logicalunit"]
    assert runner.argvs[1:] == [
        [*update, "--tid", "3", "--lun", "1", "--params", "online=0"],
        [*update, "--tid", "3", "--lun", "1", "--params", f"path=/data/{volume_id}"],
        [*update, "--tid", "3", "--lun", "1", "--params", "online=1"],
    ]
