"""Helpers shared by the VMM driver tests: diskless QEMU VMs, sparse volume files, ids."""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from backends.base import AttachSpec, LocalSource
from backends.vmm.qmp import QmpClient

T = TypeVar("T")

QEMU = "qemu-system-x86_64"
HAVE_QEMU = shutil.which(QEMU) is not None
NEEDS_QEMU = "needs qemu-system-x86_64 (apt-get install qemu-system-x86)"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def new_volume_id() -> str:
    return "vol-" + secrets.token_hex(9)[:17]


def source_path(spec: AttachSpec) -> str:
    """The path of a spec whose source is a LocalSource."""
    assert isinstance(spec.source, LocalSource)
    return spec.source.path


def sparse_file(path: Path, size: int, data: bytes = b"", offset: int = 0) -> Path:
    with path.open("wb") as handle:
        handle.truncate(size)
        if data:
            handle.seek(offset)
            handle.write(data)
    return path


@dataclass
class QemuVm:
    name: str
    socket: Path
    pid: int

    def alive(self) -> bool:
        """True while the process runs (a zombie waiting for init to reap it does not)."""
        proc = Path(f"/proc/{self.pid}")
        try:
            zombie = proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
            threads = len(list(proc.joinpath("task").iterdir()))
        except (FileNotFoundError, ProcessLookupError):
            return False
        return not zombie or threads > 1

    def kill(self) -> None:
        """SIGKILL, as a crash would: the QMP socket file stays behind."""
        os.kill(self.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM, wait up to 5 s, then SIGKILL; returns once the process is gone."""
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
            deadline = time.monotonic() + wait
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.02)
            if not self.alive():
                return
        raise RuntimeError(f"QEMU {self.pid} did not stop")


def qemu_argv(
    socket: Path,
    pidfile: Path,
    *,
    ports: int,
    acpi_hotplug: bool = False,
    port_options: str = "",
) -> list[str]:
    """A diskless q35 VM with ``ports`` pcie-root-ports and a virtio-scsi controller."""
    argv = [
        QEMU,
        "-machine",
        "q35,accel=kvm:tcg",
        "-m",
        "128",
        "-nographic",
        "-nodefaults",
        "-serial",
        "none",
        "-monitor",
        "none",
        "-qmp",
        f"unix:{socket},server=on,wait=off",
        "-daemonize",
        "-pidfile",
        str(pidfile),
        "-device",
        "virtio-scsi-pci,id=scsi0",
    ]
    if not acpi_hotplug:
        argv += ["-global", "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off"]
    for n in range(1, ports + 1):
        argv += [
            "-device",
            f"pcie-root-port,id=rp{n},bus=pcie.0,chassis={n},slot={n}{port_options}",
        ]
    return argv


@contextlib.contextmanager
def running_vm(
    directory: Path,
    name: str,
    *,
    ports: int = 4,
    acpi_hotplug: bool = False,
    port_options: str = "",
) -> Iterator[QemuVm]:
    """Start a daemonized QEMU VM with its QMP socket at ``directory/<name>.qmp``; stop it on
    exit."""
    if not HAVE_QEMU:
        pytest.skip(NEEDS_QEMU)
    socket = directory / f"{name}.qmp"
    pidfile = directory / f"{name}.pid"
    argv = qemu_argv(
        socket, pidfile, ports=ports, acpi_hotplug=acpi_hotplug, port_options=port_options
    )
    subprocess.run(argv, check=True, timeout=30, capture_output=True)
    vm = QemuVm(name, socket, int(pidfile.read_text().strip()))
    try:
        yield vm
    finally:
        vm.stop()


async def qmp(vm: QemuVm, command: str, arguments: dict[str, Any] | None = None) -> Any:
    """Run one QMP command on ``vm`` over a fresh connection."""
    async with await QmpClient.connect(vm.socket, timeout=5) as client:
        return await client.execute(command, arguments, timeout=10)


# -- libvirt ----------------------------------------------------------------------------------

LIBVIRT_URI = "qemu:///system"
HAVE_LIBVIRT = all(shutil.which(tool) for tool in ("libvirtd", "virtlogd", "virsh"))
NEEDS_LIBVIRT = (
    "needs libvirtd, virtlogd and virsh "
    "(apt-get install libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients)"
)
QEMU_USER = "libvirt-qemu"


def virsh(*args: str, check: bool = True, timeout: float = 60) -> str:
    result = subprocess.run(
        ["virsh", "--connect", LIBVIRT_URI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"virsh {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def _libvirtd_answers() -> bool:
    try:
        virsh("version", timeout=10)
    except (RuntimeError, subprocess.TimeoutExpired):
        return False
    return True


def prepare_libvirt_host() -> None:
    """What Debian's packaging and udev would have set up, done by hand where they did not:
    the QEMU user libvirt runs guests as, the log directory, and /dev/kvm usable by that user
    (otherwise libvirt re-probes QEMU's capabilities on every call, ~4 s each)."""
    try:
        pwd.getpwnam(QEMU_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                QEMU_USER,
            ],
            check=True,
            timeout=30,
        )
    Path("/var/log/libvirt/qemu").mkdir(parents=True, exist_ok=True)
    kvm = Path("/dev/kvm")
    if kvm.exists():
        try:
            group = grp.getgrnam("kvm")
        except KeyError:
            subprocess.run(["groupadd", "--system", "kvm"], check=True, timeout=30)
            group = grp.getgrnam("kvm")
        if QEMU_USER not in group.gr_mem:
            subprocess.run(["usermod", "-aG", "kvm", QEMU_USER], check=True, timeout=30)
        info = kvm.stat()
        if info.st_gid != group.gr_gid or info.st_mode & 0o060 != 0o060:
            os.chown(kvm, 0, group.gr_gid)
            kvm.chmod(0o660)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


@contextlib.contextmanager
def running_libvirtd(workdir: Path, start_timeout: float = 90) -> Iterator[str]:
    """Yield the URI of a libvirtd answering on qemu:///system: the one already running, or
    virtlogd + libvirtd started here (and stopped on exit). Skips the test, naming the reason,
    when libvirtd cannot be started."""
    if _libvirtd_answers():
        yield LIBVIRT_URI
        return
    prepare_libvirt_host()
    procs: list[subprocess.Popen[bytes]] = []
    log_path = workdir / "libvirtd.log"
    try:
        with log_path.open("wb") as log:
            for daemon in ("virtlogd", "libvirtd"):
                procs.append(
                    subprocess.Popen([daemon], stdout=log, stderr=log, start_new_session=True)
                )
        deadline = time.monotonic() + start_timeout
        while not _libvirtd_answers():
            if procs[-1].poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-400:]
                pytest.skip(f"needs a libvirtd that starts on this host; it did not: {tail}")
            time.sleep(0.25)
        yield LIBVIRT_URI
    finally:
        if procs and _libvirtd_answers():
            for name in virsh("list", "--all", "--name").split():
                if name.startswith("ebs-test-"):
                    destroy_domain(name)  # libvirtd leaves running domains behind when it stops
        for proc in reversed(procs):
            _stop(proc)


def domain_xml(name: str, *, ports: int = 6) -> str:
    """A diskless q35 domain with hot-plug root ports, ACPI PCI hot-plug off, running QEMU as
    root so it can open files in the test's private temporary directory."""
    kind = "kvm" if os.access("/dev/kvm", os.R_OK | os.W_OK) else "qemu"
    root_ports = "\n".join(
        "    <controller type='pci' model='pcie-root-port'/>" for _ in range(ports)
    )
    return f"""<domain type='{kind}' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='pci' model='pcie-root'/>
{root_ports}
    <controller type='scsi' model='virtio-scsi'/>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
  <seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel>
  <qemu:commandline>
    <qemu:arg value='-global'/>
    <qemu:arg value='ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off'/>
  </qemu:commandline>
</domain>
"""


@contextlib.contextmanager
def libvirt_domain(workdir: Path, name: str) -> Iterator[str]:
    """A transient running domain; destroyed on exit."""
    xml = workdir / f"{name}.xml"
    xml.write_text(domain_xml(name))
    virsh("create", str(xml))
    try:
        yield name
    finally:
        destroy_domain(name)


def destroy_domain(name: str) -> None:
    """Destroy a transient domain and make sure libvirt no longer lists it."""
    for _ in range(3):
        if name not in virsh("list", "--all", "--name").split():
            return
        virsh("destroy", name, check=False)
    raise RuntimeError(f"libvirt domain {name} would not go away")
