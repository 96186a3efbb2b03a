"""`ebsemu reconcile` on a PostgreSQL store: the report (read-only) and a real run, with the
server stopped, find nothing to settle in a consistent deployment and change nothing."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from tests.api_support import new_snapshot, new_volume
from tests.pg_fixtures import PostgresServer
from tests.server import TEST_CONFIG, ServerProcess


def test_reconcile_reports_and_runs_on_a_postgresql_store(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    dsn = postgres_server.create_database(f"reconcile_{uuid.uuid4().hex[:12]}")
    server = ServerProcess(tmp_path / "data", TEST_CONFIG, store_dsn=dsn)
    server.start()
    try:
        ec2 = server.client()
        volume_id = new_volume(ec2)
        snapshot_id = new_snapshot(ec2, volume_id)
    finally:
        server.stop()

    for args in (("--dry-run", "--json"), ("--json",)):
        done = server.ebsemu("reconcile", *args)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["Findings"] == [], done.stdout

    server.start()
    try:
        ec2 = server.client()
        (volume,) = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"]
        (snapshot,) = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
        assert (volume["State"], snapshot["State"]) == ("available", "completed")
    finally:
        server.stop()
