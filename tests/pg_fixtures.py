"""A private PostgreSQL server for the store tests: its own cluster directory, port and socket
directory, trust authentication on loopback only, run as the ``postgres`` system user (the
server refuses to run as root). Stopped with ``pg_ctl stop -m fast``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.tgt_fixtures import free_port

PG_BIN = max(Path("/usr/lib/postgresql").glob("*/bin"), default=Path("/nonexistent"))
HAVE_POSTGRES = (PG_BIN / "initdb").exists() and shutil.which("runuser") is not None
NEEDS_POSTGRES = "needs a PostgreSQL server: apt-get install postgresql"
USER = "postgres"
TIMEOUT = 60.0


@dataclass
class PostgresServer:
    root: Path
    port: int

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def _as_postgres(self, *argv: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ["runuser", "-u", USER, "--", *argv],
            capture_output=True,
            timeout=TIMEOUT,
            check=True,
            stdin=subprocess.DEVNULL,
        )

    def psql(self, sql: str, database: str = "postgres") -> str:
        argv = [str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER,
                "-d", database, "-At", "-c", sql]  # fmt: skip
        return self._as_postgres(*argv).stdout.decode()

    def create_database(self, name: str) -> str:
        self.psql(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def start(self) -> None:
        account = pwd.getpwnam(USER)
        self.root.mkdir(parents=True, exist_ok=True)
        os.chown(self.root, account.pw_uid, account.pw_gid)
        for parent in self.root.parents:  # the postgres user must reach its directory
            if parent == Path("/"):
                break
            os.chmod(parent, os.stat(parent).st_mode | 0o011)
        self._as_postgres(str(PG_BIN / "initdb"), "-D", str(self.data_dir), "-U", USER,
                          "--auth=trust", "--no-sync")  # fmt: skip
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=on"
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-o", options,
                          "-l", str(self.root / "server.log"), "-w", "start")  # fmt: skip

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast",
                              "-w", "stop")  # fmt: skip


@contextlib.contextmanager
def running_postgres(root: Path) -> Iterator[PostgresServer]:
    if not HAVE_POSTGRES:
        pytest.skip(NEEDS_POSTGRES)
    server = PostgresServer(root, free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    # Not under pytest's temporary directory: the postgres user must reach its data, and
    # every pytest session started on the machine makes /tmp/pytest-of-<user> private again.
    root = Path(tempfile.mkdtemp(prefix="ebsemu-pg-"))
    try:
        with running_postgres(root) as server:
            yield server
    finally:
        shutil.rmtree(root, ignore_errors=True)


_shared: PostgresServer | None = None


def shared_database() -> str:
    """The DSN of a fresh database on a server shared by the whole test process (started at
    first use, stopped at exit): for servers run with EBSEMU_TEST_STORE=postgresql."""
    global _shared
    if not HAVE_POSTGRES:
        raise RuntimeError(NEEDS_POSTGRES)
    if _shared is None:
        root = Path(tempfile.mkdtemp(prefix="ebsemu-pg-"))
        server = PostgresServer(root, free_port())
        server.start()
        atexit.register(shutil.rmtree, root, True)
        atexit.register(server.stop)
        _shared = server
    return _shared.create_database(f"api_{uuid.uuid4().hex[:12]}")
