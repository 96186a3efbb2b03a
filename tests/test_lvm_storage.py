"""The lvm storage backend.

Linear volumes' metadata operations run for real on a loop device (LVM with activation off:
this host has no device-mapper). Thin pools, snapshots, activation and the data path cannot
run here: those command sequences are asserted argv by argv against FakeLvm, whose regular
files under a fake /dev stand in for device nodes.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from backends.base import SnapshotSource, StorageBackend
from backends.errors import BackendError, CapacityError, HostUnavailable, SetupError
from backends.lvm import LvmStorage
from backends.lvm_config import LvmConfig
from backends.lvm_report import parse_lvs
from ebsemu.model import BLOCK_SIZE
from hostcmds import HostUnreachable, RecordingRunner, Reply, load_templates
from tests.lvm_fixtures import (
    EXTENT,
    GIB,
    MIB,
    FakeLvm,
    LoopVg,
    MetadataOnlyRunner,
    loop_volume_group,
    new_id,
)
from tests.test_backend_compliance import (
    test_backend_implements_protocol_with_matching_signatures as check_protocol,
)
from tests.vmm_fixtures import run

VG = "vg0"
LVS = ["lvs", "--reportformat", "json", "--units", "b", "--nosuffix",
       "-o", "lv_name,lv_size,lv_attr,lv_tags,pool_lv,origin,data_percent"]  # fmt: skip
VGS = ["vgs", "--reportformat", "json", "--units", "b", "--nosuffix",
       "-o", "vg_name,vg_size,vg_free,vg_extent_size"]  # fmt: skip


def lvs(vg: str = VG) -> list[str]:
    return [*LVS, vg]


def vgs(vg: str = VG) -> list[str]:
    return [*VGS, vg]


def block(byte: int) -> bytes:
    return bytes([byte]) * BLOCK_SIZE


# -- real LVM metadata on a loop device (linear volumes) ---------------------------------------


@pytest.fixture
def loop_vg(tmp_path: Path) -> Iterator[LoopVg]:
    with loop_volume_group(tmp_path) as vg:
        yield vg


def real_storage(
    vg: LoopVg, *, zero_linear: bool = True, dev_dir: Path = Path("/dev")
) -> tuple[LvmStorage, MetadataOnlyRunner]:
    runner = MetadataOnlyRunner()
    config = LvmConfig(
        vg=vg.name,
        lv_type="linear",
        lvm_config=vg.config,
        zero_linear=zero_linear,
        dev_dir=dev_dir,
    )
    return LvmStorage(runner, load_templates(), config), runner


def without_config(argvs: list[list[str]], vg: LoopVg) -> list[list[str]]:
    """The argvs with the trailing ``--config <string>`` each LVM command carries removed."""
    tail = ["--config", vg.config]
    return [argv[: -len(tail)] if argv[-len(tail) :] == tail else argv for argv in argvs]


def test_check_setup_finds_the_volume_group_and_learns_its_free_space(loop_vg: LoopVg) -> None:
    storage, _ = real_storage(loop_vg)
    run(storage.check_setup())
    assert storage.free_bytes() == loop_vg.vg_free() == 256 * MIB


def test_check_setup_names_a_missing_volume_group_and_how_to_create_it(loop_vg: LoopVg) -> None:
    runner = MetadataOnlyRunner()
    config = LvmConfig(vg="ebsemu_absent", lv_type="linear", lvm_config=loop_vg.config)
    storage = LvmStorage(runner, load_templates(), config)
    with pytest.raises(SetupError, match=r"volume group ebsemu_absent .*vgcreate ebsemu_absent"):
        run(storage.check_setup())


def test_linear_create_zeroes_a_new_lv_before_tagging_it_a_volume(loop_vg: LoopVg) -> None:
    storage, runner = real_storage(loop_vg)
    volume_id = new_id("vol")
    run(storage.create(volume_id, 8 * MIB))
    vg = loop_vg.name
    device = f"/dev/{vg}/{volume_id}"
    assert without_config(runner.argvs, loop_vg) == [
        lvs(vg),
        ["lvcreate", "--yes", "--name", volume_id, "--size", f"{8 * MIB}b",
         "--addtag", f"ebsemu_new_{volume_id}", vg],
        vgs(vg),
        ["blkdiscard", "--zeroout", "--offset", "0", "--length", str(8 * MIB), device],
        ["lvchange", "--addtag", f"ebsemu_vol_{volume_id}",
         "--deltag", f"ebsemu_new_{volume_id}", f"{vg}/{volume_id}"],
        vgs(vg),
    ]  # fmt: skip
    assert loop_vg.lvs() == {volume_id: {"size": 8 * MIB, "tags": {f"ebsemu_vol_{volume_id}"}}}
    assert storage.device_path(volume_id) == device
    assert run(storage.list_volumes()) == [volume_id]


def test_every_lvm_command_carries_the_config_string_as_one_argument(loop_vg: LoopVg) -> None:
    storage, runner = real_storage(loop_vg)
    run(storage.create(new_id("vol"), 4 * MIB))
    for argv in runner.argvs:
        if argv[0] == "blkdiscard":
            assert "--config" not in argv
        else:
            assert argv[-2:] == ["--config", loop_vg.config]


def test_create_again_keeps_the_volume_and_refuses_another_size(loop_vg: LoopVg) -> None:
    storage, runner = real_storage(loop_vg)
    volume_id = new_id("vol")
    run(storage.create(volume_id, 8 * MIB))
    runner.argvs.clear()
    run(storage.create(volume_id, 8 * MIB))
    assert without_config(runner.argvs, loop_vg) == [lvs(loop_vg.name)]
    with pytest.raises(BackendError, match="exists with 8388608 bytes, not 16777216"):
        run(storage.create(volume_id, 16 * MIB))
    assert loop_vg.lvs()[volume_id]["size"] == 8 * MIB


def test_create_refuses_an_lv_of_that_name_that_is_not_the_volumes(loop_vg: LoopVg) -> None:
    storage, _ = real_storage(loop_vg)
    volume_id = new_id("vol")
    loop_vg.lvm("lvcreate", "--yes", "--name", volume_id, "--size", "4m", loop_vg.name)
    with pytest.raises(BackendError, match="without the tag ebsemu_vol_"):
        run(storage.create(volume_id, 4 * MIB))
    assert loop_vg.lvs()[volume_id]["tags"] == set()


def test_create_finishes_the_zeroing_a_crashed_create_left(loop_vg: LoopVg) -> None:
    storage, runner = real_storage(loop_vg)
    volume_id = new_id("vol")
    loop_vg.lvm("lvcreate", "--yes", "--name", volume_id, "--size", "8m",
                "--addtag", f"ebsemu_new_{volume_id}", loop_vg.name)  # fmt: skip
    assert run(storage.list_volumes()) == [volume_id]  # an unfinished volume is still found
    runner.argvs.clear()
    run(storage.create(volume_id, 8 * MIB))
    assert [argv[0] for argv in without_config(runner.argvs, loop_vg)] == [
        "lvs", "vgs", "blkdiscard", "lvchange",
    ]  # fmt: skip
    assert runner.device.argvs == [
        ["blkdiscard", "--zeroout", "--offset", "0", "--length", str(8 * MIB),
         f"/dev/{loop_vg.name}/{volume_id}"],
    ]  # fmt: skip
    assert loop_vg.lvs()[volume_id]["tags"] == {f"ebsemu_vol_{volume_id}"}


def test_failed_zeroing_removes_the_new_lv(loop_vg: LoopVg) -> None:
    storage, runner = real_storage(loop_vg)
    runner.device.fail_call(1)
    volume_id = new_id("vol")
    with pytest.raises(BackendError, match=f"cannot create volume {volume_id}: blkdiscard"):
        run(storage.create(volume_id, 8 * MIB))
    assert without_config(runner.argvs, loop_vg)[-2:] == [
        lvs(loop_vg.name),
        ["lvremove", "--yes", f"{loop_vg.name}/{volume_id}"],
    ]
    assert loop_vg.lvs() == {}


def test_create_beyond_the_free_space_is_a_capacity_error_and_leaves_nothing(
    loop_vg: LoopVg,
) -> None:
    storage, _ = real_storage(loop_vg)
    with pytest.raises(CapacityError, match="insufficient free space"):
        run(storage.create(new_id("vol"), 1 * GIB))
    assert loop_vg.lvs() == {}


def test_list_volumes_reports_tagged_lvs_only_so_orphans_are_found(loop_vg: LoopVg) -> None:
    storage, _ = real_storage(loop_vg)
    made = new_id("vol")
    orphan = new_id("vol")
    run(storage.create(made, 4 * MIB))
    loop_vg.lvm("lvcreate", "--yes", "--name", orphan, "--size", "4m",
                "--addtag", f"ebsemu_vol_{orphan}", loop_vg.name)  # fmt: skip
    loop_vg.lvm("lvcreate", "--yes", "--name", "someone_elses", "--size", "4m", loop_vg.name)
    assert run(storage.list_volumes()) == sorted([made, orphan])
    assert run(storage.list_views()) == []


def test_extend_grows_the_lv_and_zeroes_only_the_range_it_grew_by(loop_vg: LoopVg) -> None:
    storage, runner = real_storage(loop_vg)
    volume_id = new_id("vol")
    run(storage.create(volume_id, 8 * MIB))
    runner.argvs.clear()
    run(storage.extend(volume_id, 20 * MIB))
    vg, at = loop_vg.name, f"{loop_vg.name}/{volume_id}"
    assert without_config(runner.argvs, loop_vg) == [
        lvs(vg),
        ["lvchange", "--addtag", f"ebsemu_grow_{8 * MIB}", at],
        ["lvextend", "--size", f"{20 * MIB}b", at],
        ["blkdiscard", "--zeroout", "--offset", str(8 * MIB), "--length", str(12 * MIB),
         f"/dev/{at}"],
        ["lvchange", "--deltag", f"ebsemu_grow_{8 * MIB}", at],
        vgs(vg),
    ]  # fmt: skip
    assert loop_vg.lvs()[volume_id] == {"size": 20 * MIB, "tags": {f"ebsemu_vol_{volume_id}"}}
    assert storage.free_bytes() == 236 * MIB


def test_extend_to_the_same_size_does_nothing_and_shrinking_is_refused(loop_vg: LoopVg) -> None:
    storage, runner = real_storage(loop_vg)
    volume_id = new_id("vol")
    run(storage.create(volume_id, 8 * MIB))
    runner.argvs.clear()
    run(storage.extend(volume_id, 8 * MIB))
    assert [argv[0] for argv in runner.argvs] == ["lvs"]
    with pytest.raises(BackendError, match="cannot shrink"):
        run(storage.extend(volume_id, 4 * MIB))
    with pytest.raises(BackendError, match=r"no volume vol-\w+ in volume group"):
        run(storage.extend(new_id("vol"), 8 * MIB))
    assert loop_vg.lvs()[volume_id]["size"] == 8 * MIB


def test_failed_zeroing_of_a_grown_range_shrinks_the_lv_back(loop_vg: LoopVg) -> None:
    storage, runner = real_storage(loop_vg)
    volume_id = new_id("vol")
    run(storage.create(volume_id, 8 * MIB))
    runner.device.fail_call(1)
    with pytest.raises(BackendError, match="cannot extend volume"):
        run(storage.extend(volume_id, 16 * MIB))
    at = f"{loop_vg.name}/{volume_id}"
    assert without_config(runner.argvs, loop_vg)[-3:] == [
        lvs(loop_vg.name),
        ["lvreduce", "--yes", "--size", f"{8 * MIB}b", at],
        ["lvchange", "--deltag", f"ebsemu_grow_{8 * MIB}", at],
    ]
    assert loop_vg.lvs()[volume_id] == {"size": 8 * MIB, "tags": {f"ebsemu_vol_{volume_id}"}}


def test_extend_first_zeroes_the_range_a_crashed_extend_left(loop_vg: LoopVg) -> None:
    storage, runner = real_storage(loop_vg)
    volume_id = new_id("vol")
    at = f"{loop_vg.name}/{volume_id}"
    run(storage.create(volume_id, 8 * MIB))
    loop_vg.lvm("lvchange", "--addtag", f"ebsemu_grow_{8 * MIB}", at)  # a crash right after
    loop_vg.lvm("lvextend", "--size", "12m", at)  # lvextend, before the zeroing
    runner.argvs.clear()
    run(storage.extend(volume_id, 12 * MIB))
    assert runner.device.argvs[-1] == [
        "blkdiscard", "--zeroout", "--offset", str(8 * MIB), "--length", str(4 * MIB),
        f"/dev/{at}",
    ]  # fmt: skip
    assert loop_vg.lvs()[volume_id] == {"size": 12 * MIB, "tags": {f"ebsemu_vol_{volume_id}"}}


def test_delete_removes_the_lv_is_idempotent_and_spares_other_lvs(loop_vg: LoopVg) -> None:
    storage, runner = real_storage(loop_vg)
    volume_id = new_id("vol")
    untagged = new_id("vol")
    run(storage.create(volume_id, 8 * MIB))
    loop_vg.lvm("lvcreate", "--yes", "--name", untagged, "--size", "4m", loop_vg.name)
    runner.argvs.clear()
    run(storage.delete(volume_id))
    assert without_config(runner.argvs, loop_vg) == [
        lvs(loop_vg.name),
        ["lvremove", "--yes", f"{loop_vg.name}/{volume_id}"],
        vgs(loop_vg.name),
    ]
    run(storage.delete(volume_id))
    run(storage.delete(untagged))  # not the backend's: left alone
    assert set(loop_vg.lvs()) == {untagged}
    assert storage.free_bytes() == 252 * MIB


def test_free_bytes_follows_the_volume_group_free_space(loop_vg: LoopVg) -> None:
    storage, _ = real_storage(loop_vg, zero_linear=False)
    run(storage.check_setup())
    before = storage.free_bytes()
    volume_id = new_id("vol")
    run(storage.create(volume_id, 6 * MIB))  # rounded up to two 4 MiB extents
    assert storage.free_bytes() == before - 2 * EXTENT == loop_vg.vg_free()
    run(storage.delete(volume_id))
    assert storage.free_bytes() == before


def test_fake_lvm_answers_linear_metadata_as_real_lvm_does(loop_vg: LoopVg, tmp_path: Path) -> None:
    """FakeLvm stands in for LVM where it cannot run; where LVM runs, the two agree."""
    dev_dir = tmp_path / "dev"
    real, real_runner = real_storage(loop_vg, dev_dir=dev_dir)
    fake = FakeLvm(dev_dir, vg=loop_vg.name, pool_bytes=0)
    fake_runner = fake.runner()
    config = LvmConfig(vg=loop_vg.name, lv_type="linear", dev_dir=dev_dir)
    stand_in = LvmStorage(fake_runner, load_templates(), config)
    volume_id = new_id("vol")
    for storage in (real, stand_in):
        run(storage.create(volume_id, 8 * MIB))
        run(storage.extend(volume_id, 12 * MIB))
    assert without_config(real_runner.argvs, loop_vg) == fake_runner.argvs
    real_lvs = parse_lvs(loop_vg.lvm(*lvs(loop_vg.name)).stdout)
    fake_lvs = parse_lvs(run(fake_runner.run(lvs(loop_vg.name), timeout=5)).text)
    assert [(lv.name, lv.size_bytes, lv.tags, lv.pool, lv.origin) for lv in real_lvs] == [
        (lv.name, lv.size_bytes, lv.tags, lv.pool, lv.origin) for lv in fake_lvs
    ]
    for storage in (real, stand_in):
        run(storage.delete(volume_id))
        assert run(storage.list_volumes()) == []


# -- thin pools, snapshots, activation, data path: argv against FakeLvm ----------------------


def fake_storage(
    tmp_path: Path,
    lv_type: str = "thin",
    *,
    pool_bytes: int = 32 * GIB,
    pool_used: float = 25.0,
    pool_zeroes: bool = True,
) -> tuple[LvmStorage, RecordingRunner, FakeLvm]:
    fake = FakeLvm(
        tmp_path / "dev", pool_bytes=pool_bytes, pool_used=pool_used, pool_zeroes=pool_zeroes
    )
    runner = fake.runner()
    config = LvmConfig(vg=VG, lv_type=lv_type, dev_dir=tmp_path / "dev")
    return LvmStorage(runner, load_templates(), config), runner, fake


def test_check_setup_activates_the_thin_pool_and_learns_its_unused_space(tmp_path: Path) -> None:
    storage, runner, _ = fake_storage(tmp_path, pool_bytes=32 * GIB, pool_used=25.0)
    run(storage.check_setup())
    assert runner.argvs == [
        ["lvm", "version"],
        vgs(),
        lvs(),
        ["lvchange", "--activate", "y", "--ignoreactivationskip", f"{VG}/ebsemu_pool"],
        lvs(),
    ]
    assert storage.free_bytes() == 24 * GIB


def test_check_setup_refuses_a_missing_pool_or_one_that_does_not_zero(tmp_path: Path) -> None:
    storage, _, _ = fake_storage(tmp_path / "a", pool_bytes=0)
    with pytest.raises(SetupError, match=r"vg0/ebsemu_pool is not a thin pool.*thin-pool"):
        run(storage.check_setup())
    storage, _, _ = fake_storage(tmp_path / "b", pool_zeroes=False)
    with pytest.raises(SetupError, match=r"does not zero.*lvchange --zero y vg0/ebsemu_pool"):
        run(storage.check_setup())


def test_check_setup_says_how_to_install_lvm_when_it_is_missing(tmp_path: Path) -> None:
    storage, runner, _ = fake_storage(tmp_path)
    runner.fail_call(1, Reply(127, stderr="lvm: command not found"))
    with pytest.raises(SetupError, match=r"apt-get install lvm2"):
        run(storage.check_setup())


def test_thin_create_is_one_lvcreate_in_the_pool_and_zeroes_nothing(tmp_path: Path) -> None:
    storage, runner, fake = fake_storage(tmp_path)
    volume_id = new_id("vol")
    run(storage.create(volume_id, 8 * 1024 * GIB))
    assert runner.argvs == [
        lvs(),
        ["lvcreate", "--yes", "--name", volume_id, "--virtualsize", f"{8 * 1024 * GIB}b",
         "--thinpool", "ebsemu_pool", "--addtag", f"ebsemu_vol_{volume_id}", VG],
        lvs(),
    ]  # fmt: skip
    assert fake.lvs[volume_id].pool == "ebsemu_pool"
    assert run(storage.list_volumes()) == [volume_id]


def test_thin_extend_is_one_lvextend_and_zeroes_nothing(tmp_path: Path) -> None:
    storage, runner, fake = fake_storage(tmp_path)
    volume_id = new_id("vol")
    run(storage.create(volume_id, GIB))
    runner.calls.clear()
    run(storage.extend(volume_id, 3 * GIB))
    assert runner.argvs == [
        lvs(),
        vgs(),
        ["lvextend", "--size", f"{3 * GIB}b", f"{VG}/{volume_id}"],
        lvs(),
    ]
    assert fake.lvs[volume_id].size == 3 * GIB


def test_every_command_has_a_timeout_and_zeroing_has_its_own(tmp_path: Path) -> None:
    storage, runner, _ = fake_storage(tmp_path, "linear")
    run(storage.create(new_id("vol"), 8 * MIB))
    timeouts = {call.argv[0]: call.timeout for call in runner.calls}
    assert timeouts == {"lvs": 60.0, "lvcreate": 60.0, "vgs": 60.0, "blkdiscard": 3600.0,
                        "lvchange": 60.0}  # fmt: skip


def test_a_full_thin_pool_is_a_capacity_error_and_leaves_nothing(tmp_path: Path) -> None:
    storage, runner, fake = fake_storage(tmp_path)
    fake.fail_next(
        "lvcreate",
        after_commit=True,
        stderr="  Cannot create new thin volume, free space in thin pool vg0/ebsemu_pool "
        "reached threshold.\n",
    )
    volume_id = new_id("vol")
    with pytest.raises(CapacityError, match="reached threshold"):
        run(storage.create(volume_id, GIB))
    assert runner.argvs[-1] == ["lvremove", "--yes", f"{VG}/{volume_id}"]
    assert volume_id not in fake.lvs


class UnreachableRunner(RecordingRunner):
    """A storage host that went down: every command fails to reach it."""

    async def run(self, argv: Sequence[str], **kwargs: Any) -> Any:
        raise HostUnreachable("root@storage-1:22", "connection refused")


def test_an_unreachable_host_is_host_unavailable_not_a_failed_command(tmp_path: Path) -> None:
    config = LvmConfig(vg=VG, lv_type="thin", dev_dir=tmp_path / "dev")
    storage = LvmStorage(UnreachableRunner(), load_templates(), config)
    volume_id = new_id("vol")
    with pytest.raises(HostUnavailable, match="ssh root@storage-1:22: connection refused"):
        run(storage.create(volume_id, GIB))
    with pytest.raises(HostUnavailable, match="connection refused"):
        run(storage.list_volumes())


def test_thin_view_is_a_point_in_time_snapshot_read_from_its_activated_device(
    tmp_path: Path,
) -> None:
    storage, runner, fake = fake_storage(tmp_path)
    volume_id, view_id = new_id("vol"), new_id("snap")
    size = 8 * BLOCK_SIZE

    async def scenario() -> list[tuple[int, bytes]]:
        await storage.create(volume_id, size)
        await asyncio.to_thread(storage.write_blocks, volume_id, [(1, block(1)), (5, block(5))])
        runner.calls.clear()
        await storage.freeze(volume_id, view_id)
        assert runner.argvs == [
            lvs(),
            ["lvcreate", "--yes", "--snapshot", "--name", view_id,
             "--addtag", f"ebsemu_view_{view_id}", f"{VG}/{volume_id}"],
        ]  # fmt: skip
        assert not fake.device(view_id).exists()  # a thin snapshot skips activation
        await asyncio.to_thread(storage.write_blocks, volume_id, [(2, block(2)), (5, block(9))])
        runner.calls.clear()
        view = await asyncio.to_thread(storage.open_view, view_id)
        assert runner.argvs == [
            ["lvchange", "--activate", "y", "--ignoreactivationskip", f"{VG}/{view_id}"]
        ]
        try:
            assert isinstance(view, SnapshotSource)
            assert view.size_bytes == size
            return await asyncio.to_thread(lambda: list(view.iter_blocks(0)))
        finally:
            view.close()

    assert run(scenario()) == [(1, block(1)), (5, block(5))]
    assert run(storage.list_views()) == [view_id]
    assert run(storage.list_volumes()) == [volume_id]
    runner.calls.clear()
    run(storage.drop_view(view_id))
    run(storage.drop_view(view_id))
    assert runner.argvs == [lvs(), ["lvremove", "--yes", f"{VG}/{view_id}"], lvs(), lvs()]
    assert run(storage.list_views()) == []


def test_a_snapshot_that_fails_after_lvm_made_it_is_removed_with_a_clear_error(
    tmp_path: Path,
) -> None:
    storage, runner, fake = fake_storage(tmp_path)
    volume_id, view_id = new_id("vol"), new_id("snap")
    run(storage.create(volume_id, GIB))
    fake.fail_next("lvcreate", after_commit=True, stderr="  Failed to activate new LV.\n")
    runner.calls.clear()
    with pytest.raises(
        BackendError,
        match=f"cannot freeze volume {volume_id} as view {view_id}: lvcreate exited 5: "
        "Failed to activate new LV",
    ):
        run(storage.freeze(volume_id, view_id))
    assert runner.argvs == [
        lvs(),
        ["lvcreate", "--yes", "--snapshot", "--name", view_id,
         "--addtag", f"ebsemu_view_{view_id}", f"{VG}/{volume_id}"],
        lvs(),
        ["lvremove", "--yes", f"{VG}/{view_id}"],
    ]  # fmt: skip
    assert set(fake.lvs) == {"ebsemu_pool", volume_id}


def test_a_snapshot_that_failed_outright_removes_nothing(tmp_path: Path) -> None:
    storage, runner, fake = fake_storage(tmp_path)
    volume_id, view_id = new_id("vol"), new_id("snap")
    run(storage.create(volume_id, GIB))
    fake.fail_next("lvcreate")
    runner.calls.clear()
    with pytest.raises(BackendError, match="cannot freeze"):
        run(storage.freeze(volume_id, view_id))
    assert [argv[0] for argv in runner.argvs] == ["lvs", "lvcreate", "lvs"]
    assert run(storage.list_views()) == []


def test_freezing_again_keeps_the_view_and_an_absent_volume_is_an_error(tmp_path: Path) -> None:
    storage, runner, _ = fake_storage(tmp_path)
    volume_id, view_id = new_id("vol"), new_id("snap")
    run(storage.create(volume_id, GIB))
    run(storage.freeze(volume_id, view_id))
    runner.calls.clear()
    run(storage.freeze(volume_id, view_id))
    assert runner.argvs == [lvs()]
    with pytest.raises(BackendError, match="no volume"):
        run(storage.freeze(new_id("vol"), new_id("snap")))


def test_linear_view_is_a_cow_snapshot_sized_a_quarter_of_the_volume(tmp_path: Path) -> None:
    storage, runner, fake = fake_storage(tmp_path, "linear")
    volume_id, view_id = new_id("vol"), new_id("snap")
    run(storage.create(volume_id, 10 * GIB))
    runner.calls.clear()
    run(storage.freeze(volume_id, view_id))
    assert runner.argvs == [
        lvs(),
        ["lvcreate", "--yes", "--snapshot", "--name", view_id, "--size", f"{2560 * MIB}b",
         "--addtag", f"ebsemu_view_{view_id}", f"{VG}/{volume_id}"],
        vgs(),
    ]  # fmt: skip
    assert fake.lvs[view_id].origin == volume_id


def test_deleting_a_linear_volume_removes_its_cow_views_first(tmp_path: Path) -> None:
    storage, runner, _ = fake_storage(tmp_path, "linear")
    volume_id, view_id = new_id("vol"), new_id("snap")
    run(storage.create(volume_id, GIB))
    run(storage.freeze(volume_id, view_id))
    runner.calls.clear()
    run(storage.delete(volume_id))
    assert runner.argvs == [
        lvs(),
        ["lvremove", "--yes", f"{VG}/{view_id}"],
        ["lvremove", "--yes", f"{VG}/{volume_id}"],
        vgs(),
    ]
    assert run(storage.list_views()) == []


def test_deleting_a_thin_volume_keeps_its_views(tmp_path: Path) -> None:
    storage, _, _ = fake_storage(tmp_path)
    volume_id, view_id = new_id("vol"), new_id("snap")
    run(storage.create(volume_id, GIB))
    run(storage.freeze(volume_id, view_id))
    run(storage.delete(volume_id))
    assert run(storage.list_views()) == [view_id]
    assert run(storage.list_volumes()) == []


def test_write_blocks_activates_the_volume_and_keeps_zero_blocks_unwritten(
    tmp_path: Path,
) -> None:
    storage, runner, fake = fake_storage(tmp_path)
    volume_id = new_id("vol")
    run(storage.create(volume_id, 8 * BLOCK_SIZE))
    runner.calls.clear()
    storage.write_blocks(volume_id, [(0, block(7)), (1, bytes(BLOCK_SIZE)), (7, block(3))])
    assert runner.argvs == [
        ["lvchange", "--activate", "y", "--ignoreactivationskip", f"{VG}/{volume_id}"]
    ]
    device = fake.device(volume_id)
    assert device.read_bytes() == block(7) + bytes(6 * BLOCK_SIZE) + block(3)
    assert os.stat(device).st_blocks * 512 == 2 * BLOCK_SIZE  # the zero block stayed a hole
    storage.write_blocks(volume_id, [(0, bytes(BLOCK_SIZE))])  # zeros over data are written
    assert device.read_bytes()[:BLOCK_SIZE] == bytes(BLOCK_SIZE)
    with pytest.raises(BackendError, match="does not fit volume"):
        storage.write_blocks(volume_id, [(8, block(1))])


def test_the_data_path_refuses_to_block_the_event_loop(tmp_path: Path) -> None:
    storage, _, _ = fake_storage(tmp_path)
    volume_id = new_id("vol")

    async def on_the_loop() -> None:
        await storage.create(volume_id, GIB)
        storage.open_view("snap-0")

    with pytest.raises(BackendError, match="call it from a worker thread"):
        run(on_the_loop())


def test_open_view_of_a_view_that_does_not_exist_is_a_backend_error(tmp_path: Path) -> None:
    storage, _, _ = fake_storage(tmp_path)
    with pytest.raises(BackendError, match="Failed to find logical volume"):
        storage.open_view(new_id("snap"))


# -- configuration, parsing, protocol ----------------------------------------------------------


def test_from_options_reads_the_storage_section_and_refuses_unknown_options() -> None:
    storage = LvmStorage.from_options(
        {"vg": "data", "lv_type": "linear", "zero_linear": "no", "lvm_config": " global{x=1} "},
        runner=RecordingRunner(),
        templates=load_templates(),
    )
    assert storage.config == LvmConfig(
        vg="data", lv_type="linear", zero_linear=False, lvm_config="global{x=1}"
    )
    defaults = LvmStorage.from_options({"vg": "data"}, runner=RecordingRunner(),
                                       templates=load_templates()).config  # fmt: skip
    assert (defaults.lv_type, defaults.thin_pool, defaults.lvm_config) == (
        "thin", "ebsemu_pool", None,
    )  # fmt: skip
    with pytest.raises(SetupError, match="unknown option"):
        LvmStorage.from_options(
            {"vg": "data", "pool": "p"}, runner=RecordingRunner(), templates=load_templates()
        )
    with pytest.raises(SetupError, match="'vg' is required"):
        LvmStorage.from_options({}, runner=RecordingRunner(), templates=load_templates())
    with pytest.raises(SetupError, match="cannot be an LVM volume group name"):
        LvmConfig(vg="-rf")


def test_lvs_json_of_a_thin_pool_and_its_snapshots_parses_into_dataclasses() -> None:
    text = """{"report": [{"lv": [
      {"lv_name":"ebsemu_pool", "lv_size":"34359738368", "lv_attr":"twi-aotz--", "lv_tags":"",
       "pool_lv":"", "origin":"", "data_percent":"12.50"},
      {"lv_name":"vol-1", "lv_size":"1073741824", "lv_attr":"Vwi-aotz--",
       "lv_tags":"ebsemu_vol_vol-1", "pool_lv":"ebsemu_pool", "origin":"", "data_percent":"3.00"},
      {"lv_name":"snap-1", "lv_size":"1073741824", "lv_attr":"Vwi---tz-k",
       "lv_tags":"ebsemu_view_snap-1,ebsemu_vol_vol-1", "pool_lv":"ebsemu_pool",
       "origin":"vol-1", "data_percent":""}]}]}"""
    pool, volume, view = parse_lvs(text)
    assert pool.is_thin_pool and pool.data_percent == 12.5 and pool.volume_id is None
    assert volume.is_thin and volume.volume_id == "vol-1" and volume.view_id is None
    assert (view.view_id, view.volume_id, view.origin) == ("snap-1", None, "vol-1")
    with pytest.raises(BackendError, match="cannot parse lvs output"):
        parse_lvs('{"report": [{"lv": [{"lv_name": "x"}]}]}')


def test_lvm_storage_implements_the_storage_backend_protocol() -> None:
    check_protocol(StorageBackend, LvmStorage)
