"""CreateTags and DeleteTags on volumes and snapshots: semantics, limits, errors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.api_support import DRY_RUN_MESSAGE, aws_error, new_snapshot, new_volume, unique
from tests.server import ServerProcess

# The module's server tests run on each store and storage backend.
API_COMBINATIONS = (("sqlite", "file"), ("postgresql", "file"), ("sqlite", "rbd"))


@pytest.fixture(scope="module")
def ec2(server: ServerProcess) -> Any:
    """One client for the module: building a boto3 client costs tens of milliseconds."""
    return server.client()


@pytest.fixture
def volume(ec2: Any) -> Iterator[str]:
    volume_id = new_volume(ec2)
    yield volume_id
    ec2.delete_volume(VolumeId=volume_id)


def tags_of(ec2: Any, resource_id: str) -> dict[str, str]:
    """The resource's tags as DescribeTags shows them (cross-checked with its own Describe)."""
    found = ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [resource_id]}])
    tags = {t["Key"]: t["Value"] for t in found["Tags"]}
    if resource_id.startswith("vol-"):
        (item,) = ec2.describe_volumes(VolumeIds=[resource_id])["Volumes"]
    else:
        (item,) = ec2.describe_snapshots(SnapshotIds=[resource_id])["Snapshots"]
    assert {t["Key"]: t["Value"] for t in item.get("Tags", [])} == tags
    return tags


def test_create_tags_on_a_volume_and_a_snapshot_at_once(ec2: Any, volume: str) -> None:
    snapshot_id = new_snapshot(ec2, volume)
    run = unique()
    ec2.create_tags(
        Resources=[volume, snapshot_id],
        Tags=[{"Key": "run", "Value": run}, {"Key": "Name", "Value": "db"}],
    )
    volume_tags, snapshot_tags = tags_of(ec2, volume), tags_of(ec2, snapshot_id)
    found = ec2.describe_tags(Filters=[{"Name": "value", "Values": [run]}])["Tags"]
    ec2.delete_snapshot(SnapshotId=snapshot_id)
    assert volume_tags == snapshot_tags == {"run": run, "Name": "db"}
    assert sorted((t["ResourceId"], t["ResourceType"]) for t in found) == sorted(
        [(volume, "volume"), (snapshot_id, "snapshot")]
    )


def test_create_tags_overwrites_the_value_of_an_existing_key(ec2: Any, volume: str) -> None:
    ec2.create_tags(Resources=[volume], Tags=[{"Key": "env", "Value": "test"}])
    ec2.create_tags(Resources=[volume], Tags=[{"Key": "env", "Value": "prod"}])
    assert tags_of(ec2, volume) == {"env": "prod"}


def test_tag_without_a_value_has_the_empty_value(ec2: Any, volume: str) -> None:
    ec2.create_tags(Resources=[volume], Tags=[{"Key": "flag"}, {"Key": "empty", "Value": ""}])
    assert tags_of(ec2, volume) == {"flag": "", "empty": ""}


def test_tags_keep_xml_special_characters_and_unicode(ec2: Any, volume: str) -> None:
    key, value = "a&b<c>\"d'", "ünïcødé ☃ <&> \t tab"
    ec2.create_tags(Resources=[volume], Tags=[{"Key": key, "Value": value}])
    assert tags_of(ec2, volume) == {key: value}


@pytest.mark.parametrize(
    ("delete", "left"),
    [
        pytest.param([{"Key": "a"}], {"b": "2", "e": ""}, id="key-only-any-value"),
        pytest.param([{"Key": "a", "Value": "1"}], {"b": "2", "e": ""}, id="key-and-same-value"),
        pytest.param(
            [{"Key": "a", "Value": "9"}], {"a": "1", "b": "2", "e": ""}, id="other-value-kept"
        ),
        pytest.param(
            [{"Key": "a", "Value": ""}], {"a": "1", "b": "2", "e": ""}, id="empty-value-kept"
        ),
        pytest.param([{"Key": "e", "Value": ""}], {"a": "1", "b": "2"}, id="empty-matches-empty"),
        pytest.param(
            [{"Key": "missing"}], {"a": "1", "b": "2", "e": ""}, id="missing-key-is-no-error"
        ),
        pytest.param(None, {}, id="no-tags-deletes-all"),
    ],
)
def test_delete_tags_matches_key_and_value_as_ec2_does(
    ec2: Any, volume: str, delete: list[dict[str, str]] | None, left: dict[str, str]
) -> None:
    ec2.create_tags(
        Resources=[volume],
        Tags=[{"Key": "a", "Value": "1"}, {"Key": "b", "Value": "2"}, {"Key": "e", "Value": ""}],
    )
    if delete is None:
        ec2.delete_tags(Resources=[volume])
    else:
        ec2.delete_tags(Resources=[volume], Tags=delete)
    assert tags_of(ec2, volume) == left


def test_fifty_tags_fit_and_the_fifty_first_is_tag_limit_exceeded(ec2: Any, volume: str) -> None:
    fifty = {f"k{i}": str(i) for i in range(50)}
    ec2.create_tags(Resources=[volume], Tags=[{"Key": k, "Value": v} for k, v in fifty.items()])
    ec2.create_tags(Resources=[volume], Tags=[{"Key": "k0", "Value": "changed"}])  # no new key
    code, _, status = aws_error(
        ec2.create_tags, Resources=[volume], Tags=[{"Key": "k50", "Value": "x"}]
    )
    assert (code, status) == ("TagLimitExceeded", 400)
    assert tags_of(ec2, volume) == fifty | {"k0": "changed"}


def test_fifty_one_tags_at_creation_are_tag_limit_exceeded(ec2: Any) -> None:
    tags = [{"Key": f"k{i}", "Value": ""} for i in range(51)]
    code, _, _ = aws_error(
        ec2.create_volume,
        AvailabilityZone="us-east-1a",
        Size=1,
        TagSpecifications=[{"ResourceType": "volume", "Tags": tags}],
    )
    assert code == "TagLimitExceeded"


@pytest.mark.parametrize(
    ("key", "value", "ok"),
    [
        pytest.param("k" * 128, "v", True, id="key-128"),
        pytest.param("k" * 129, "v", False, id="key-129"),
        pytest.param("k", "v" * 256, True, id="value-256"),
        pytest.param("k", "v" * 257, False, id="value-257"),
        pytest.param("", "v", False, id="empty-key"),
        pytest.param("aws:owner", "v", False, id="aws-prefix"),
        pytest.param("aws:", "v", False, id="aws-prefix-alone"),
        pytest.param("awsx:owner", "v", True, id="not-aws-prefix"),
        pytest.param("my:aws:key", "v", True, id="aws-inside"),
    ],
)
def test_tag_key_and_value_limits(ec2: Any, volume: str, key: str, value: str, ok: bool) -> None:
    if ok:
        ec2.create_tags(Resources=[volume], Tags=[{"Key": key, "Value": value}])
        assert tags_of(ec2, volume) == {key: value}
    else:
        code, _, status = aws_error(
            ec2.create_tags, Resources=[volume], Tags=[{"Key": key, "Value": value}]
        )
        assert (code, status) == ("InvalidParameterValue", 400)
        assert tags_of(ec2, volume) == {}


def test_aws_prefixed_tags_cannot_be_deleted(ec2: Any, volume: str) -> None:
    code, message, _ = aws_error(ec2.delete_tags, Resources=[volume], Tags=[{"Key": "aws:x"}])
    assert code == "InvalidParameterValue" and "aws:" in message


def test_duplicate_keys_in_one_request_are_invalid(ec2: Any, volume: str) -> None:
    code, _, _ = aws_error(
        ec2.create_tags,
        Resources=[volume],
        Tags=[{"Key": "a", "Value": "1"}, {"Key": "a", "Value": "2"}],
    )
    assert code == "InvalidParameterValue"
    assert tags_of(ec2, volume) == {}


def test_create_tags_with_one_missing_resource_tags_none(ec2: Any, volume: str) -> None:
    code, _, _ = aws_error(
        ec2.create_tags,
        Resources=[volume, "vol-0123456789abcdef0"],
        Tags=[{"Key": "a", "Value": "1"}],
    )
    assert code == "InvalidVolume.NotFound"
    assert tags_of(ec2, volume) == {}


@pytest.mark.parametrize(
    ("resource", "code"),
    [
        ("i-0123456789abcdef0", "InvalidInstanceID.NotFound"),
        ("ami-0123456789abcdef0", "InvalidID"),
        ("nonsense", "InvalidID"),
        ("vol-12", "InvalidVolumeID.Malformed"),
        ("snap-12", "InvalidSnapshotID.Malformed"),
    ],
)
def test_tagging_an_unknown_kind_of_id_is_refused(
    ec2: Any, resource: str, code: str, volume: str
) -> None:
    for operation, params in (
        (ec2.create_tags, {"Tags": [{"Key": "a", "Value": "1"}]}),
        (ec2.delete_tags, {}),
    ):
        got, _, status = aws_error(operation, Resources=[volume, resource], **params)
        assert (got, status) == (code, 400)
    assert tags_of(ec2, volume) == {}


def test_create_tags_without_tags_is_missing_parameter(ec2: Any, volume: str) -> None:
    # botocore checks only that Tags is present; an empty list never reaches the wire.
    assert aws_error(ec2.create_tags, Resources=[volume], Tags=[])[0] == "MissingParameter"


def test_dry_run_create_and_delete_tags_change_nothing(ec2: Any, volume: str) -> None:
    tag = [{"Key": "a", "Value": "1"}]
    code, message, status = aws_error(ec2.create_tags, Resources=[volume], Tags=tag, DryRun=True)
    assert (code, message, status) == ("DryRunOperation", DRY_RUN_MESSAGE, 412)
    assert tags_of(ec2, volume) == {}
    ec2.create_tags(Resources=[volume], Tags=tag)
    code, _, status = aws_error(ec2.delete_tags, Resources=[volume], DryRun=True)
    assert (code, status) == ("DryRunOperation", 412)
    assert tags_of(ec2, volume) == {"a": "1"}


def test_tags_of_a_deleted_snapshot_are_gone(ec2: Any, volume: str) -> None:
    run = unique()
    snapshot_id = new_snapshot(ec2, volume)
    ec2.create_tags(Resources=[snapshot_id], Tags=[{"Key": "run", "Value": run}])
    ec2.delete_snapshot(SnapshotId=snapshot_id)
    assert ec2.describe_tags(Filters=[{"Name": "value", "Values": [run]}])["Tags"] == []
