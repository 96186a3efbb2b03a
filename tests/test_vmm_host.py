"""HostVmm with real loop devices (losetup) on this machine, plus the VMM registry's check
against the VmmBackend protocol."""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from backends.base import (
    AttachSpec,
    Domain,
    DomainState,
    LocalSource,
    RbdSource,
    VmmBackend,
)
from backends.vmm import VMMS
from backends.vmm.errors import DomainNotFound, UnsupportedSource, VmmError
from backends.vmm.host import HostConfig, HostVmm, parse_losetup_json
from hostcmds import LocalRunner, RecordingRunner, Reply, load_templates
from tests.vmm_fixtures import new_volume_id, run, sparse_file

MIB = 1024 * 1024


def loop_devices_usable() -> bool:
    if shutil.which("losetup") is None or not os.path.exists("/dev/loop-control"):
        return False
    probe = subprocess.run(["losetup", "--find"], capture_output=True, timeout=10)
    return probe.returncode == 0


needs_loop = pytest.mark.skipif(
    not loop_devices_usable(), reason="needs loop devices (/dev/loop-control, losetup --find)"
)


def host_vmm(runner: LocalRunner | RecordingRunner | None = None) -> HostVmm:
    return HostVmm(runner or LocalRunner(), load_templates())


def loop_backing(name: str) -> str | None:
    """The kernel's record of a loop device's backing file, None if it has none."""
    try:
        return Path(f"/sys/block/{Path(name).name}/loop/backing_file").read_text().strip()
    except FileNotFoundError:
        return None


@needs_loop
def test_loop_device_carries_the_files_bytes_and_is_gone_after_detach(tmp_path: Path) -> None:
    volume_id = new_volume_id()
    payload = os.urandom(4096)
    path = sparse_file(tmp_path / f"{volume_id}.raw", 8 * MIB, payload, offset=3 * MIB)
    vmm = host_vmm()
    spec = AttachSpec(volume_id, "/dev/sdf", LocalSource(str(path)))

    disk = run(vmm.attach("host", spec))
    try:
        assert disk.volume_id == volume_id and disk.source == str(path)
        assert loop_backing(disk.handle) == str(path)
        with open(disk.handle, "rb") as device:
            device.seek(3 * MIB)
            assert device.read(4096) == payload
            assert device.seek(0, os.SEEK_END) == 8 * MIB
        assert run(vmm.attach("host", spec)) == disk  # idempotent: same device
        assert disk in run(vmm.list_attached("host"))
    finally:
        run(vmm.detach("host", volume_id))
    assert loop_backing(disk.handle) is None
    assert volume_id not in {d.volume_id for d in run(vmm.list_attached("host"))}
    run(vmm.detach("host", volume_id))  # already gone: no-op


@needs_loop
def test_notify_resize_makes_the_loop_device_grow(tmp_path: Path) -> None:
    volume_id = new_volume_id()
    path = sparse_file(tmp_path / f"{volume_id}.raw", 4 * MIB)
    vmm = host_vmm()
    disk = run(vmm.attach("host", AttachSpec(volume_id, "/dev/sdf", LocalSource(str(path)))))
    try:
        os.truncate(path, 12 * MIB)
        run(vmm.notify_resize("host", volume_id, 12 * MIB))
        sectors = int(Path(f"/sys/block/{Path(disk.handle).name}/size").read_text())
        assert sectors * 512 == 12 * MIB
    finally:
        run(vmm.detach("host", volume_id))


@needs_loop
def test_check_setup_passes_on_this_host() -> None:
    run(host_vmm().check_setup())


def test_attach_argv_and_rollback_when_losetup_prints_no_device() -> None:
    volume_id = new_volume_id()
    path = f"/srv/volumes/{volume_id}.raw"
    listed = json.dumps({"loopdevices": [{"name": "/dev/loop9", "back-file": path}]})
    runner = RecordingRunner(
        [
            (["losetup", "--json", "--list"], Reply(stdout="")),
            (["losetup", "--find", "--show"], Reply(stdout="garbage\n")),
        ]
    )
    runner.fail_call(3, Reply(stdout=listed))  # the rollback's listing sees the bound device
    vmm = host_vmm(runner)
    with pytest.raises(VmmError, match="not a loop device"):
        run(vmm.attach("host", AttachSpec(volume_id, "/dev/sdf", LocalSource(path))))
    assert runner.argvs == [
        ["losetup", "--json", "--list"],
        ["losetup", "--find", "--show", path],
        ["losetup", "--json", "--list"],
        ["losetup", "--detach", "/dev/loop9"],
    ]


def test_other_domains_and_sources_are_refused() -> None:
    runner = RecordingRunner(default=None)
    vmm = HostVmm(runner, load_templates(), HostConfig(domain="storage1"))
    spec = AttachSpec(new_volume_id(), "/dev/sdf", LocalSource("/x"))
    assert run(vmm.list_domains()) == [Domain("storage1", DomainState.RUNNING)]
    with pytest.raises(DomainNotFound):
        run(vmm.attach("host", spec))
    with pytest.raises(DomainNotFound):
        run(vmm.detach("host", spec.volume_id))
    run(vmm.detach("host", spec.volume_id, force=True))
    with pytest.raises(UnsupportedSource):
        run(vmm.attach("storage1", AttachSpec(spec.volume_id, "/dev/sdf", RbdSource("rbd", "img"))))
    assert runner.calls == []


def test_losetup_json_parsing_strips_deleted_marker_and_accepts_empty_output() -> None:
    text = (
        '{"loopdevices": [{"name": "/dev/loop0", "sizelimit": 0, "offset": 0, "autoclear": false,'
        ' "ro": false, "back-file": "/v/vol-0123456789abcdef0.raw (deleted)", "dio": false,'
        ' "log-sec": 512}, {"name": "/dev/loop1", "back-file": null}]}'
    )
    loops = parse_losetup_json(text)
    assert [(lp.name, lp.back_file) for lp in loops] == [
        ("/dev/loop0", "/v/vol-0123456789abcdef0.raw"),
        ("/dev/loop1", ""),
    ]
    assert parse_losetup_json("") == []
    with pytest.raises(VmmError):
        parse_losetup_json("{not json")


def test_every_registered_vmm_matches_the_vmm_backend_protocol() -> None:
    protocol_methods = {
        name: inspect.signature(member)
        for name, member in inspect.getmembers(VmmBackend, inspect.isfunction)
        if not name.startswith("_")
    }
    assert set(protocol_methods) == {
        "check_setup",
        "list_domains",
        "attach",
        "detach",
        "list_attached",
        "notify_resize",
        "pause",
        "resume",
    }
    assert set(VMMS) == {"qemu", "libvirt", "xen", "host"}
    for name, cls in VMMS.items():
        for method, expected in protocol_methods.items():
            actual = getattr(cls, method)
            assert inspect.iscoroutinefunction(actual), f"{name}.{method} is not async"
            assert inspect.signature(actual) == expected, f"{name}.{method} signature differs"
        factory = inspect.signature(cls.from_options)
        assert list(factory.parameters) == ["options", "runner", "templates"], name
