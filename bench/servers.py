"""The two servers under test, each a subprocess on a free loopback port.

ebsemu gets a fresh data directory and a configuration whose limits fit the run; moto_server
keeps everything in memory. Both are stopped with SIGTERM (then SIGKILL) when a section ends.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench import machine
from bench.rawclient import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, form
from bench.sigv4 import Signer

HOST = "127.0.0.1"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
WARM_UP: list[tuple[str, dict[str, str | int]]] = [
    ("DescribeAvailabilityZones", {}),
    ("DescribeVolumes", {}),
    ("DescribeSnapshots", {"Owner.1": "self"}),
    ("DescribeTags", {}),
]

# No request rate limit: the benchmark measures how many calls the server can take.
EBSEMU_CONFIG = f"""\
[server]
log_level = {{log_level}}
[limits]
max_volumes = {{max_volumes}}
max_snapshots = {{max_snapshots}}
requests_per_second = 0
[auth]
access_key_id = {ACCESS_KEY_ID}
secret_access_key = {SECRET_ACCESS_KEY}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """One server subprocess: its name in the tables, argv, log file and, once started, pid."""

    name: str
    argv: list[str]
    port: int
    log_path: Path
    data_dir: Path | None = None
    profile: Path | None = None  # where py-spy writes the server's profile, if wanted
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    profiler: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "server not started"
        return self.proc.pid

    def cpu_seconds(self) -> float:
        return machine.cpu_seconds(self.pid)

    def rss_mib(self) -> float:
        return machine.rss_mib(self.pid)

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{self.name} exited at start-up:\n{tail}")
            try:
                urllib.request.urlopen(f"{self.url}/?Action=DescribeRegions", timeout=2)
            except urllib.error.HTTPError:
                pass  # any HTTP answer means it is serving
            except OSError:
                time.sleep(0.05)
                continue
            self._warm_up()
            if self.profile is not None:
                self.profiler = profiler(self.pid, self.profile)
            return
        self.stop()
        raise RuntimeError(f"{self.name} did not answer within {START_TIMEOUT:.0f} s")

    def _warm_up(self) -> None:
        """A few signed read calls, so that lazy imports and caches (moto loads its EC2
        backend on the first call) are not counted in the first row."""
        signer = Signer(ACCESS_KEY_ID, SECRET_ACCESS_KEY, REGION)
        host = f"{HOST}:{self.port}"
        for action, params in WARM_UP:
            body = form(action, params)
            request = urllib.request.Request(
                self.url + "/", data=body, headers=signer.headers(host, body), method="POST"
            )
            with contextlib.suppress(urllib.error.HTTPError):
                urllib.request.urlopen(request, timeout=60).read()

    def stop(self) -> None:
        if self.profiler is not None:
            self.profiler.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            try:
                self.profiler.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.profiler.kill()
                self.profiler.wait()
            self.profiler = None
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def profiler(pid: int, output: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling ``pid``'s Python thread holding the GIL (its Python CPU), collapsed
    stacks (one line per stack, a count at the end) into ``output``."""
    executable = Path(sys.executable).with_name("py-spy")
    if not executable.exists():
        found = shutil.which("py-spy")
        if found is None:
            raise RuntimeError("--profile needs py-spy (pip install py-spy)")
        executable = Path(found)
    argv = [str(executable), "record", "--pid", str(pid), "--gil", "--nonblocking"]
    argv += ["--rate", "200", "--format", "raw", "--output", str(output)]
    log = output.with_suffix(".log").open("ab")
    try:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    finally:
        log.close()


def ebsemu(
    work_dir: Path,
    tag: str,
    *,
    max_volumes: int,
    log_level: str,
    profile_dir: Path | None = None,
) -> Server:
    data_dir = work_dir / f"ebsemu-{tag}"
    config = work_dir / f"ebsemu-{tag}.ini"
    config.write_text(
        EBSEMU_CONFIG.format(
            log_level=log_level, max_volumes=max_volumes, max_snapshots=max(100_000, max_volumes)
        )
    )
    port = free_port()
    argv = [sys.executable, "-m", "ebsemu", "serve", "--config", str(config)]
    argv += ["--host", HOST, "--port", str(port), "--data-dir", str(data_dir)]
    profile = profile_dir / f"ebsemu-{tag}.txt" if profile_dir else None
    log = work_dir / f"ebsemu-{tag}.log"
    return Server("ebsemu", argv, port, log, data_dir=data_dir, profile=profile)


def moto(work_dir: Path, tag: str) -> Server:
    executable = Path(sys.executable).with_name("moto_server")
    if not executable.exists():
        found = shutil.which("moto_server")
        if found is None:
            raise RuntimeError("moto_server is not installed (pip install 'moto[server]')")
        executable = Path(found)
    port = free_port()
    argv = [str(executable), "-H", HOST, "-p", str(port)]
    return Server("moto", argv, port, work_dir / f"moto-{tag}.log")


@contextlib.contextmanager
def running(servers: list[Server]) -> Iterator[list[Server]]:
    """Start every server (in order), stop them all when the block ends.

    Their data directories stay until the run ends and its work directory is removed: freeing
    a row's thousands of files just before the next row would make that row pay for it. On
    ext4 without a journal a new file's inode is looked for past every inode freed in the last
    60 s (300 s more while its inode table block is still to be written back): right after
    3,000 volumes were removed, CreateVolume took 2.5 times the system CPU a call (RESULTS.md).
    """
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


def pair(
    work_dir: Path,
    tag: str,
    *,
    moto_too: bool,
    max_volumes: int,
    log_level: str,
    profile_dir: Path | None = None,
) -> list[Server]:
    """A fresh ebsemu (and moto_server, unless ``moto_too`` is false) for one section."""
    servers = [
        ebsemu(work_dir, tag, max_volumes=max_volumes, log_level=log_level, profile_dir=profile_dir)
    ]
    if moto_too:
        servers.append(moto(work_dir, tag))
    return servers
