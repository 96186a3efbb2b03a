"""ModifyVolume's job on LVM storage, in process: the volume's LV is grown with lvextend
(LVM's metadata commands run for real on a loop-device volume group, activation off), and a
growth the volume group cannot hold fails the modification and leaves the LV and the volume."""

from __future__ import annotations

import asyncio
from pathlib import Path

from backends.blockstore import LocalBlockStore
from backends.lvm import LvmConfig, LvmStorage
from ebsemu.app import build_services
from ebsemu.config import Config
from ebsemu.model import GIB
from ebsemu.modification import ModificationState
from ebsemu.service.context import RequestContext
from ebsemu.service.core import Core
from ebsemu.service.jobs import Jobs
from ebsemu.service.modification_rules import ModifyRequest
from ebsemu.service.storage_hosts import StorageHosts
from ebsemu.service.volumes import VolumeRequest
from ebsemu.store.sqlite import SqliteStore
from hostcmds import load_templates
from tests.lvm_fixtures import MetadataOnlyRunner, loop_volume_group

CTX = RequestContext(account_id="000000000000", region="us-east-1", request_id="test")


def request(size_gib: int) -> VolumeRequest:
    return VolumeRequest(
        zone="us-east-1a", zone_id=None, size_gib=size_gib, snapshot_id=None, volume_type="gp3",
        iops=None, throughput=None, encrypted=None, kms_key_id=None, multi_attach=False,
        tags={}, client_token=None,
    )  # fmt: skip


def test_modify_volume_grows_the_lv_with_lvextend_and_fails_cleanly_past_the_vg(
    tmp_path: Path,
) -> None:
    with loop_volume_group(tmp_path, size=4 * GIB) as vg:
        runner = MetadataOnlyRunner()
        storage = LvmStorage(
            runner,
            load_templates(),
            LvmConfig(vg=vg.name, lv_type="linear", lvm_config=vg.config),
        )

        async def scenario() -> None:
            store = SqliteStore(tmp_path / "db.sqlite3")
            await store.open()
            core = Core(
                config=Config(data_dir=tmp_path, modification_cooldown_seconds=0),
                store=store,
                storage_hosts=StorageHosts.single(storage),
                blocks=LocalBlockStore(tmp_path / "blocks"),
                jobs=Jobs(store),
            )
            try:
                await storage.check_setup()
                services = build_services(core)
                volumes, modifications = services.volumes, services.modifications
                volume = await volumes.create(CTX, request(1))
                await core.jobs.idle()
                runner.argvs.clear()

                await modifications.modify(CTX, volume.id, ModifyRequest(size_gib=3))
                await core.jobs.idle()

                done = await store.get_modification(volume.id)
                assert done is not None and done.state is ModificationState.COMPLETED
                assert done.progress == 100
                at = f"{vg.name}/{volume.id}"
                assert ["lvextend", "--size", f"{3 * GIB}b", at, "--config", vg.config] in (
                    runner.argvs
                )
                assert vg.lvs()[volume.id]["size"] == 3 * GIB
                assert (await volumes.get(CTX, volume.id)).size_gib == 3

                await modifications.modify(CTX, volume.id, ModifyRequest(size_gib=8))
                await core.jobs.idle()

                failed = await store.get_modification(volume.id)
                assert failed is not None and failed.state is ModificationState.FAILED
                assert failed.status_message == (
                    "Modification failed: the volume store cannot hold the new size"
                )
                assert vg.lvs()[volume.id]["size"] == 3 * GIB
                assert (await volumes.get(CTX, volume.id)).size_gib == 3
            finally:
                await core.jobs.close()
                await store.close()

        asyncio.run(scenario())
