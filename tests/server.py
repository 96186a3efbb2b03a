"""Run a real ebsemu server as a subprocess for tests that talk HTTP to it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config as BotoConfig

REGION = "us-east-1"
ZONE = "us-east-1a"
# The default account's key pair, given to every test server through its environment.
ACCESS_KEY_ID = "AKIDEXAMPLE"
SECRET_ACCESS_KEY = "secret"
DEFAULT_ACCOUNT = "000000000000"
# The store every test server runs on: sqlite (default) or postgresql (a fresh database each).
TEST_STORE = os.environ.get("EBSEMU_TEST_STORE", "sqlite")
# The storage backend of every test server whose configuration names none: file (default) or
# rbd (an image prefix of its own on one Ceph cluster shared by the test process).
TEST_BACKEND = os.environ.get("EBSEMU_TEST_BACKEND", "file")
BACKENDS = ("file", "rbd")
_STORAGE_SECTION = re.compile(r"^\[storage(\s[^]]*)?\]", re.M)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Servers started and not yet stopped: a failing test's report shows their logs.
RUNNING: set[ServerProcess] = set()


class ServerProcess:
    """An `ebsemu serve` subprocess on a free loopback port with its own data directory.

    The default account's key pair comes from the environment (AKIDEXAMPLE / secret, as the
    clients here sign); ``env`` adds to or overrides the environment (a None value removes
    the variable), ``args`` are extra `serve` flags. ``store_dsn`` runs it on that PostgreSQL
    database; without it, EBSEMU_TEST_STORE=postgresql gives it a fresh one (an empty
    ``store_dsn`` keeps it on SQLite whatever that variable says). ``backend`` (file or rbd)
    is its storage backend; without it, a configuration with a [storage…] section keeps its
    own and any other gets EBSEMU_TEST_BACKEND's.
    """

    def __init__(
        self,
        data_dir: Path,
        config_text: str = "",
        *,
        env: dict[str, str | None] | None = None,
        args: tuple[str, ...] = (),
        tls: bool = False,
        store_dsn: str | None = None,
        job_lease_seconds: float = 30.0,
        backend: str | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.config_path = data_dir.parent / f"{data_dir.name}.ini"
        if store_dsn is None and TEST_STORE == "postgresql":
            from tests.pg_fixtures import shared_database

            store_dsn = shared_database()
        self.store_dsn = store_dsn or None
        # The [store] section, for a test that rewrites the configuration to keep.
        self.store_config = store_section(store_dsn, job_lease_seconds) if store_dsn else ""
        if backend is None:
            backend = "file" if _STORAGE_SECTION.search(config_text) else TEST_BACKEND
        self.backend = backend
        # The [storage] section the backend adds, for a test that rewrites the configuration.
        self.storage_config = storage_section(backend)
        self.config_path.write_text(config_text + self.storage_config + self.store_config)
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self.stdout_path = data_dir.parent / f"{data_dir.name}.stdout"
        self.env = {
            "EBSEMU_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "EBSEMU_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            **(env or {}),
        }
        self.args = args
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_timeout = 60.0  # seconds: a loaded CI machine can take a while to start one

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def process_env(self) -> dict[str, str]:
        env = dict(os.environ)
        for name, value in self.env.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return env

    def start(self) -> None:
        argv = [
            sys.executable,
            "-m",
            "ebsemu",
            "serve",
            "--config",
            str(self.config_path),
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            *self.args,
        ]
        with self.log_path.open("ab") as log, self.stdout_path.open("ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=log, env=self.process_env())
        RUNNING.add(self)
        deadline = time.monotonic() + self.start_timeout
        context = ssl._create_unverified_context() if self.tls else None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(
                    f"{self.url}/?Action=DescribeRegions", timeout=1, context=context
                )
                return
            except urllib.error.HTTPError:
                return  # any HTTP answer means it is serving
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server did not start in {self.start_timeout:.0f} s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        RUNNING.discard(self)
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log_tail(self, lines: int = 80) -> str:
        """The last ``lines`` lines of the server's log (what a failing test shows)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def restart(self) -> None:
        self.stop()
        self.start()

    def client(
        self,
        service: str = "ec2",
        *,
        key: tuple[str, str] = (ACCESS_KEY_ID, SECRET_ACCESS_KEY),
        **kwargs: Any,
    ) -> Any:
        """A boto3 client signing with ``key`` (access key id, secret)."""
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=kwargs.pop("region_name", REGION),
            aws_access_key_id=key[0],
            aws_secret_access_key=key[1],
            config=kwargs.pop("config", BotoConfig(retries={"max_attempts": 2})),
            **kwargs,
        )

    def resource(self) -> Any:
        return boto3.resource(
            "ec2",
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
        )

    def cli_env(self, key: tuple[str, str] = (ACCESS_KEY_ID, SECRET_ACCESS_KEY)) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            AWS_ACCESS_KEY_ID=key[0],
            AWS_SECRET_ACCESS_KEY=key[1],
            AWS_DEFAULT_REGION=REGION,
            AWS_PAGER="",
        )
        return env

    def sql(self, statement: str, *params: Any) -> None:
        """Run one statement (SQLite's dialect, `?` placeholders) on the server's database,
        whichever store it runs on (to stage a crash while it is stopped)."""
        self._on_database(statement, params)

    def rows(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        """The rows of one query (SQLite's dialect) on the server's database, whichever store
        it runs on (to check what the server recorded)."""
        return self._on_database(query, params)

    def _on_database(self, statement: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        if self.store_dsn is None:
            path = self.data_dir / "ebsemu.sqlite3"
            with contextlib.closing(sqlite3.connect(path)) as db, db:
                return [tuple(row) for row in db.execute(statement, params)]
        import asyncio

        import asyncpg

        from ebsemu.store.pg_dialect import bind, translate

        async def run(dsn: str) -> list[tuple[Any, ...]]:
            connection = await asyncpg.connect(dsn)
            try:
                translation = translate(statement)
                found = await connection.fetch(translation.sql, *bind(translation, params))
                return [tuple(row) for row in found]
            finally:
                await connection.close()

        return asyncio.run(run(self.store_dsn))

    def ebsemu(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run another `ebsemu` command (e.g. `accounts create`) on this server's data."""
        argv = [
            sys.executable,
            "-m",
            "ebsemu",
            *args,
            "--config",
            str(self.config_path),
            "--data-dir",
            str(self.data_dir),
        ]
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=60, env=self.process_env()
        )

    def new_account(self, account_id: str | None = None) -> tuple[str, tuple[str, str]]:
        """A new account (through `ebsemu accounts create`): its id and key pair."""
        extra = ("--account-id", account_id) if account_id else ()
        done = self.ebsemu("accounts", "create", *extra, "--json")
        if done.returncode != 0:
            raise RuntimeError(f"accounts create failed: {done.stderr}")
        created = json.loads(done.stdout)
        return created["AccountId"], (created["AccessKeyId"], created["SecretAccessKey"])


def storage_section(backend: str) -> str:
    """The [storage] section of a test server on ``backend`` ("" for the default, file)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown test backend {backend!r} (one of {', '.join(BACKENDS)})")
    if backend == "file":
        return ""
    from tests.ceph_fixtures import rbd_storage_section

    return rbd_storage_section()


def store_section(dsn: str, lease_seconds: float = 30.0) -> str:
    return f"\n[store]\nbackend = postgresql\ndsn = {dsn}\njob_lease_seconds = {lease_seconds}\n"


TEST_CONFIG = """\
[server]
deleted_visible_seconds = 2
log_level = INFO

[limits]
requests_per_second = 5000
request_burst = 10000
"""
