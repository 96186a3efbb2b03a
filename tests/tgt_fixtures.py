"""A private tgtd for the export tests, and initiator-side helpers (libiscsi tools, qemu-io).

Each Tgtd listens on 127.0.0.1 on a free port with a control socket number of its own, so it
runs beside any other tgtd on the host. tgtd ignores SIGTERM: ``stop`` takes it offline,
deletes its targets and shuts it down through tgtadm, then removes the control socket files it
leaves behind. ``crash`` kills it with SIGKILL (tgtd keeps nothing across a restart) and
``start`` brings it back on the same port and control socket.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from backends.base import IscsiSource

TOOLS = ("tgtd", "tgtadm", "iscsi-inq", "iscsi-readcapacity16", "qemu-io")
# QEMU's iscsi block driver is a loadable module (Debian: qemu-block-extra).
HAVE_QEMU_ISCSI = any(Path("/usr/lib").glob("*/qemu/block-iscsi.so"))
HAVE_TOOLS = all(shutil.which(tool) for tool in TOOLS) and HAVE_QEMU_ISCSI
NEEDS_TOOLS = (
    "needs tgtd, libiscsi tools and qemu-io with its iscsi driver "
    "(apt-get install tgt libiscsi-bin qemu-utils qemu-block-extra)"
)
SOCKET_DIR = Path("/var/run/tgtd")
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0

# The initiator name the helpers below log in with, unless told otherwise.
INITIATOR_NAME = "iqn.2024-01.org.ebsemu.test:initiator"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def free_control_port() -> int:
    while True:
        number = random.randrange(20000, 32768)  # tgtd accepts 0..32767
        if not (SOCKET_DIR / f"socket.{number}").exists():
            return number


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


@dataclass
class Tgtd:
    workdir: Path
    port: int = field(default_factory=free_port)
    control_port: int = field(default_factory=free_control_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def portal(self) -> str:
        return f"127.0.0.1:{self.port}"

    def tgtadm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["tgtadm", "-C", str(self.control_port), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=check,
        )

    def show_targets(self) -> str:
        return self.tgtadm("--lld", "iscsi", "--op", "show", "--mode", "target").stdout

    def accounts(self) -> list[str]:
        out = self.tgtadm("--lld", "iscsi", "--op", "show", "--mode", "account").stdout
        return [line.strip() for line in out.splitlines()[1:] if line.strip()]

    def start(self) -> None:
        log = (self.workdir / f"tgtd-{self.control_port}.log").open("ab")
        with log:
            self.proc = subprocess.Popen(
                [
                    "tgtd",
                    "-f",
                    "-C",
                    str(self.control_port),
                    "--iscsi",
                    f"portal={self.portal}",
                ],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tgtd exited {self.proc.returncode}; see {log.name}")
            answers = self.tgtadm("--op", "show", "--mode", "sys", check=False).returncode == 0
            if answers and _port_open(self.port):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"tgtd did not come up in {START_TIMEOUT:g} s")
            time.sleep(0.02)

    def crash(self) -> None:
        """SIGKILL, as a crash or a host reboot would: every target is lost."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=STOP_TIMEOUT)
        self.proc = None

    def stop(self) -> None:
        """Clean shutdown through tgtadm, then remove the control socket files."""
        proc, self.proc = self.proc, None
        try:
            if proc is not None and proc.poll() is None:
                self._shut_down(proc)
        finally:
            for suffix in ("", ".lock"):
                with contextlib.suppress(FileNotFoundError):
                    (SOCKET_DIR / f"socket.{self.control_port}{suffix}").unlink()

    def _shut_down(self, proc: subprocess.Popen[bytes]) -> None:
        self.tgtadm("--op", "update", "--mode", "sys", "--name", "State", "-v", "offline")
        for line in self.show_targets().splitlines():
            if line.startswith("Target "):
                tid = line.split()[1].rstrip(":")
                self.tgtadm(
                    "--lld", "iscsi", "--op", "delete", "--force", "--mode", "target",
                    "--tid", tid,
                )  # fmt: skip
        # tgtd may exit before it answers this one: its exit is what counts.
        self.tgtadm("--op", "delete", "--mode", "system", check=False)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)
            raise RuntimeError("tgtd did not shut down through tgtadm") from None


@contextlib.contextmanager
def running_tgtd(workdir: Path) -> Iterator[Tgtd]:
    if not HAVE_TOOLS:
        pytest.skip(NEEDS_TOOLS)
    daemon = Tgtd(workdir)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


# -- initiator side ---------------------------------------------------------------------------


def iscsi_url(source: IscsiSource, *, user: str | None = None, secret: str | None = None) -> str:
    """iscsi://user%secret@portal/iqn/lun with the source's credentials unless overridden
    (pass empty strings for none)."""
    user = source.chap_user if user is None else user
    secret = source.chap_secret if secret is None else secret
    credentials = f"{user}%{secret}@" if user else ""
    return f"iscsi://{credentials}{source.portal}/{source.iqn}/{source.lun}"


def libiscsi(
    tool: str, url: str, *, initiator: str = INITIATOR_NAME
) -> subprocess.CompletedProcess[str]:
    """Run a libiscsi tool (iscsi-inq, iscsi-readcapacity16) against ``url``."""
    return subprocess.run(
        [tool, "-i", initiator, url], capture_output=True, text=True, timeout=20, check=False
    )


def qemu_io(
    source: IscsiSource,
    commands: Sequence[str],
    workdir: Path,
    *,
    initiator: str = INITIATOR_NAME,
) -> subprocess.CompletedProcess[str]:
    """Run qemu-io commands on the LUN through QEMU's iscsi driver, the CHAP secret read from a
    0600 file by a secret object (never on the command line)."""
    assert source.chap_secret is not None
    secret_file = workdir / "chap.secret"
    fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(source.chap_secret)
    host, port = source.portal.rsplit(":", 1)
    image = ",".join(
        [
            "driver=raw",
            "file.driver=iscsi",
            "file.transport=tcp",
            f"file.portal={host}:{port}",
            f"file.target={source.iqn}",
            f"file.lun={source.lun}",
            f"file.user={source.chap_user}",
            "file.password-secret=chap",
            f"file.initiator-name={initiator}",
        ]
    )
    argv = ["qemu-io", "--object", f"secret,id=chap,file={secret_file}", "--image-opts"]
    for command in commands:
        argv += ["-c", command]
    try:
        return subprocess.run(
            [*argv, image], capture_output=True, text=True, timeout=30, check=False
        )
    finally:
        secret_file.unlink()
