"""The volume and snapshot quotas ([limits] max_volumes, max_snapshots) through boto3 against a
real server with two regions: as EC2's Service Quotas they count an account's resources in one
region, so a full region refuses the next one (VolumeLimitExceeded, SnapshotLimitExceeded, the
direct API's ServiceQuotaExceededException) while the other region still makes it, and a
deleted volume leaves its region's count."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.api_support import FAST, aws_error, new_snapshot, new_volume
from tests.server import REGION, TEST_CONFIG, ZONE, ServerProcess

OTHER_REGION = "eu-west-1"
OTHER_ZONE = "eu-west-1a"
LIMIT = 2
CONFIG = (
    TEST_CONFIG
    + f"""max_volumes = {LIMIT}
max_snapshots = {LIMIT}

[region {REGION}]
zones = {ZONE}

[region {OTHER_REGION}]
zones = {OTHER_ZONE}
"""
)


@dataclass
class Account:
    """A fresh account (nothing counted yet) and its clients in each region."""

    here: Any  # EC2 in REGION
    there: Any  # EC2 in OTHER_REGION
    ebs_here: Any  # the EBS direct API in REGION
    ebs_there: Any  # the EBS direct API in OTHER_REGION


@pytest.fixture(scope="module")
def quota_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("quotas") / "data", CONFIG)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def account(quota_server: ServerProcess) -> Account:
    _, key = quota_server.new_account()
    return Account(
        quota_server.client(key=key),
        quota_server.client(key=key, region_name=OTHER_REGION),
        quota_server.client("ebs", key=key),
        quota_server.client("ebs", key=key, region_name=OTHER_REGION),
    )


def test_a_region_at_the_volume_quota_refuses_a_volume_the_other_region_makes(
    account: Account,
) -> None:
    for _ in range(LIMIT):
        new_volume(account.here)
    code, message, status = aws_error(account.here.create_volume, AvailabilityZone=ZONE, Size=1)
    assert (code, status) == ("VolumeLimitExceeded", 400)
    assert message == f"You have reached the maximum of {LIMIT} volumes in {REGION}."
    assert new_volume(account.there, AvailabilityZone=OTHER_ZONE).startswith("vol-")
    assert new_volume(account.there, AvailabilityZone=OTHER_ZONE).startswith("vol-")
    code, message, _ = aws_error(account.there.create_volume, AvailabilityZone=OTHER_ZONE, Size=1)
    assert code == "VolumeLimitExceeded"
    assert message == f"You have reached the maximum of {LIMIT} volumes in {OTHER_REGION}."


def test_a_deleted_volume_leaves_its_regions_count(account: Account) -> None:
    full = [new_volume(account.here) for _ in range(LIMIT)]
    account.here.delete_volume(VolumeId=full[0])
    account.here.get_waiter("volume_deleted").wait(VolumeIds=[full[0]], WaiterConfig=FAST)
    assert new_volume(account.here).startswith("vol-")


def test_a_region_at_the_snapshot_quota_refuses_a_snapshot_the_other_region_makes(
    account: Account,
) -> None:
    volume_here = new_volume(account.here)
    volume_there = new_volume(account.there, AvailabilityZone=OTHER_ZONE)
    sources = [new_snapshot(account.here, volume_here) for _ in range(LIMIT)]
    code, message, status = aws_error(account.here.create_snapshot, VolumeId=volume_here)
    assert (code, status) == ("SnapshotLimitExceeded", 400)
    assert message == f"You have reached the maximum of {LIMIT} snapshots in {REGION}."
    assert new_snapshot(account.there, volume_there).startswith("snap-")
    # CopySnapshot makes the copy in the region it is asked in: counted there, not at the source.
    copy = account.there.copy_snapshot(SourceRegion=REGION, SourceSnapshotId=sources[0])
    assert copy["SnapshotId"].startswith("snap-")
    code, message, _ = aws_error(
        account.there.copy_snapshot, SourceRegion=REGION, SourceSnapshotId=sources[1]
    )
    assert code == "SnapshotLimitExceeded"
    assert message == f"You have reached the maximum of {LIMIT} snapshots in {OTHER_REGION}."


def test_a_direct_snapshot_is_refused_only_in_a_region_at_the_snapshot_quota(
    account: Account,
) -> None:
    volume_id = new_volume(account.here)
    for _ in range(LIMIT):
        new_snapshot(account.here, volume_id)
    code, message, status = aws_error(account.ebs_here.start_snapshot, VolumeSize=1)
    assert (code, status) == ("ServiceQuotaExceededException", 402)
    assert message == f"You have reached the maximum of {LIMIT} snapshots in {REGION}."
    started = account.ebs_there.start_snapshot(VolumeSize=1)
    assert started["SnapshotId"].startswith("snap-")


def _at_once(call: Callable[[], Any], times: int) -> list[str]:
    """``call`` made ``times`` times concurrently: each one's error code, or "ok"."""

    def one(_: int) -> str:
        try:
            call()
        except ClientError as exc:
            return str(exc.response["Error"]["Code"])
        return "ok"

    with ThreadPoolExecutor(times) as pool:
        return list(pool.map(one, range(times)))


def test_concurrent_requests_never_take_a_region_past_its_quotas(account: Account) -> None:
    volumes = _at_once(lambda: account.here.create_volume(Size=1, AvailabilityZone=ZONE), 6)
    assert sorted(volumes) == ["VolumeLimitExceeded"] * 4 + ["ok"] * LIMIT
    assert len(account.here.describe_volumes()["Volumes"]) == LIMIT
    snapshots = _at_once(lambda: account.ebs_here.start_snapshot(VolumeSize=1), 6)
    assert sorted(snapshots) == ["ServiceQuotaExceededException"] * 4 + ["ok"] * LIMIT
    assert len(account.here.describe_snapshots(OwnerIds=["self"])["Snapshots"]) == LIMIT
