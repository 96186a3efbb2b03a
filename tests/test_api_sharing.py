"""Sharing snapshots between accounts, end to end: ModifySnapshotAttribute (both parameter
forms, user ids and the group `all`), DescribeSnapshotAttribute, ResetSnapshotAttribute,
DescribeSnapshots' Owner and RestorableBy, and CreateVolume from a shared snapshot — which
gives the bytes of the snapshot and stops working once the permission is removed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.config import Config as BotoConfig

from tests.api_support import (
    RawResponse,
    aws_error,
    new_snapshot,
    new_volume,
    raw_request,
    tag_spec,
)
from tests.server import DEFAULT_ACCOUNT, TEST_CONFIG, ServerProcess
from tests.volume_data import read_blocks, write_blocks

BLOCK = 512 * 1024
PERMISSION = "createVolumePermission"


@dataclass
class Account:
    id: str
    key: tuple[str, str]
    ec2: Any


@dataclass
class Lab:
    server: ServerProcess
    owner: Account
    friend: Account
    stranger: Account

    def shared_snapshot(self, data: dict[int, bytes] | None = None) -> str:
        """A completed snapshot of the owner's (of a volume holding ``data`` by block)."""
        volume_id = new_volume(self.owner.ec2)
        write_blocks(self.server, volume_id, data or {})
        return new_snapshot(
            self.owner.ec2, volume_id, TagSpecifications=tag_spec("snapshot", secret="x")
        )

    def read(self, volume_id: str, indexes: list[int]) -> dict[int, bytes]:
        return read_blocks(self.server, volume_id, indexes)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    server = ServerProcess(tmp_path_factory.mktemp("sharing") / "data", TEST_CONFIG)
    server.start()
    retries = BotoConfig(retries={"total_max_attempts": 1})
    try:
        accounts = [Account(DEFAULT_ACCOUNT, ("AKIDEXAMPLE", "secret"), server.client())]
        for _ in range(2):
            account_id, key = server.new_account()
            accounts.append(Account(account_id, key, server.client(key=key, config=retries)))
        yield Lab(server, *accounts)
    finally:
        server.stop()


def visible(account: Account, snapshot_id: str, **params: Any) -> bool:
    found = account.ec2.describe_snapshots(
        Filters=[{"Name": "snapshot-id", "Values": [snapshot_id]}], **params
    )["Snapshots"]
    return [s["SnapshotId"] for s in found] == [snapshot_id]


def permissions(lab: Lab, snapshot_id: str) -> list[dict[str, str]]:
    answer = lab.owner.ec2.describe_snapshot_attribute(SnapshotId=snapshot_id, Attribute=PERMISSION)
    assert answer["SnapshotId"] == snapshot_id
    found: list[dict[str, str]] = answer["CreateVolumePermissions"]
    return found


def share(lab: Lab, snapshot_id: str, operation: str, **who: list[str]) -> None:
    lab.owner.ec2.modify_snapshot_attribute(
        SnapshotId=snapshot_id, Attribute=PERMISSION, OperationType=operation, **who
    )


def restore(account: Account, snapshot_id: str) -> str:
    return new_volume(account.ec2, SnapshotId=snapshot_id)


# ---- sharing with one account ---------------------------------------------------------------


def test_shared_snapshot_is_seen_and_restored_by_the_friend_then_lost_when_unshared(
    lab: Lab,
) -> None:
    data = {0: os.urandom(BLOCK), 700: os.urandom(BLOCK)}
    snapshot_id = lab.shared_snapshot(data)
    assert not visible(lab.friend, snapshot_id)
    assert aws_error(restore, account=lab.friend, snapshot_id=snapshot_id)[0] == (
        "InvalidSnapshot.NotFound"
    )

    share(lab, snapshot_id, "add", UserIds=[lab.friend.id])
    assert permissions(lab, snapshot_id) == [{"UserId": lab.friend.id}]
    (seen,) = lab.friend.ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
    assert seen["OwnerId"] == DEFAULT_ACCOUNT and seen["State"] == "completed"
    assert "Tags" not in seen  # the owner's tags are the owner's
    assert not visible(lab.stranger, snapshot_id)
    volume_id = restore(lab.friend, snapshot_id)
    (volume,) = lab.friend.ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"]
    assert volume["SnapshotId"] == snapshot_id and volume["OwnerId"] == lab.friend.id
    assert lab.read(volume_id, [0, 1, 700]) == {0: data[0], 1: bytes(BLOCK), 700: data[700]}

    lab.owner.ec2.modify_snapshot_attribute(
        SnapshotId=snapshot_id, CreateVolumePermission={"Remove": [{"UserId": lab.friend.id}]}
    )
    assert permissions(lab, snapshot_id) == []
    assert not visible(lab.friend, snapshot_id)
    code, _, _ = aws_error(lab.friend.ec2.describe_snapshots, SnapshotIds=[snapshot_id])
    assert code == "InvalidSnapshot.NotFound"
    assert aws_error(restore, account=lab.friend, snapshot_id=snapshot_id)[0] == (
        "InvalidSnapshot.NotFound"
    )
    # What the friend restored while it could stays the friend's.
    assert lab.friend.ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]["State"] == (
        "available"
    )


def test_only_the_owner_may_delete_tag_or_change_sharing_of_a_shared_snapshot(lab: Lab) -> None:
    snapshot_id = lab.shared_snapshot()
    share(lab, snapshot_id, "add", UserIds=[lab.friend.id])
    friend = lab.friend.ec2
    for call, params in (
        (friend.delete_snapshot, {"SnapshotId": snapshot_id}),
        (friend.create_tags, {"Resources": [snapshot_id], "Tags": [{"Key": "k", "Value": "v"}]}),
        (
            friend.modify_snapshot_attribute,
            {
                "SnapshotId": snapshot_id,
                "Attribute": PERMISSION,
                "OperationType": "add",
                "GroupNames": ["all"],
            },
        ),
        (friend.describe_snapshot_attribute, {"SnapshotId": snapshot_id, "Attribute": PERMISSION}),
        (friend.reset_snapshot_attribute, {"SnapshotId": snapshot_id, "Attribute": PERMISSION}),
    ):
        code, _, status = aws_error(call, **params)
        assert (code, status) == ("UnauthorizedOperation", 403)
    assert permissions(lab, snapshot_id) == [{"UserId": lab.friend.id}]
    assert visible(lab.owner, snapshot_id)


def test_structured_add_form_and_several_grantees_at_once(lab: Lab) -> None:
    snapshot_id = lab.shared_snapshot()
    lab.owner.ec2.modify_snapshot_attribute(
        SnapshotId=snapshot_id,
        CreateVolumePermission={
            "Add": [{"UserId": lab.friend.id}, {"UserId": lab.stranger.id}, {"Group": "all"}]
        },
    )
    got = permissions(lab, snapshot_id)
    assert sorted(got, key=str) == sorted(
        [{"UserId": lab.friend.id}, {"UserId": lab.stranger.id}, {"Group": "all"}], key=str
    )
    share(lab, snapshot_id, "remove", UserIds=[lab.friend.id, lab.stranger.id])
    assert permissions(lab, snapshot_id) == [{"Group": "all"}]


# ---- public snapshots ------------------------------------------------------------------------


def test_public_snapshot_is_restorable_by_anyone_until_reset(lab: Lab) -> None:
    snapshot_id = lab.shared_snapshot({3: os.urandom(BLOCK)})
    share(lab, snapshot_id, "add", GroupNames=["all"])
    assert permissions(lab, snapshot_id) == [{"Group": "all"}]
    for account in (lab.friend, lab.stranger):
        assert visible(account, snapshot_id)
        assert visible(account, snapshot_id, RestorableByUserIds=["all"])
        assert not visible(account, snapshot_id, RestorableByUserIds=["self"])
        assert not visible(account, snapshot_id, OwnerIds=["self"])
        assert visible(account, snapshot_id, OwnerIds=[DEFAULT_ACCOUNT])
    volume_id = restore(lab.stranger, snapshot_id)
    lab.stranger.ec2.delete_volume(VolumeId=volume_id)

    lab.owner.ec2.reset_snapshot_attribute(SnapshotId=snapshot_id, Attribute=PERMISSION)
    assert permissions(lab, snapshot_id) == []
    assert not visible(lab.stranger, snapshot_id)
    assert aws_error(restore, account=lab.stranger, snapshot_id=snapshot_id)[0] == (
        "InvalidSnapshot.NotFound"
    )


# ---- DescribeSnapshots: Owner and RestorableBy ----------------------------------------------


def test_owner_and_restorable_by_select_as_aws_describes(lab: Lab) -> None:
    private = lab.shared_snapshot()
    explicit = lab.shared_snapshot()
    public = lab.shared_snapshot()
    share(lab, explicit, "add", UserIds=[lab.friend.id])
    share(lab, public, "add", GroupNames=["all"])
    friends_own = new_snapshot(lab.friend.ec2, new_volume(lab.friend.ec2))
    ours = {private, explicit, public, friends_own}

    def listed(account: Account, **params: Any) -> set[str]:
        found = account.ec2.describe_snapshots(**params)["Snapshots"]
        return {s["SnapshotId"] for s in found} & ours

    friend, owner = lab.friend, lab.owner
    assert listed(friend) == {explicit, public, friends_own}
    assert listed(friend, OwnerIds=["self"]) == {friends_own}
    assert listed(friend, OwnerIds=[DEFAULT_ACCOUNT]) == {explicit, public}
    assert listed(friend, OwnerIds=["self", DEFAULT_ACCOUNT]) == {explicit, public, friends_own}
    assert listed(friend, RestorableByUserIds=["self"]) == {explicit, friends_own}
    assert listed(friend, RestorableByUserIds=["all"]) == {public}
    assert listed(friend, RestorableByUserIds=["self", "all"]) == {
        explicit,
        public,
        friends_own,
    }
    assert listed(friend, OwnerIds=[DEFAULT_ACCOUNT], RestorableByUserIds=["self"]) == {explicit}
    assert listed(friend, OwnerIds=["amazon"]) == set()
    assert listed(owner) == {private, explicit, public}
    assert listed(owner, RestorableByUserIds=[friend.id]) == {explicit}
    assert listed(owner, RestorableByUserIds=[lab.stranger.id]) == set()
    assert listed(lab.stranger) == {public}


def test_tag_filters_never_match_the_owners_tags_on_a_shared_snapshot(lab: Lab) -> None:
    snapshot_id = lab.shared_snapshot()
    share(lab, snapshot_id, "add", UserIds=[lab.friend.id])
    for name, values in (("tag:secret", ["x"]), ("tag-key", ["secret"])):
        flts = [{"Name": name, "Values": values}, {"Name": "snapshot-id", "Values": [snapshot_id]}]
        assert lab.friend.ec2.describe_snapshots(Filters=flts)["Snapshots"] == []
        assert len(lab.owner.ec2.describe_snapshots(Filters=flts)["Snapshots"]) == 1


@pytest.mark.parametrize("field", ["OwnerIds", "RestorableByUserIds"])
def test_a_malformed_user_id_in_describe_snapshots_is_invalid_user_id_malformed(
    lab: Lab, field: str
) -> None:
    code, message, status = aws_error(lab.friend.ec2.describe_snapshots, **{field: ["bob"]})
    assert (code, status) == ("InvalidUserID.Malformed", 400)
    assert message == 'Invalid user id: "bob"'


# ---- parameter forms and errors -------------------------------------------------------------


def raw(lab: Lab, **params: str) -> RawResponse:
    return raw_request(lab.server.url, {"Version": "2016-11-15", **params})


def test_both_wire_forms_of_modify_snapshot_attribute_are_understood(lab: Lab) -> None:
    snapshot_id = lab.shared_snapshot()
    flat = raw(
        lab,
        Action="ModifySnapshotAttribute",
        SnapshotId=snapshot_id,
        Attribute=PERMISSION,
        OperationType="add",
        **{"UserId.1": lab.friend.id, "UserGroup.1": "all"},
    )
    assert flat.status == 200 and b"<return>true</return>" in flat.body
    assert sorted(permissions(lab, snapshot_id), key=str) == sorted(
        [{"UserId": lab.friend.id}, {"Group": "all"}], key=str
    )
    structured = raw(
        lab,
        Action="ModifySnapshotAttribute",
        SnapshotId=snapshot_id,
        **{
            "CreateVolumePermission.Remove.1.UserId": lab.friend.id,
            "CreateVolumePermission.Remove.1.Group": "all",
            "CreateVolumePermission.Add.1.UserId": lab.stranger.id,
        },
    )
    assert structured.status == 200, structured.body
    assert permissions(lab, snapshot_id) == [{"UserId": lab.stranger.id}]
    described = raw(
        lab, Action="DescribeSnapshotAttribute", SnapshotId=snapshot_id, Attribute=PERMISSION
    )
    body = described.xml()["DescribeSnapshotAttributeResponse"]
    assert body["snapshotId"] == snapshot_id
    assert body["createVolumePermission"]["item"] == {"userId": lab.stranger.id}


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"OperationType": "add", "UserIds": ["bob"]}, "InvalidUserID.Malformed"),
        ({"OperationType": "add", "GroupNames": ["everyone"]}, "InvalidParameterValue"),
        ({"OperationType": "share", "UserIds": ["123456789012"]}, "InvalidParameterValue"),
        ({"UserIds": ["123456789012"]}, "MissingParameter"),
        ({"OperationType": "add"}, "MissingParameter"),
        ({}, "MissingParameter"),
        (
            {
                "OperationType": "add",
                "UserIds": ["123456789012"],
                "CreateVolumePermission": {"Add": [{"UserId": "123456789012"}]},
            },
            "InvalidParameterCombination",
        ),
        (
            {"Attribute": "productCodes", "OperationType": "add", "UserIds": ["123456789012"]},
            "InvalidParameterValue",
        ),
        ({"Attribute": "ramdisk", "OperationType": "add"}, "InvalidParameterValue"),
    ],
)
def test_malformed_modify_snapshot_attribute_is_the_aws_error(
    lab: Lab, params: dict[str, Any], code: str
) -> None:
    snapshot_id = lab.shared_snapshot()
    got = aws_error(lab.owner.ec2.modify_snapshot_attribute, SnapshotId=snapshot_id, **params)
    assert got[0] == code
    assert permissions(lab, snapshot_id) == []


def test_product_codes_attribute_is_described_empty_and_cannot_be_reset(lab: Lab) -> None:
    snapshot_id = lab.shared_snapshot()
    answer = lab.owner.ec2.describe_snapshot_attribute(
        SnapshotId=snapshot_id, Attribute="productCodes"
    )
    assert answer["ProductCodes"] == [] and "CreateVolumePermissions" not in answer
    code, _, _ = aws_error(
        lab.owner.ec2.reset_snapshot_attribute, SnapshotId=snapshot_id, Attribute="productCodes"
    )
    assert code == "InvalidParameterValue"


def test_deleting_a_shared_snapshot_takes_it_from_everyone(lab: Lab) -> None:
    snapshot_id = lab.shared_snapshot()
    share(lab, snapshot_id, "add", UserIds=[lab.friend.id])
    lab.owner.ec2.delete_snapshot(SnapshotId=snapshot_id)
    code, _, _ = aws_error(lab.friend.ec2.describe_snapshots, SnapshotIds=[snapshot_id])
    assert code == "InvalidSnapshot.NotFound"


def test_aws_cli_shares_and_unshares_with_the_flat_options(lab: Lab, tmp_path: Path) -> None:
    snapshot_id = lab.shared_snapshot()

    def aws(*argv: str) -> Any:
        env = lab.server.cli_env()
        env.update(AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE="/none")
        cli = Path(sys.executable).with_name("aws")
        done = subprocess.run(
            [str(cli), "ec2", *argv, "--endpoint-url", lab.server.url, "--output", "json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout) if done.stdout.strip() else None

    common = ("--snapshot-id", snapshot_id, "--attribute", PERMISSION)
    aws(
        "modify-snapshot-attribute", *common, "--operation-type", "add", "--user-ids", lab.friend.id
    )
    described = aws("describe-snapshot-attribute", *common)
    assert described["CreateVolumePermissions"] == [{"UserId": lab.friend.id}]
    assert visible(lab.friend, snapshot_id)
    aws(
        "modify-snapshot-attribute",
        *common,
        "--operation-type",
        "remove",
        "--user-ids",
        lab.friend.id,
    )
    assert not visible(lab.friend, snapshot_id)
