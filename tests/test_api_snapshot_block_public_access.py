"""Block public access for snapshots over HTTP (boto3 and the AWS CLI against a real server):
Enable/Disable/GetSnapshotBlockPublicAccessState per account and region, and their effect on
public sharing — block-new-sharing refuses new public grants, block-all-sharing also makes the
snapshots shared publicly before private to others (the grant is kept and counts again once
unblocked), and sharing with accounts goes on either way."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from tests.api_support import aws_error, new_snapshot, new_volume
from tests.server import REGION, TEST_CONFIG, ZONE, ServerProcess
from tests.test_api_cli import AWS

OTHER_REGION = "eu-west-1"
OTHER_ZONE = f"{OTHER_REGION}a"
CONFIG = (
    TEST_CONFIG
    + f"\n[region {REGION}]\nzones = {ZONE}\n[region {OTHER_REGION}]\nzones = {OTHER_ZONE}\n"
)
PERMISSION = "createVolumePermission"
BLOCK_ALL = "block-all-sharing"
BLOCK_NEW = "block-new-sharing"
UNBLOCKED = "unblocked"


@dataclass
class Account:
    id: str
    ec2: Any  # in REGION
    ec2_elsewhere: Any  # in OTHER_REGION


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("block-public-access") / "data", CONFIG)
    proc.start()
    yield proc
    proc.stop()


def new_account(server: ServerProcess) -> Account:
    """An account of its own: the setting is per account."""
    account_id, key = server.new_account()
    retries = BotoConfig(retries={"total_max_attempts": 1})
    return Account(
        account_id,
        server.client(key=key, config=retries),
        server.client(key=key, config=retries, region_name=OTHER_REGION),
    )


@pytest.fixture
def owner(server: ServerProcess) -> Account:
    return new_account(server)


@pytest.fixture
def other(server: ServerProcess) -> Account:
    return new_account(server)


def state(ec2: Any) -> str:
    answer = ec2.get_snapshot_block_public_access_state()
    assert answer["ManagedBy"] == "account"
    found: str = answer["State"]
    return found


def snapshot_of(ec2: Any, zone: str = ZONE) -> str:
    return new_snapshot(ec2, new_volume(ec2, AvailabilityZone=zone))


def share_publicly(ec2: Any, snapshot_id: str) -> None:
    ec2.modify_snapshot_attribute(
        SnapshotId=snapshot_id,
        Attribute=PERMISSION,
        CreateVolumePermission={"Add": [{"Group": "all"}]},
    )


def share_with(ec2: Any, snapshot_id: str, account_id: str) -> None:
    ec2.modify_snapshot_attribute(
        SnapshotId=snapshot_id, Attribute=PERMISSION, OperationType="add", UserIds=[account_id]
    )


def permissions(ec2: Any, snapshot_id: str) -> list[dict[str, str]]:
    answer = ec2.describe_snapshot_attribute(SnapshotId=snapshot_id, Attribute=PERMISSION)
    found: list[dict[str, str]] = answer["CreateVolumePermissions"]
    return found


def listed(account: Account, **params: Any) -> set[str]:
    return {s["SnapshotId"] for s in account.ec2.describe_snapshots(**params)["Snapshots"]}


def publicly_seen(other: Account, snapshot_id: str, owner: Account) -> bool:
    """Whether ``other`` sees the snapshot through every form of DescribeSnapshots that shows
    public snapshots; asserts the forms agree."""
    seen = {
        snapshot_id in listed(other),
        snapshot_id in listed(other, RestorableByUserIds=["all"]),
        snapshot_id in listed(other, OwnerIds=[owner.id]),
    }
    assert len(seen) == 1, "DescribeSnapshots' forms disagree"
    return seen.pop()


def restores(other: Account, snapshot_id: str) -> bool:
    """Whether ``other`` can create a volume from the snapshot (deleted at once if so); only
    InvalidSnapshot.NotFound counts as no."""
    try:
        volume_id = new_volume(other.ec2, SnapshotId=snapshot_id)
    except ClientError as exc:
        response = exc.response
        code = response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]
        assert code == ("InvalidSnapshot.NotFound", 400)
        return False
    other.ec2.delete_volume(VolumeId=volume_id)
    return True


# ---- the setting ----------------------------------------------------------------------------


def test_the_setting_is_unblocked_by_default_and_set_per_account_and_region(
    owner: Account, other: Account
) -> None:
    assert state(owner.ec2) == UNBLOCKED
    assert owner.ec2.enable_snapshot_block_public_access(State=BLOCK_NEW)["State"] == BLOCK_NEW
    assert state(owner.ec2) == BLOCK_NEW
    assert state(owner.ec2_elsewhere) == UNBLOCKED
    assert state(other.ec2) == UNBLOCKED
    assert owner.ec2.enable_snapshot_block_public_access(State=BLOCK_ALL)["State"] == BLOCK_ALL
    assert state(owner.ec2) == BLOCK_ALL
    assert owner.ec2_elsewhere.enable_snapshot_block_public_access(State=BLOCK_NEW)["State"] == (
        BLOCK_NEW
    )
    assert state(owner.ec2) == BLOCK_ALL
    assert owner.ec2.disable_snapshot_block_public_access()["State"] == UNBLOCKED
    assert state(owner.ec2) == UNBLOCKED
    assert state(owner.ec2_elsewhere) == BLOCK_NEW
    assert owner.ec2.disable_snapshot_block_public_access()["State"] == UNBLOCKED


def test_a_bad_state_is_refused_as_ec2_refuses_it_and_changes_nothing(owner: Account) -> None:
    enable = owner.ec2.enable_snapshot_block_public_access
    code, message, status = aws_error(enable, State="block-everything")
    assert (code, status) == ("InvalidParameterValue", 400)
    assert "block-everything" in message
    # EC2 refuses the model's third value so: DisableSnapshotBlockPublicAccess unblocks.
    code, message, status = aws_error(enable, State=UNBLOCKED)
    assert (code, status) == ("InvalidRequest", 400)
    assert message == (
        "Value 'unblocked' for State is not valid. "
        "Valid values are 'block-all-sharing' and 'block-new-sharing'."
    )
    assert state(owner.ec2) == UNBLOCKED


# ---- the effect on sharing ------------------------------------------------------------------


def test_block_new_sharing_refuses_new_public_grants_and_keeps_earlier_ones_public(
    owner: Account, other: Account
) -> None:
    earlier, later = snapshot_of(owner.ec2), snapshot_of(owner.ec2)
    share_publicly(owner.ec2, earlier)
    owner.ec2.enable_snapshot_block_public_access(State=BLOCK_NEW)

    code, message, status = aws_error(
        owner.ec2.modify_snapshot_attribute,
        SnapshotId=later,
        Attribute=PERMISSION,
        CreateVolumePermission={"Add": [{"Group": "all"}]},
    )
    assert (code, status) == ("OperationNotPermitted", 400)
    assert "block public access for snapshots" in message
    assert permissions(owner.ec2, later) == []
    assert not publicly_seen(other, later, owner)

    assert permissions(owner.ec2, earlier) == [{"Group": "all"}]
    assert publicly_seen(other, earlier, owner)
    assert restores(other, earlier)

    share_with(owner.ec2, later, other.id)  # sharing with an account is never blocked
    assert permissions(owner.ec2, later) == [{"UserId": other.id}]
    assert later in listed(other, RestorableByUserIds=["self"])
    assert restores(other, later)


def test_block_all_sharing_makes_earlier_public_snapshots_private_to_others_only(
    owner: Account, other: Account
) -> None:
    public, explicit = snapshot_of(owner.ec2), snapshot_of(owner.ec2)
    share_publicly(owner.ec2, public)
    share_with(owner.ec2, explicit, other.id)
    assert publicly_seen(other, public, owner)
    owner.ec2.enable_snapshot_block_public_access(State=BLOCK_ALL)

    assert not publicly_seen(other, public, owner)
    code, _, status = aws_error(other.ec2.describe_snapshots, SnapshotIds=[public])
    assert (code, status) == ("InvalidSnapshot.NotFound", 400)
    assert not restores(other, public)
    code, _, _ = aws_error(other.ec2.copy_snapshot, SourceRegion=REGION, SourceSnapshotId=public)
    assert code == "InvalidSnapshot.NotFound"
    # The owner keeps the snapshot and still reads the public grant in its attribute.
    assert public in listed(owner, OwnerIds=["self"])
    assert permissions(owner.ec2, public) == [{"Group": "all"}]
    # Sharing with an account goes on, before and after the setting.
    assert explicit in listed(other, OwnerIds=[owner.id])
    assert restores(other, explicit)
    later = snapshot_of(owner.ec2)
    share_with(owner.ec2, later, other.id)
    assert restores(other, later)
    code, _, status = aws_error(
        owner.ec2.modify_snapshot_attribute,
        SnapshotId=later,
        Attribute=PERMISSION,
        OperationType="add",
        GroupNames=["all"],
    )
    assert (code, status) == ("OperationNotPermitted", 400)


@pytest.mark.parametrize("after", [BLOCK_NEW, UNBLOCKED])
def test_leaving_block_all_sharing_makes_the_public_grant_count_again(
    owner: Account, other: Account, after: str
) -> None:
    public = snapshot_of(owner.ec2)
    share_publicly(owner.ec2, public)
    owner.ec2.enable_snapshot_block_public_access(State=BLOCK_ALL)
    assert not publicly_seen(other, public, owner)
    if after == UNBLOCKED:
        owner.ec2.disable_snapshot_block_public_access()
    else:
        owner.ec2.enable_snapshot_block_public_access(State=after)
    assert publicly_seen(other, public, owner)
    assert restores(other, public)


def test_blocking_in_one_region_leaves_public_sharing_in_another_alone(
    owner: Account, other: Account
) -> None:
    owner.ec2.enable_snapshot_block_public_access(State=BLOCK_ALL)
    elsewhere = snapshot_of(owner.ec2_elsewhere, OTHER_ZONE)
    share_publicly(owner.ec2_elsewhere, elsewhere)
    found = other.ec2_elsewhere.describe_snapshots(RestorableByUserIds=["all"])["Snapshots"]
    assert elsewhere in {s["SnapshotId"] for s in found}


# ---- the AWS CLI ----------------------------------------------------------------------------


def test_aws_cli_enables_reads_and_disables_the_setting(
    server: ServerProcess, tmp_path: Path
) -> None:
    _, key = server.new_account()
    env = server.cli_env(key)
    env.update(AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE="/none")

    def aws(*argv: str) -> Any:
        done = subprocess.run(
            [str(AWS), "ec2", *argv, "--endpoint-url", server.url, "--output", "json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    assert aws("get-snapshot-block-public-access-state") == {
        "State": UNBLOCKED,
        "ManagedBy": "account",
    }
    assert aws("enable-snapshot-block-public-access", "--state", BLOCK_ALL) == {"State": BLOCK_ALL}
    assert aws("get-snapshot-block-public-access-state")["State"] == BLOCK_ALL
    assert aws("disable-snapshot-block-public-access") == {"State": UNBLOCKED}
    assert aws("get-snapshot-block-public-access-state")["State"] == UNBLOCKED
