"""`ebsemu serve` refuses what it cannot run with one line and a non-zero exit, never a
traceback; at DEBUG no secret reaches its log."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.server import ServerProcess


def serve(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ebsemu", "serve", *args],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, **(env or {})}, cwd=tmp_path,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--port", "70000"), "port must be from 1 to 65535, not 70000"),
        (("--port", "0"), "port must be from 1 to 65535, not 0"),
        (("--log-level", "bogus"), "log_level must be one of DEBUG, INFO"),
    ],
)
def test_bad_flags_are_a_configuration_error(
    tmp_path: Path, args: tuple[str, ...], says: str
) -> None:
    done = serve(tmp_path, "--data-dir", str(tmp_path / "data"), *args)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("ebsemu: cannot read the configuration: ") and says in done.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was made


def test_a_bad_limit_in_the_configuration_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "c.ini"
    config.write_text("[limits]\nmax_volumes = -1\n")
    done = serve(tmp_path, "--config", str(config), "--data-dir", str(tmp_path / "data"))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "max_volumes" in done.stderr


def test_a_port_in_use_and_a_data_dir_that_is_a_file_are_one_line_each(tmp_path: Path) -> None:
    """A port in use is found before any start-up work: the database was made and migrated,
    a key generated and shown, and "serving" logged, before the port was found taken."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        done = serve(tmp_path, "--data-dir", str(tmp_path / "data"), "--port", port)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "cannot start" in done.stderr and "in use" in done.stderr
    assert f"127.0.0.1:{port}" in done.stderr
    assert not (tmp_path / "data").exists()  # no database, no credentials file
    assert "serving" not in done.stderr and done.stdout == ""
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    done = serve(tmp_path, "--data-dir", str(blocked), "--port", port)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "cannot start" in done.stderr and str(blocked) in done.stderr


def test_at_debug_the_database_drivers_do_not_log_the_access_keys_secret(
    tmp_path: Path,
) -> None:
    """aiosqlite logs each statement with its parameters at DEBUG: the INSERT of the
    environment's key pair carried its secret into the log."""
    secret = "debug-secret-4f9c"
    proc = ServerProcess(
        tmp_path / "data",
        env={"EBSEMU_ACCESS_KEY_ID": "AKIDDEBUGKEY0001", "EBSEMU_SECRET_ACCESS_KEY": secret},
        args=("--log-level", "DEBUG"),
        store_dsn="",
    )
    proc.start()
    try:
        proc.client(key=("AKIDDEBUGKEY0001", secret)).describe_volumes()
    finally:
        proc.stop()
    log = proc.log_path.read_text()
    assert " DEBUG " in log  # DEBUG lines were written
    assert secret not in log
