"""`ebsemu migrate`: an SQLite deployment copied into an empty PostgreSQL database serves the
same volumes, snapshots, tags, accounts and settings from it; a second copy is refused; the
DSN's password never reaches the server's log."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from tests.api_support import new_snapshot, new_volume, tag_spec, unique
from tests.pg_fixtures import PostgresServer
from tests.server import TEST_CONFIG, ServerProcess

# The test server trusts loopback connections: the password is not checked, only carried.
PASSWORD = "pg-pass-4f2b9c"


def _everything(ec2: Any) -> tuple[Any, ...]:
    volumes = ec2.describe_volumes()["Volumes"]
    snapshots = ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]
    tags = ec2.describe_tags()["Tags"]
    return (
        sorted(volumes, key=lambda v: v["VolumeId"]),
        sorted(snapshots, key=lambda s: s["SnapshotId"]),
        sorted(tags, key=lambda t: (t["ResourceId"], t["Key"])),
        ec2.get_ebs_encryption_by_default()["EbsEncryptionByDefault"],
    )


def test_migrate_copies_an_sqlite_deployment_that_then_serves_the_same_on_postgresql(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    data = tmp_path / "data"
    sqlite_server = ServerProcess(data, TEST_CONFIG, store_dsn="")
    sqlite_server.start()
    try:
        ec2 = sqlite_server.client()
        mark = unique()
        volume_ids = [
            new_volume(ec2, TagSpecifications=tag_spec("volume", mark=mark, n=str(n)))
            for n in range(3)
        ]
        snapshot_id = new_snapshot(
            ec2, volume_ids[0], Description="before", TagSpecifications=tag_spec("snapshot", k="v")
        )
        new_volume(ec2, SnapshotId=snapshot_id)
        ec2.enable_ebs_encryption_by_default()
        before = _everything(ec2)
        sqlite_server.new_account("111111111111")
    finally:
        sqlite_server.stop()

    dsn = postgres_server.create_database(f"migrate_{uuid.uuid4().hex[:12]}")
    argv = [sys.executable, "-m", "ebsemu", "migrate", "--data-dir", str(data), "--to", dsn]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "volumes: 4 rows" in done.stdout and "snapshots: 1 rows" in done.stdout
    assert "ebs_encryption_settings: 1 rows" in done.stdout
    again = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "not empty" in again.stderr

    with_password = dsn.replace("postgres@", f"postgres:{PASSWORD}@", 1)
    pg_server = ServerProcess(data, TEST_CONFIG, store_dsn=with_password)  # the same data dir
    pg_server.start()
    try:
        ec2 = pg_server.client()
        assert _everything(ec2) == before
        ec2.disable_ebs_encryption_by_default()  # to restore the unencrypted snapshot
        restored = new_volume(ec2, SnapshotId=snapshot_id)  # the sequences continue
        assert restored not in volume_ids
        assert pg_server.ebsemu("accounts", "list", "--json").stdout.count("111111111111") == 1
    finally:
        pg_server.stop()
    log = pg_server.log_path.read_text() + pg_server.stdout_path.read_text()
    assert "store: PostgreSQL at postgresql://postgres:***@127.0.0.1:" in log
    assert PASSWORD not in log


def test_a_database_postgresql_refuses_is_a_clear_error_of_the_cli_not_a_traceback(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    missing = postgres_server.dsn(f"missing_{uuid.uuid4().hex[:12]}")  # the server says so
    with_password = missing.replace("postgres@", f"postgres:{PASSWORD}@", 1)
    config = tmp_path / "store.ini"
    config.write_text(f"[store]\nbackend = postgresql\ndsn = {with_password}\n")
    ebsemu = [sys.executable, "-m", "ebsemu"]
    where = ["--config", str(config), "--data-dir", str(tmp_path / "data")]

    listed = subprocess.run([*ebsemu, "accounts", "list", *where], capture_output=True, text=True)
    assert listed.returncode == 2
    assert "ebsemu accounts: cannot use the database postgresql://postgres:***@" in listed.stderr
    assert "does not exist" in listed.stderr and "Traceback" not in listed.stderr

    sqlite = [*ebsemu, "accounts", "list", "--init", "--data-dir", str(tmp_path / "data")]
    assert subprocess.run(sqlite, capture_output=True).returncode == 0  # its database made
    migrated = subprocess.run(
        [*ebsemu, "migrate", *where, "--to", with_password], capture_output=True, text=True
    )
    assert migrated.returncode == 1
    assert "ebsemu migrate: cannot use the databases: " in migrated.stderr
    assert "does not exist" in migrated.stderr and "Traceback" not in migrated.stderr
    assert PASSWORD not in listed.stderr + migrated.stderr


def test_migrate_refuses_while_a_server_holds_the_data_directory(tmp_path: Path) -> None:
    """Rows a running server writes during the copy would be missing from PostgreSQL."""
    proc = ServerProcess(tmp_path / "data", TEST_CONFIG, store_dsn="")
    proc.start()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "ebsemu", "migrate", "--data-dir", str(proc.data_dir),
             "--to", "postgresql://nobody:hidden@127.0.0.1:1/none"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        proc.stop()
    assert done.returncode == 3, done.stderr
    assert "a server is running on" in done.stderr and "Traceback" not in done.stderr
