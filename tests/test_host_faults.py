"""Every host command of an operation fails in turn, and the service rolls back.

The service runs in-process over the LVM storage backend, whose commands go to a recording
runner answering as LVM would (tests/lvm_fixtures.py FakeLvm: thin pools, snapshots and
activation cannot run here). For create, delete and snapshot, the N-th command the operation
runs fails, for every N: the resource ends in a state EC2 allows (`error` with a message, or
rolled back to where it was), no LV is left behind that no record owns, and the undo argv
(lvremove of what the operation had created) ran.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from backends.blockstore import LocalBlockStore
from backends.lvm import LvmStorage
from backends.lvm_config import LvmConfig
from backends.vmm.xen import XenConfig, XenVmm, vdev_number
from ebsemu import config as config_module
from ebsemu.api.actions import Services
from ebsemu.app import build_services
from ebsemu.model import AttachmentState, Instance, SnapshotState, VolumeState, utcnow
from ebsemu.service.context import RequestContext
from ebsemu.service.core import Core
from ebsemu.service.instances import instance_id
from ebsemu.service.jobs import Jobs
from ebsemu.service.reconcile import drop_stale_views
from ebsemu.service.storage_hosts import StorageHosts
from ebsemu.service.volumes import VolumeRequest
from ebsemu.store.sqlite import SqliteStore
from hostcmds import RecordingRunner, Reply, load_templates
from hostcmds.recording import SCRIPTED_FAILURE, Responder
from tests.lvm_fixtures import FakeLvm

VG = "vg0"
CTX = RequestContext("000000000000", "us-east-1", "test")


@dataclass
class Rig:
    core: Core
    services: Services
    runner: RecordingRunner
    fake: FakeLvm


@asynccontextmanager
async def rig(tmp_path: Path, lv_type: str, also: Responder | None = None) -> AsyncIterator[Rig]:
    """The service over LVM storage; ``also`` answers the commands LVM does not."""
    cfg = config_module.load(None, data_dir=tmp_path / "data")
    fake = FakeLvm(tmp_path / "dev", vg=VG)

    def respond(argv: tuple[str, ...]) -> Reply | None:
        return (also(argv) if also is not None else None) or fake.respond(argv)

    runner = RecordingRunner(responder=respond, default=None)
    storage = LvmStorage(
        runner, load_templates(), LvmConfig(vg=VG, lv_type=lv_type, dev_dir=tmp_path / "dev")
    )
    store = SqliteStore(cfg.database)
    await store.open()
    core = Core(
        config=cfg,
        store=store,
        storage_hosts=StorageHosts.single(storage),
        blocks=LocalBlockStore(cfg.blocks_dir),
        jobs=Jobs(store),
    )
    services = build_services(core)
    await storage.check_setup()
    try:
        yield Rig(core, services, runner, fake)
    finally:
        await core.jobs.close()
        await store.close()


def request() -> VolumeRequest:
    return VolumeRequest(
        zone="us-east-1a",
        zone_id=None,
        size_gib=1,
        snapshot_id=None,
        volume_type="gp3",
        iops=None,
        throughput=None,
        encrypted=None,
        kms_key_id=None,
        multi_attach=False,
        tags={},
        client_token=None,
    )


async def create_volume(r: Rig) -> str:
    volume = await r.services.volumes.create(CTX, request())
    await r.core.jobs.idle()
    return volume.id


def argvs_from(r: Rig, start: int) -> list[list[str]]:
    return [[a for a in argv if not a.startswith("--config")] for argv in r.runner.argvs[start:]]


def commands(argvs: list[list[str]]) -> list[str]:
    return [argv[0] for argv in argvs]


def lvremoved(argvs: list[list[str]], lv: str) -> bool:
    return any(argv[0] == "lvremove" and any(lv in a for a in argv) for argv in argvs)


async def commands_of(
    tmp_path: Path, lv_type: str, prepare: Callable[[Rig], Awaitable[str]],
    operation: Callable[[Rig, str], Awaitable[None]],
) -> int:  # fmt: skip
    """How many host commands ``operation`` runs when nothing fails."""
    async with rig(tmp_path / "count", lv_type) as r:
        resource = await prepare(r)
        start = len(r.runner.calls)
        await operation(r, resource)
        return len(r.runner.calls) - start


def run(coro: Awaitable[None]) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]  # a coroutine is what asyncio.run takes


async def _nothing(r: Rig) -> str:
    return ""


async def _create(r: Rig, _: str) -> None:
    await create_volume(r)


@pytest.mark.parametrize("lv_type", ["thin", "linear"])
def test_each_failing_command_of_create_leaves_the_volume_error_and_no_lv(
    tmp_path: Path, lv_type: str
) -> None:
    async def scenario() -> None:
        total = await commands_of(tmp_path, lv_type, _nothing, _create)
        assert total >= 2
        for n in range(1, total + 1):
            async with rig(tmp_path / f"fail{n}", lv_type) as r:
                start = len(r.runner.calls)
                r.runner.fail_call(n)
                volume_id = await create_volume(r)
                volume = await r.core.store.get_volume(volume_id)
                assert volume is not None
                ran = argvs_from(r, start)
                assert volume.state is VolumeState.ERROR, (n, commands(ran))
                assert volume.state_message and "Creation failed" in volume.state_message
                assert volume_id not in r.fake.lvs, (n, commands(ran))
                if any(argv[0] == "lvcreate" for argv in ran[: n - 1]):
                    assert lvremoved(ran[n:], volume_id), (n, commands(ran))

    run(scenario())


async def _made(r: Rig) -> str:
    return await create_volume(r)


async def _delete(r: Rig, volume_id: str) -> None:
    await r.services.volumes.delete(CTX, volume_id)
    await r.core.jobs.idle()


def test_each_failing_command_of_delete_leaves_the_volume_error_and_a_retry_deletes_it(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        total = await commands_of(tmp_path, "thin", _made, _delete)
        assert total >= 1
        for n in range(1, total + 1):
            async with rig(tmp_path / f"fail{n}", "thin") as r:
                volume_id = await create_volume(r)
                start = len(r.runner.calls)
                r.runner.fail_call(n)
                await _delete(r, volume_id)
                volume = await r.core.store.get_volume(volume_id)
                assert volume is not None
                ran = commands(argvs_from(r, start))
                if volume.state is not VolumeState.DELETED:
                    assert volume.state is VolumeState.ERROR, (n, ran)
                    assert volume.state_message and "Deletion failed" in volume.state_message
                    await _delete(r, volume_id)  # error is deletable: the retry finishes it
                    volume = await r.core.store.get_volume(volume_id)
                    assert volume is not None
                assert volume.state is VolumeState.DELETED, (n, ran)
                assert volume_id not in r.fake.lvs

    run(scenario())


async def _snapshot(r: Rig, volume_id: str) -> None:
    await r.services.snapshots.create(CTX, volume_id, None, {})
    await r.core.jobs.idle()


def test_each_failing_command_of_a_snapshot_ends_it_in_error_and_drops_the_view(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        total = await commands_of(tmp_path, "thin", _made, _snapshot)
        assert total >= 2
        for n in range(1, total + 1):
            async with rig(tmp_path / f"fail{n}", "thin") as r:
                volume_id = await create_volume(r)
                start = len(r.runner.calls)
                r.runner.fail_call(n)
                snapshot = await r.services.snapshots.create(CTX, volume_id, None, {})
                await r.core.jobs.idle()
                stored = await r.core.store.get_snapshot(snapshot.id)
                assert stored is not None
                ran = argvs_from(r, start)
                if snapshot.id in r.fake.lvs:  # its drop failed: the periodic sweep drops it
                    assert await drop_stale_views(r.core) == [snapshot.id], (n, commands(ran))
                views = [name for name in r.fake.lvs if name.startswith("snap-")]
                assert views == [], (n, commands(ran))
                volume = await r.core.store.get_volume(volume_id)
                assert volume is not None and volume.state is VolumeState.AVAILABLE
                if stored.state is SnapshotState.ERROR:
                    assert stored.state_message, (n, commands(ran))
                    if any(argv[0] == "lvcreate" for argv in ran[: n - 1]):
                        assert lvremoved(ran[n:], snapshot.id), (n, commands(ran))
                else:  # a failure the backend retried or could do without
                    assert stored.state is SnapshotState.COMPLETED, (n, commands(ran))

    run(scenario())


# ---- attach and detach: LVM storage, a Xen VMM host (xl), every command failing in turn ----

XEN_HOST = "xen1"
DOMAIN = "web1"
XL_LIST = (
    "Name                                        ID   Mem VCPUs\tState\tTime(s)\n"
    "Domain-0                                     0  4096     4     r-----     812.4\n"
    "web1                                         3  1024     2     -b----      41.0\n"
)
BE_PATH = "/local/domain/0/backend/vbd/3/"


class FakeXen:
    """xl and xenstore as dom0 would answer them for one domain, ``web1``, whose attached
    disks are kept by virtual device number."""

    def __init__(self) -> None:
        self.disks: dict[int, str] = {}  # vdev -> dom0 device path

    def respond(self, argv: tuple[str, ...]) -> Reply | None:
        if argv[:2] == ("xl", "list"):
            return Reply(stdout=XL_LIST)
        if argv[:2] == ("xl", "block-list"):
            rows = "".join(f"{v} 0 3 4 15 8 {BE_PATH}{v}\n" for v in sorted(self.disks))
            return Reply(stdout="Vdev  BE  handle state evt-ch ring-ref BE-path\n" + rows)
        if argv[:2] == ("xl", "block-attach"):
            self.disks[vdev_number(argv[4])] = argv[3].removeprefix("phy:")
            return Reply()
        if argv[:2] == ("xl", "block-detach"):
            self.disks.pop(vdev_number(argv[-1]), None)
            return Reply()
        if argv[0] == "xenstore-read":
            vdev = int(argv[1].removeprefix(BE_PATH).split("/")[0])
            return Reply(stdout=self.disks[vdev] + "\n")
        return None


@asynccontextmanager
async def xen_rig(tmp_path: Path) -> AsyncIterator[tuple[Rig, FakeXen, str]]:
    """A rig whose one runner answers as LVM and as Xen, with the domain as an instance."""
    xen = FakeXen()
    async with rig(tmp_path, "thin", also=xen.respond) as r:
        vmm = XenVmm(r.runner, load_templates(), XenConfig())
        r.core.vmms[XEN_HOST] = vmm
        iid = instance_id(XEN_HOST, DOMAIN)
        await r.core.store.sync_instances(
            XEN_HOST,
            [Instance(iid, CTX.account_id, CTX.region, "us-east-1a", XEN_HOST, DOMAIN,
                      "running", utcnow())],
        )  # fmt: skip
        yield r, xen, iid


async def attach(r: Rig, volume_id: str, iid: str) -> None:
    await r.services.attachments.attach(CTX, volume_id, iid, "/dev/sdf")
    await r.core.jobs.idle()


async def detach(r: Rig, volume_id: str, *, force: bool = False) -> None:
    await r.services.attachments.detach(CTX, volume_id, None, None, force)
    await r.core.jobs.idle()


async def xen_commands(tmp_path: Path, detaching: bool) -> int:
    async with xen_rig(tmp_path / "count") as (r, _, iid):
        volume_id = await create_volume(r)
        if detaching:
            await attach(r, volume_id, iid)
        start = len(r.runner.calls)
        await (detach(r, volume_id) if detaching else attach(r, volume_id, iid))
        return len(r.runner.calls) - start


FAILURES = {"exit 1": SCRIPTED_FAILURE, "timeout": Reply(timeout=True)}


@pytest.mark.parametrize("failure", FAILURES)
def test_each_failing_command_of_attach_rolls_the_attachment_back(
    tmp_path: Path, failure: str
) -> None:
    async def scenario() -> None:
        total = await xen_commands(tmp_path, detaching=False)
        assert total >= 2
        for n in range(1, total + 1):
            async with xen_rig(tmp_path / f"fail{n}") as (r, xen, iid):
                volume_id = await create_volume(r)
                start = len(r.runner.calls)
                r.runner.fail_call(n, FAILURES[failure])
                await attach(r, volume_id, iid)
                ran = argvs_from(r, start)
                volume = await r.core.store.get_volume(volume_id)
                assert volume is not None
                assert volume.state is VolumeState.AVAILABLE, (n, commands(ran))
                assert volume.attachments == []
                assert xen.disks == {}, (n, ran)
                if ran[n - 1][:2] == ["xl", "block-attach"] and failure == "timeout":
                    # it may have attached before timing out: the driver detached it again
                    assert ran[n] == ["xl", "block-detach", "--force", DOMAIN, "sdf"], ran

    run(scenario())


@pytest.mark.parametrize("failure", FAILURES)
def test_each_failing_command_of_detach_leaves_the_attachment_busy_until_a_forced_retry(
    tmp_path: Path, failure: str
) -> None:
    async def scenario() -> None:
        total = await xen_commands(tmp_path, detaching=True)
        assert total >= 2
        for n in range(1, total + 1):
            async with xen_rig(tmp_path / f"fail{n}") as (r, xen, iid):
                volume_id = await create_volume(r)
                await attach(r, volume_id, iid)
                start = len(r.runner.calls)
                r.runner.fail_call(n, FAILURES[failure])
                await detach(r, volume_id)
                ran = commands(argvs_from(r, start))
                volume = await r.core.store.get_volume(volume_id)
                assert volume is not None
                if volume.state is VolumeState.IN_USE:
                    [attachment] = volume.attachments
                    assert attachment.state is AttachmentState.BUSY, (n, ran)
                    await detach(r, volume_id, force=True)
                    volume = await r.core.store.get_volume(volume_id)
                    assert volume is not None
                assert volume.state is VolumeState.AVAILABLE, (n, ran)
                assert volume.attachments == []
                assert xen.disks == {}, (n, ran)

    run(scenario())
