"""A private OpenSSH server on 127.0.0.1 for the SSH runner tests.

Each server has its own host key, client key, authorized_keys, known_hosts and config under a
directory of the test's, listens on a free port, logs to a file, and can be stopped (the
listener and every connection it forked) and started again on the same port with the same key.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import asyncssh

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
HAVE_SSHD = os.access(SSHD, os.X_OK)
NEEDS_SSHD = "needs OpenSSH's sshd (apt-get install openssh-server)"
PRIVSEP_DIR = Path("/run/sshd")
START_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def new_key(path: Path) -> asyncssh.SSHKey:
    """A fresh ed25519 key, written to ``path`` (0600) and ``path``.pub."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(str(path))
    key.write_public_key(str(path) + ".pub")
    path.chmod(0o600)
    return key


def public_line(key: asyncssh.SSHKey) -> str:
    return key.export_public_key().decode().strip()


def process_gone(pid: int) -> bool:
    """Dead, or a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def wait_until_gone(pids: list[int], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not all(process_gone(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def descendants(root: int) -> list[int]:
    """Every process below ``root``, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [root]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


class SshServer:
    """OpenSSH's sshd, for the current user, on 127.0.0.1:``port``."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.user = getpass.getuser()
        self.host_key = public_line(new_key(root / "host_key"))
        self.client_key = root / "client_key"
        (root / "authorized_keys").write_text(public_line(new_key(self.client_key)) + "\n")
        self.known_hosts = root / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {self.host_key}\n")
        self.log = root / "sshd.log"
        self.config = root / "sshd_config"
        self.config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {root / 'host_key'}",
                    "PidFile none",
                    f"AuthorizedKeysFile {root / 'authorized_keys'}",
                    "StrictModes no",
                    "UsePAM no",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    f"AllowUsers {self.user}",
                    # bash sources ~/.bashrc for commands run by sshd unless SHLVL is already
                    # set; the tests should not depend on (or wait for) the user's rc files.
                    "SetEnv SHLVL=1",
                    "",
                ]
            )
        )
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}"

    def start(self) -> None:
        if os.geteuid() == 0:
            PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        ready = f"Server listening on 127.0.0.1 port {self.port}"
        deadline = time.monotonic() + START_TIMEOUT
        while ready not in self._log_since(offset):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"sshd did not start:\n{self._log_since(offset)}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Kill the listener and every connection (and command) it forked; wait for them."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        victims = descendants(proc.pid)
        for pid in [*victims, proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=5)
        wait_until_gone(victims)

    def logins(self) -> int:
        """How many connections have logged in so far."""
        return self._log_since(0).count("Accepted publickey for")

    def _log_since(self, offset: int) -> str:
        with self.log.open("rb") as log:
            log.seek(offset)
            return log.read().decode("utf-8", "replace")
