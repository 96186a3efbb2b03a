"""Boot the test guest in QEMU and follow what it reports on its serial console.

The VM is a q35 machine under TCG (Linux guests stall under the nested KVM available here)
with ACPI PCI hot-plug off, so disks hot-plugged on its pcie-root-ports are handled by the
guest's native PCIe hot-plug driver, and its QMP socket at ``<socket_dir>/<name>.qmp`` where
the qemu VMM driver discovers it. The serial console goes to a file the test reads.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

from tests.guest.build import GuestImage

QEMU = "qemu-system-x86_64"
MARKER = "EBSEMU-GUEST"
POLL_SECONDS = 0.05
STOP_SECONDS = 10.0


def guest_argv(
    image: GuestImage, qmp_socket: Path, console: Path, *, ports: int, memory_mib: int = 256
) -> list[str]:
    argv = [
        QEMU,
        "-machine",
        "q35,accel=tcg",
        "-m",
        str(memory_mib),
        "-smp",
        "1",
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-kernel",
        str(image.kernel),
        "-initrd",
        str(image.initrd),
        "-append",
        # no_timer_check: under emulation on a busy host the kernel's check of the IO-APIC
        # timer can miss its ticks and panic at boot ("IO-APIC + timer doesn't work!").
        "console=ttyS0 loglevel=4 panic=-1 no_timer_check",
        "-serial",
        f"file:{console}",
        "-monitor",
        "none",
        "-qmp",
        f"unix:{qmp_socket},server=on,wait=off",
        "-global",
        "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off",
    ]
    for n in range(1, ports + 1):
        argv += ["-device", f"pcie-root-port,id=rp{n},bus=pcie.0,chassis={n},slot={n}"]
    return argv


class Console:
    """The guest's serial console, read from the file QEMU writes it to.

    ``expect`` finds the next match after the previous one, so a test reads the guest's reports
    in the order the guest made them."""

    def __init__(
        self, path: Path, process: subprocess.Popen[bytes], qemu_log: Path, guest: str
    ) -> None:
        self._path = path
        self._guest = guest
        self._process = process
        self._qemu_log = qemu_log
        self._position = 0

    def text(self) -> str:
        """Everything the guest has written, up to its last complete line (the console is
        written a byte at a time: a line still being written could match a pattern in part)."""
        data = self._raw()
        return data[: data.rfind(b"\n") + 1].decode(errors="replace")

    def _raw(self) -> bytes:
        try:
            return self._path.read_bytes()
        except FileNotFoundError:
            return b""

    def expect(self, pattern: str, *, timeout: float, what: str) -> re.Match[str]:
        """The first match of ``pattern`` after the last one found; fails, showing the console's
        last lines, when ``timeout`` seconds pass or QEMU exits first."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.text(), self._position)
            if match is not None:
                self._position = match.end()
                return match
            if self._process.poll() is not None:
                self.fail(f"{what}: QEMU exited ({self._process.returncode}) first")
            if time.monotonic() > deadline:
                self.fail(f"{what}: not seen on the guest console within {timeout:g} s")
            time.sleep(POLL_SECONDS)

    def reports(self, kind: str) -> list[str]:
        """Every report line of one kind the guest has made so far."""
        return re.findall(rf"{MARKER} {kind}\b[^\r\n]*", self.text())

    def disks(self) -> dict[str, str]:
        """The guest's virtio disks now, name -> serial, from its reports so far."""
        disks: dict[str, str] = {}
        for event, name, serial in re.findall(
            rf"{MARKER} DISK-(ADDED|REMOVED) (\S+) serial=(\S*)", self.text()
        ):
            if event == "ADDED":
                disks[name] = serial
            else:
                disks.pop(name, None)
        return disks

    def fail(self, message: str, lines: int = 40) -> NoReturn:
        tail = "\n".join(self._raw().decode(errors="replace").splitlines()[-lines:])
        qemu = self._qemu_log.read_text(errors="replace").strip() if self._qemu_log.exists() else ""
        details = f"\n--- QEMU stderr ---\n{qemu}" if qemu else ""
        pytest.fail(
            f"{message}\n--- last {lines} lines of the console of the guest ({self._guest}) ---"
            f"\n{tail}{details}",
            pytrace=False,
        )


@dataclass
class GuestVm:
    name: str
    qmp_socket: Path
    console: Console
    process: subprocess.Popen[bytes]

    def wait_ready(self, timeout: float = 90.0) -> str:
        """Wait for /init to have loaded its modules; the guest's kernel release."""
        ready = self.console.expect(
            rf"{MARKER} READY kernel=(\S+)", timeout=timeout, what="guest boot"
        )
        errors = self.console.reports("ERROR")
        if errors:
            self.console.fail(f"guest set-up failed: {errors}")
        return ready.group(1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_SECONDS)


@contextlib.contextmanager
def running_guest(
    image: GuestImage, socket_dir: Path, workdir: Path, name: str, *, ports: int = 4
) -> Iterator[GuestVm]:
    """Start the guest (without waiting for it to boot); stop it on exit."""
    qmp_socket = socket_dir / f"{name}.qmp"
    console_path = workdir / f"{name}.console"
    qemu_log = workdir / f"{name}.qemu.log"
    argv = guest_argv(image, qmp_socket, console_path, ports=ports)
    with qemu_log.open("wb") as log:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    vm = GuestVm(
        name, qmp_socket, Console(console_path, process, qemu_log, image.description), process
    )
    try:
        yield vm
    finally:
        vm.stop()
