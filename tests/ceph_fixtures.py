"""A throwaway single-node Ceph cluster for the RBD tests: one monitor and one memstore OSD,
authentication off, everything (config, keyring, data, sockets, logs) under one directory.

It starts in about 10 s and holds its data in memory (1 GiB of memstore), so a test module
shares one cluster (``ceph_cluster`` fixture) and each test uses image names of its own.
Test servers on the rbd backend (EBSEMU_TEST_BACKEND=rbd, or an API module's rbd combination)
share one cluster per test process (``rbd_storage_section``), each with an image prefix of its
own.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.tgt_fixtures import free_port

TOOLS = ("ceph-mon", "ceph-osd", "ceph", "ceph-authtool", "monmaptool", "rbd")
HAVE_CEPH = all(shutil.which(tool) for tool in TOOLS)
NEEDS_CEPH = "needs a single-node Ceph cluster: apt-get install ceph-mon ceph-osd ceph-common"
POOL = "rbd"
COMMAND_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0

CONF = """[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{port}
mon initial members = a
auth cluster required = none
auth service required = none
auth client required = none
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
osd crush chooseleaf type = 0
osd objectstore = memstore
memstore device bytes = {memstore_bytes}
osd max object name len = 460
osd max object namespace len = 64
run dir = {root}/run
log file = {root}/log/$name.log
pid file = {root}/run/$name.pid
keyring = {root}/keyring
admin socket = {root}/run/$name.asok
mon data = {root}/mon/$cluster-$id
osd data = {root}/osd/$cluster-$id
"""


@dataclass
class CephCluster:
    root: Path
    port: int
    pool: str = POOL

    @property
    def conf(self) -> Path:
        return self.root / "ceph.conf"

    def env(self) -> dict[str, str]:
        return {**os.environ, "CEPH_CONF": str(self.conf)}

    def run(self, *argv: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            list(argv),
            env=self.env(),
            input=input,
            capture_output=True,
            timeout=COMMAND_TIMEOUT,
            check=True,
        )

    def rbd(self, *args: str) -> str:
        return self.run("rbd", "--conf", str(self.conf), *args).stdout.decode()

    def images(self) -> list[str]:
        return self.rbd("ls", self.pool).split()

    def snapshots(self, image: str) -> dict[str, dict[str, Any]]:
        """The image's RBD snapshots by name, in the order rbd lists them."""
        listed = json.loads(self.rbd("snap", "ls", "--format", "json", f"{self.pool}/{image}"))
        return {snap["name"]: snap for snap in listed}

    def start(self, memstore_bytes: int = 1 << 30) -> None:
        for sub in ("run", "log", "mon", "osd"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        fsid = str(uuid.uuid4())
        self.conf.write_text(
            CONF.format(fsid=fsid, port=self.port, root=self.root, memstore_bytes=memstore_bytes)
        )
        keyring, monmap = str(self.root / "keyring"), str(self.root / "monmap")
        self.run("ceph-authtool", "--create-keyring", keyring, "--gen-key", "-n", "mon.",
                 "--cap", "mon", "allow *")  # fmt: skip
        caps = ["--cap", "mon", "allow *", "--cap", "osd", "allow *", "--cap", "mgr", "allow *"]
        self.run("ceph-authtool", keyring, "--gen-key", "-n", "client.admin", *caps)
        self.run("monmaptool", "--create", "--addv", "a", f"[v2:127.0.0.1:{self.port}]",
                 "--fsid", fsid, monmap)  # fmt: skip
        self.run("ceph-mon", "--mkfs", "-i", "a", "--monmap", monmap, "--keyring", keyring)
        self.run("ceph-mon", "-i", "a")
        osd_uuid = str(uuid.uuid4())
        osd_id = self.run("ceph", "osd", "new", osd_uuid).stdout.decode().strip()
        (self.root / "osd" / f"ceph-{osd_id}").mkdir(parents=True, exist_ok=True)
        self.run("ceph-osd", "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid)
        self.run("ceph-osd", "-i", osd_id)
        self.run("ceph", "osd", "pool", "create", self.pool, "8", "8")
        self.run("rbd", "pool", "init", self.pool)

    def stop(self) -> None:
        """SIGTERM every daemon of the cluster (by its pid file) and wait for it to go."""
        pids = []
        for pid_file in (self.root / "run").glob("*.pid"):
            with contextlib.suppress(ValueError, OSError):
                pid = int(pid_file.read_text().strip())
                os.kill(pid, signal.SIGTERM)
                pids.append(pid)
        deadline = time.monotonic() + STOP_TIMEOUT
        for pid in pids:
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return False


@contextlib.contextmanager
def running_ceph(root: Path) -> Iterator[CephCluster]:
    if not HAVE_CEPH:
        pytest.skip(NEEDS_CEPH)
    cluster = CephCluster(root, free_port())
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def ceph_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CephCluster]:
    with running_ceph(tmp_path_factory.mktemp("ceph")) as cluster:
        yield cluster


_shared: CephCluster | None = None


def shared_cluster() -> CephCluster:
    """A cluster shared by the whole test process: started at first use, stopped at exit."""
    global _shared
    if not HAVE_CEPH:
        raise RuntimeError(NEEDS_CEPH)
    if _shared is None:
        root = Path(tempfile.mkdtemp(prefix="ebsemu-ceph-"))
        cluster = CephCluster(root, free_port())
        atexit.register(shutil.rmtree, root, True)
        atexit.register(cluster.stop)
        cluster.start()
        _shared = cluster
    return _shared


def rbd_storage_section() -> str:
    """A [storage] section on the shared cluster's pool with an image prefix of its own, so a
    server lists, reconciles and deletes only its own images."""
    cluster = shared_cluster()
    prefix = f"t{uuid.uuid4().hex[:10]}-"
    return (
        f"\n[storage]\nbackend = rbd\npool = {cluster.pool}\nconf = {cluster.conf}\n"
        f"image_prefix = {prefix}\n"
    )
