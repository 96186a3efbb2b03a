"""Volumes made under the one [storage] section live on the storage host named `default`:
moving to [storage NAME] sections keeps them reachable only through a [storage default]
section, and a configuration that drops their host is refused at start with a clear message
(rather than volumes whose bytes are out of reach)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from ebsemu.store.schema import MIGRATIONS
from ebsemu.store.sqlite import SqliteStore
from tests.api_support import FAST, new_volume
from tests.server import TEST_CONFIG, ServerProcess

ZONE = "[region us-east-1]\nzones = us-east-1a\n"


def _hosts(server: ServerProcess) -> dict[str, str]:
    return dict(server.rows("SELECT id, storage_host FROM volumes"))


def test_volumes_of_the_single_storage_section_stay_on_the_default_host(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    server = ServerProcess(tmp_path / "data", TEST_CONFIG + f"[storage]\npath = {storage}\n")
    server.start()
    try:
        old = new_volume(server.client())
    finally:
        server.stop()
    assert _hosts(server) == {old: "default"}

    server.config_path.write_text(
        TEST_CONFIG
        + ZONE
        + f"[storage new]\nzone = us-east-1a\npath = {tmp_path / 'new'}\n"
        + server.store_config
    )
    with pytest.raises(RuntimeError, match="server exited"):
        server.start()
    log = server.log_path.read_text()
    assert "storage hosts the configuration does not name (default: " + old in log

    server.config_path.write_text(
        TEST_CONFIG
        + ZONE
        + f"[storage default]\nzone = us-east-1a\npath = {storage}\n"
        + f"[storage new]\nzone = us-east-1a\npath = {tmp_path / 'new'}\n"
        + server.store_config
    )
    server.start()
    try:
        ec2 = server.client()
        assert ec2.describe_volumes(VolumeIds=[old])["Volumes"][0]["State"] == "available"
        ec2.delete_volume(VolumeId=old)
        ec2.get_waiter("volume_deleted").wait(VolumeIds=[old], WaiterConfig=FAST)
        assert not (storage / "volumes" / old).exists()
    finally:
        server.stop()


def test_the_migration_puts_existing_rows_on_the_default_host(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    with sqlite3.connect(path) as db:  # a database of the schema before storage hosts
        db.executescript(
            f"BEGIN; {MIGRATIONS[0]}; PRAGMA user_version = 1; COMMIT;"
            + "".join(
                f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;"
                for number, script in enumerate(MIGRATIONS[1:5], start=2)
            )
        )
        db.execute(
            "INSERT INTO volumes (id, owner_id, region, zone, size_gib, volume_type, state, "
            "create_time, updated_at) VALUES ('vol-0123456789abcdef0', '000000000000', "
            "'us-east-1', 'us-east-1a', 1, 'gp2', 'available', '2026-01-01T00:00:00.000Z', 0)"
        )

    async def reopened() -> str | None:
        store = SqliteStore(path)
        await store.open()
        try:
            volume = await store.get_volume("vol-0123456789abcdef0")
            return None if volume is None else volume.storage_host
        finally:
            await store.close()

    assert asyncio.run(reopened()) == "default"
