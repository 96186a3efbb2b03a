"""A ClientToken belongs to an account and a region, as in EC2: the same token in two regions
makes a resource in each, and a retry in either region finds its own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api_support import aws_error, unique
from tests.server import REGION, TEST_CONFIG, ZONE, ServerProcess

OTHER_REGION = "eu-west-1"
OTHER_ZONE = "eu-west-1a"
CONFIG = (
    TEST_CONFIG
    + f"""
[region {REGION}]
zones = {ZONE}

[region {OTHER_REGION}]
zones = {OTHER_ZONE}
"""
)


@pytest.fixture(scope="module")
def regions_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("regions") / "data", CONFIG)
    proc.start()
    yield proc
    proc.stop()


def test_one_client_token_makes_a_volume_in_each_region(regions_server: ServerProcess) -> None:
    here = regions_server.client()
    there = regions_server.client(region_name=OTHER_REGION)
    token = unique()
    first = here.create_volume(AvailabilityZone=ZONE, Size=1, ClientToken=token)
    second = there.create_volume(AvailabilityZone=OTHER_ZONE, Size=1, ClientToken=token)
    assert first["VolumeId"] != second["VolumeId"]
    assert (first["AvailabilityZone"], second["AvailabilityZone"]) == (ZONE, OTHER_ZONE)
    again = there.create_volume(AvailabilityZone=OTHER_ZONE, Size=1, ClientToken=token)
    assert again["VolumeId"] == second["VolumeId"]
    again = here.create_volume(AvailabilityZone=ZONE, Size=1, ClientToken=token)
    assert again["VolumeId"] == first["VolumeId"]
    code, _, _ = aws_error(
        there.create_volume, AvailabilityZone=OTHER_ZONE, Size=2, ClientToken=token
    )
    assert code == "IdempotentParameterMismatch"


def test_one_client_token_starts_a_direct_snapshot_in_each_region(
    regions_server: ServerProcess,
) -> None:
    here = regions_server.client("ebs")
    there = regions_server.client("ebs", region_name=OTHER_REGION)
    token = unique()
    first = here.start_snapshot(VolumeSize=1, ClientToken=token)["SnapshotId"]
    second = there.start_snapshot(VolumeSize=1, ClientToken=token)["SnapshotId"]
    assert first != second
    assert there.start_snapshot(VolumeSize=1, ClientToken=token)["SnapshotId"] == second
    assert here.start_snapshot(VolumeSize=1, ClientToken=token)["SnapshotId"] == first


def test_a_token_recorded_before_regions_scoped_it_is_kept_in_its_region(
    tmp_path: Path,
) -> None:
    """Migration 14 moves the tokens of existing volumes into their regions: a retry of a
    request made before the upgrade still finds its volume."""
    proc = ServerProcess(tmp_path / "data", CONFIG, store_dsn="")  # SQLite: its user_version
    proc.start()
    try:
        token = unique()
        ec2 = proc.client()
        volume_id = ec2.create_volume(AvailabilityZone=ZONE, Size=1, ClientToken=token)["VolumeId"]
        proc.stop()
        # The volume as the schema before 14 recorded it, in the tables of that schema.
        proc.sql("UPDATE volumes SET client_token = ? WHERE id = ?", token, volume_id)
        proc.sql("DROP INDEX volumes_source")  # added by 19
        proc.sql("ALTER TABLE volumes DROP COLUMN source_volume_id")  # added by 16
        proc.sql("PRAGMA user_version = 13")
        proc.start()
        again = proc.client().create_volume(AvailabilityZone=ZONE, Size=1, ClientToken=token)
        assert again["VolumeId"] == volume_id
    finally:
        proc.stop()
