"""The backends' health checks, against what really backs the volumes: the file backend's
files, LVM metadata on a loop device, a real tgtd's targets."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.export import NoExport
from backends.file import FileStorage
from tests.lvm_fixtures import MIB, LoopVg, loop_volume_group, new_id
from tests.test_export_tgt import HOST, exporter, volume
from tests.test_lvm_storage import lvs, real_storage, without_config
from tests.tgt_fixtures import Tgtd, running_tgtd
from tests.vmm_fixtures import run

SIZE = 8 * MIB


def test_file_health_names_missing_and_wrongly_sized_volumes(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path, segment_bytes=4 * MIB)  # two segments per volume
    healthy, gone, emptied, shrunk, short = (new_id("vol") for _ in range(5))
    for volume_id in (healthy, gone, emptied, shrunk, short):
        run(storage.create(volume_id, SIZE))
    shutil.rmtree(tmp_path / "volumes" / gone)
    os.unlink(tmp_path / "volumes" / emptied / "seg-0001")
    os.truncate(tmp_path / "volumes" / shrunk / "seg-0000", MIB)

    problems = run(
        storage.health({v: SIZE for v in (healthy, gone, emptied, shrunk)} | {short: 2 * SIZE})
    )
    assert problems == {
        gone: "its backing files are missing",
        emptied: "its backing file seg-0001 is missing",
        shrunk: f"its backing file seg-0000 is {MIB} bytes, not {4 * MIB}",
        short: f"its backing files hold {SIZE} bytes, not {2 * SIZE}",
    }
    assert run(storage.health({})) == {}


@pytest.fixture
def loop_vg(tmp_path: Path) -> Iterator[LoopVg]:
    with loop_volume_group(tmp_path) as vg:
        yield vg


def test_lvm_health_reads_lvs_once_and_names_missing_and_shrunk_lvs(loop_vg: LoopVg) -> None:
    storage, runner = real_storage(loop_vg, zero_linear=False)
    healthy, removed, reduced, untagged = (new_id("vol") for _ in range(4))
    for volume_id in (healthy, removed, reduced):
        run(storage.create(volume_id, SIZE))
    loop_vg.lvm("lvremove", "--yes", f"{loop_vg.name}/{removed}")
    loop_vg.lvm("lvreduce", "--yes", "--size", "4m", f"{loop_vg.name}/{reduced}")
    loop_vg.lvm("lvcreate", "--yes", "--name", untagged, "--size", "8m", loop_vg.name)
    runner.argvs.clear()

    problems = run(storage.health({v: SIZE for v in (healthy, removed, reduced, untagged)}))
    assert problems == {
        removed: f"its logical volume {loop_vg.name}/{removed} is missing",
        reduced: f"its logical volume holds {4 * MIB} bytes, not {SIZE}",
        untagged: f"its logical volume {loop_vg.name}/{untagged} is missing",  # not ours
    }
    assert without_config(runner.argvs, loop_vg) == [lvs(loop_vg.name)]


@pytest.fixture
def tgtd(tmp_path: Path) -> Iterator[Tgtd]:
    with running_tgtd(tmp_path) as daemon:
        yield daemon


def _tid(tgtd: Tgtd, volume_id: str) -> str:
    for line in tgtd.show_targets().splitlines():
        if line.startswith("Target ") and line.endswith(f":{volume_id}"):
            return line.split()[1].rstrip(":")
    raise AssertionError(f"no target for {volume_id}")


def test_tgt_health_follows_the_live_targets(tgtd: Tgtd, tmp_path: Path) -> None:
    export = exporter(tgtd, tmp_path)
    run(export.check_setup())
    (deleted, path_a), (closed, path_b), (healthy, path_c) = (volume(tmp_path) for _ in range(3))
    never = new_id("vol")
    for volume_id, path in ((deleted, path_a), (closed, path_b), (healthy, path_c)):
        run(export.export(volume_id, str(path), HOST))
    assert run(export.health([deleted, closed, healthy])) == {}

    tgtd.tgtadm(
        "--lld", "iscsi", "--op", "delete", "--force", "--mode", "target",
        "--tid", _tid(tgtd, deleted),
    )  # fmt: skip
    tgtd.tgtadm(
        "--lld", "iscsi", "--op", "unbind", "--mode", "target",
        "--tid", _tid(tgtd, closed), "-I", "127.0.0.1",
    )  # fmt: skip
    problems = run(export.health([deleted, closed, healthy, never]))
    assert set(problems) == {deleted, closed, never}
    assert problems[deleted].endswith(f"{deleted} is gone from tgtd")
    assert problems[closed].endswith("admits no initiator")
    assert problems[never] == "it has no export record"

    run(export.restore([]))  # naming no export changes nothing
    assert set(run(export.health([deleted, closed, healthy]))) == {deleted, closed}


def test_no_export_is_always_healthy() -> None:
    assert run(NoExport().health(["vol-0123456789abcdef0"])) == {}
