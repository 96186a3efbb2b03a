"""Guests paused for views (ebsemu.service.guest_pause), on a real QEMU VM over QMP: a guest
several calls need is paused once and resumed after the last; one paused already is left as it
is; each guest this server pauses is recorded in the data directory until it runs again, and a
guest a stopped server left paused is resumed at the next start."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from ebsemu import config
from ebsemu.app import build_core
from ebsemu.service.core import Core
from ebsemu.service.guest_pause import RECORD_NAME, paused, resume_left_paused
from tests.server import TEST_CONFIG, ZONE
from tests.vmm_fixtures import QemuVm, qmp, running_vm

GUEST = ("kvm", "vm1")


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[Core, QemuVm]]:
    sockets = tmp_path / "qmp"
    sockets.mkdir()
    with running_vm(sockets, "vm1", ports=1) as vm:
        ini = tmp_path / "ebsemu.ini"
        ini.write_text(
            f"{TEST_CONFIG}\n[vmm kvm]\ndriver = qemu\nzone = {ZONE}\nsocket_dir = {sockets}\n"
        )
        data = tmp_path / "data"
        data.mkdir()
        yield build_core(config.load(ini, data_dir=data)), vm


async def status(vm: QemuVm) -> str:
    return str((await qmp(vm, "query-status"))["status"])


def recorded(core: Core) -> list[list[str]] | None:
    path = core.config.data_dir / RECORD_NAME
    return json.loads(path.read_text()) if path.exists() else None


def test_a_guest_two_calls_hold_is_paused_once_recorded_and_resumed_after_the_last(
    lab: tuple[Core, QemuVm],
) -> None:
    core, vm = lab

    async def scenario() -> None:
        async with paused(core, [GUEST]) as outer:
            assert outer == [GUEST]
            assert await status(vm) == "paused"
            assert recorded(core) == [list(GUEST)]
            async with paused(core, [GUEST]) as inner:
                assert inner == [GUEST]
            assert await status(vm) == "paused"  # the first call still holds it
        assert await status(vm) == "running"
        assert recorded(core) is None

    asyncio.run(scenario())


def test_a_guest_paused_already_is_left_paused_and_not_recorded(
    lab: tuple[Core, QemuVm],
) -> None:
    core, vm = lab

    async def scenario() -> None:
        await qmp(vm, "stop")
        async with paused(core, [GUEST]) as ours:
            assert ours == []
            assert recorded(core) is None
        assert await status(vm) == "paused"

    asyncio.run(scenario())


def test_a_block_that_fails_still_resumes_the_guest(lab: tuple[Core, QemuVm]) -> None:
    core, vm = lab

    async def scenario() -> None:
        with pytest.raises(OSError, match="view failed"):
            async with paused(core, [GUEST]):
                raise OSError("view failed")
        assert await status(vm) == "running"
        assert recorded(core) is None

    asyncio.run(scenario())


def test_a_guest_that_is_gone_has_nothing_to_pause(lab: tuple[Core, QemuVm]) -> None:
    core, _ = lab

    async def scenario() -> None:
        async with paused(core, [("kvm", "gone")]) as ours:
            assert ours == []
            assert recorded(core) is None

    asyncio.run(scenario())


def test_a_guest_a_stopped_server_left_paused_is_resumed_at_start(
    lab: tuple[Core, QemuVm],
) -> None:
    core, vm = lab
    record = core.config.data_dir / RECORD_NAME
    record.write_text(json.dumps([list(GUEST), ["xen-gone", "db1"]]))

    async def scenario() -> None:
        await qmp(vm, "stop")
        assert await resume_left_paused(core) == 1
        assert await status(vm) == "running"

    asyncio.run(scenario())
    assert not record.exists()  # the VMM no longer configured is forgotten too (logged)
