"""Two accounts on one server: every operation of one on the other's volumes, snapshots and
instances is refused with exactly the answer an absent id gets, and nothing of the other's
shows up in any listing. OwnerId is the real account of each."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from ebsemu.service.instances import instance_id
from tests.api_support import new_snapshot, new_volume, tag_spec, unique
from tests.server import DEFAULT_ACCOUNT, TEST_CONFIG, ZONE, ServerProcess
from tests.test_api_attach_host import loop_devices_usable

OTHER_ACCOUNT = "111122223333"
HOST_VMM = loop_devices_usable()
needs_instances = pytest.mark.skipif(
    not HOST_VMM, reason="instances here come from the host VMM, which needs loop devices"
)


@dataclass
class Resources:
    volume: str
    snapshot: str
    instance: str | None


@dataclass
class Lab:
    server: ServerProcess
    mine: Any  # the default account's client
    other: Any  # another account's client
    my: Resources
    theirs: Resources


def config() -> str:
    if not HOST_VMM:
        return TEST_CONFIG
    return TEST_CONFIG + (
        f"\n[vmm mine]\ndriver = host\nzone = {ZONE}\ndomain = mine\n"
        f"\n[vmm theirs]\ndriver = host\nzone = {ZONE}\ndomain = theirs\n"
        f"account = {OTHER_ACCOUNT}\n"
    )


def resources(ec2: Any, vmm: str) -> Resources:
    volume = new_volume(ec2, TagSpecifications=tag_spec("volume", owner=vmm))
    snapshot = new_snapshot(ec2, volume, TagSpecifications=tag_spec("snapshot", owner=vmm))
    instance = instance_id(vmm, vmm) if HOST_VMM else None
    if instance is not None:
        ec2.create_tags(Resources=[instance], Tags=[{"Key": "owner", "Value": vmm}])
    return Resources(volume, snapshot, instance)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    server = ServerProcess(tmp_path_factory.mktemp("isolation") / "data", config())
    server.start()
    try:
        _, key = server.new_account(OTHER_ACCOUNT)
        retries = BotoConfig(retries={"total_max_attempts": 1})
        mine = server.client(config=retries)
        other = server.client(key=key, config=retries)
        yield Lab(server, mine, other, resources(mine, "mine"), resources(other, "theirs"))
    finally:
        server.stop()


def absent(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(9)[:17]}"


def refusal(call: Callable[..., Any], **params: Any) -> tuple[str, str, int]:
    with pytest.raises(ClientError) as caught:
        call(**params)
    error = caught.value.response
    return (
        error["Error"]["Code"],
        error["Error"]["Message"],
        error["ResponseMetadata"]["HTTPStatusCode"],
    )


def same_as_absent(
    call: Callable[..., Any], foreign: str, missing: str, build: Callable[[str], dict[str, Any]]
) -> str:
    """The refusal for ``foreign`` equals the one for ``missing`` (ids swapped); its code."""
    code, message, status = refusal(call, **build(foreign))
    want_code, want_message, want_status = refusal(call, **build(missing))
    assert (code, status) == (want_code, want_status)
    assert message == want_message.replace(missing, foreign)
    return code


# ---- volumes -------------------------------------------------------------------------------

VOLUME_CALLS: list[tuple[str, Callable[[str], dict[str, Any]]]] = [
    ("describe_volumes", lambda v: {"VolumeIds": [v]}),
    ("delete_volume", lambda v: {"VolumeId": v}),
    ("create_snapshot", lambda v: {"VolumeId": v}),
    ("detach_volume", lambda v: {"VolumeId": v}),
    ("create_tags", lambda v: {"Resources": [v], "Tags": [{"Key": "k", "Value": "v"}]}),
    ("delete_tags", lambda v: {"Resources": [v], "Tags": [{"Key": "owner"}]}),
]


@pytest.mark.parametrize(("operation", "build"), VOLUME_CALLS, ids=[c[0] for c in VOLUME_CALLS])
def test_another_accounts_volume_is_not_found_like_an_absent_one(
    lab: Lab, operation: str, build: Callable[[str], dict[str, Any]]
) -> None:
    code = same_as_absent(getattr(lab.other, operation), lab.my.volume, absent("vol"), build)
    assert code == "InvalidVolume.NotFound"


@needs_instances
def test_attaching_another_accounts_volume_is_not_found_like_an_absent_one(lab: Lab) -> None:
    code = same_as_absent(
        lab.other.attach_volume,
        lab.my.volume,
        absent("vol"),
        lambda v: {"VolumeId": v, "InstanceId": lab.theirs.instance, "Device": "/dev/sdf"},
    )
    assert code == "InvalidVolume.NotFound"


def test_another_accounts_volumes_are_in_no_listing(lab: Lab) -> None:
    listed = {v["VolumeId"] for v in lab.other.describe_volumes()["Volumes"]}
    assert lab.theirs.volume in listed and lab.my.volume not in listed
    by_filter = lab.other.describe_volumes(
        Filters=[{"Name": "volume-id", "Values": [lab.my.volume]}]
    )
    assert by_filter["Volumes"] == []
    tags = lab.other.describe_tags()["Tags"]
    assert {t["ResourceId"] for t in tags} == {
        r for r in (lab.theirs.volume, lab.theirs.snapshot, lab.theirs.instance) if r
    }


def test_the_volume_is_untouched_by_the_other_accounts_attempts(lab: Lab) -> None:
    (volume,) = lab.mine.describe_volumes(VolumeIds=[lab.my.volume])["Volumes"]
    assert volume["State"] == "available"
    assert volume["Tags"] == [{"Key": "owner", "Value": "mine"}]
    assert volume["OwnerId"] == DEFAULT_ACCOUNT


def test_owner_id_is_the_real_account_of_each_volume_and_snapshot(lab: Lab) -> None:
    for ec2, res, account in (
        (lab.mine, lab.my, DEFAULT_ACCOUNT),
        (lab.other, lab.theirs, OTHER_ACCOUNT),
    ):
        (volume,) = ec2.describe_volumes(VolumeIds=[res.volume])["Volumes"]
        (snapshot,) = ec2.describe_snapshots(SnapshotIds=[res.snapshot])["Snapshots"]
        assert volume["OwnerId"] == snapshot["OwnerId"] == account


def test_the_same_client_token_in_two_accounts_makes_two_volumes(lab: Lab) -> None:
    token = unique()
    mine = lab.mine.create_volume(AvailabilityZone=ZONE, Size=1, ClientToken=token)
    theirs = lab.other.create_volume(AvailabilityZone=ZONE, Size=1, ClientToken=token)
    assert mine["VolumeId"] != theirs["VolumeId"]
    assert (mine["OwnerId"], theirs["OwnerId"]) == (DEFAULT_ACCOUNT, OTHER_ACCOUNT)


# ---- snapshots -----------------------------------------------------------------------------

SNAPSHOT_CALLS: list[tuple[str, Callable[[str], dict[str, Any]]]] = [
    ("describe_snapshots", lambda s: {"SnapshotIds": [s]}),
    ("delete_snapshot", lambda s: {"SnapshotId": s}),
    ("create_volume", lambda s: {"SnapshotId": s, "AvailabilityZone": ZONE}),
    ("create_tags", lambda s: {"Resources": [s], "Tags": [{"Key": "k", "Value": "v"}]}),
    ("delete_tags", lambda s: {"Resources": [s]}),
    (
        "describe_snapshot_attribute",
        lambda s: {"SnapshotId": s, "Attribute": "createVolumePermission"},
    ),
    (
        "modify_snapshot_attribute",
        lambda s: {
            "SnapshotId": s,
            "Attribute": "createVolumePermission",
            "OperationType": "add",
            "UserIds": [OTHER_ACCOUNT],
        },
    ),
    (
        "reset_snapshot_attribute",
        lambda s: {"SnapshotId": s, "Attribute": "createVolumePermission"},
    ),
]


@pytest.mark.parametrize(("operation", "build"), SNAPSHOT_CALLS, ids=[c[0] for c in SNAPSHOT_CALLS])
def test_another_accounts_snapshot_is_not_found_like_an_absent_one(
    lab: Lab, operation: str, build: Callable[[str], dict[str, Any]]
) -> None:
    code = same_as_absent(getattr(lab.other, operation), lab.my.snapshot, absent("snap"), build)
    assert code == "InvalidSnapshot.NotFound"


@pytest.mark.parametrize(
    "params",
    [{}, {"OwnerIds": ["self"]}, {"OwnerIds": [DEFAULT_ACCOUNT]}, {"RestorableByUserIds": ["all"]}],
)
def test_another_accounts_snapshots_are_in_no_listing(lab: Lab, params: dict[str, Any]) -> None:
    listed = {s["SnapshotId"] for s in lab.other.describe_snapshots(**params)["Snapshots"]}
    assert lab.my.snapshot not in listed


# ---- instances -----------------------------------------------------------------------------


@needs_instances
def test_each_account_sees_only_its_own_instances_with_its_owner_id(lab: Lab) -> None:
    for ec2, res, account in (
        (lab.mine, lab.my, DEFAULT_ACCOUNT),
        (lab.other, lab.theirs, OTHER_ACCOUNT),
    ):
        reservations = ec2.describe_instances()["Reservations"]
        assert [r["Instances"][0]["InstanceId"] for r in reservations] == [res.instance]
        assert reservations[0]["OwnerId"] == account


INSTANCE_CALLS: list[tuple[str, Callable[[Lab, str], dict[str, Any]]]] = [
    ("describe_instances", lambda lab, i: {"InstanceIds": [i]}),
    (
        "attach_volume",
        lambda lab, i: {"VolumeId": lab.theirs.volume, "InstanceId": i, "Device": "/dev/sdf"},
    ),
    ("create_tags", lambda lab, i: {"Resources": [i], "Tags": [{"Key": "k", "Value": "v"}]}),
    (
        "modify_instance_attribute",
        lambda lab, i: {
            "InstanceId": i,
            "BlockDeviceMappings": [
                {"DeviceName": "/dev/sdf", "Ebs": {"DeleteOnTermination": True}}
            ],
        },
    ),
]


@needs_instances
@pytest.mark.parametrize(("operation", "build"), INSTANCE_CALLS, ids=[c[0] for c in INSTANCE_CALLS])
def test_another_accounts_instance_is_not_found_like_an_absent_one(
    lab: Lab, operation: str, build: Callable[[Lab, str], dict[str, Any]]
) -> None:
    assert lab.my.instance is not None
    code = same_as_absent(
        getattr(lab.other, operation),
        lab.my.instance,
        absent("i"),
        lambda i: build(lab, i),
    )
    assert code == "InvalidInstanceID.NotFound"
