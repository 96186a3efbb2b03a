"""EBS encryption settings over HTTP (boto3 and the AWS CLI against a real server), and how they
apply to CreateVolume and CreateSnapshot: per account, per region, persisted, validated."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api_support import FAST, aws_error, new_snapshot, new_volume, poll, volume_segment
from tests.server import REGION, TEST_CONFIG, ZONE, ServerProcess
from tests.test_api_cli import AWS

OTHER_REGION = "eu-west-1"
CONFIG = (
    TEST_CONFIG
    + f"\n[region {REGION}]\nzones = {ZONE}\n[region {OTHER_REGION}]\nzones = {OTHER_REGION}a\n"
)
DEFAULT_ALIAS = "alias/aws/ebs"
KEY_ID = "1234abcd-12ab-34cd-56ef-1234567890ab"
ARN = re.compile(r"arn:aws:kms:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):key/[0-9a-f-]{36}")
LUKS_MAGIC = b"LUKS\xba\xbe"


@pytest.fixture(scope="module")
def regions_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # The file backend: encryption at rest is LUKS in the volumes' files (the rbd backend
    # refuses Encrypted volumes), and the tests read the LUKS headers.
    proc = ServerProcess(tmp_path_factory.mktemp("encryption") / "data", CONFIG, backend="file")
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def account(regions_server: ServerProcess) -> tuple[str, Any]:
    """A new account of its own (settings are per account), and its client in REGION."""
    account_id, key = regions_server.new_account()
    return account_id, regions_server.client(key=key)


def client_of(server: ServerProcess, key: tuple[str, str], region: str = REGION) -> Any:
    return server.client(key=key, region_name=region)


def by_default(ec2: Any) -> bool:
    answer = ec2.get_ebs_encryption_by_default()
    assert answer["SseType"] == "sse-ebs"
    return bool(answer["EbsEncryptionByDefault"])


def wait_state(ec2: Any, volume_id: str, state: str = "available") -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        volume = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]
        assert volume["State"] != "error", volume
        return volume if volume["State"] == state else None

    return poll(ready, timeout=60)


# ---- encryption by default ----------------------------------------------------------------


def test_encryption_by_default_is_off_until_enabled_and_off_again_once_disabled(
    account: tuple[str, Any],
) -> None:
    _, ec2 = account
    assert by_default(ec2) is False
    assert ec2.enable_ebs_encryption_by_default()["EbsEncryptionByDefault"] is True
    assert by_default(ec2) is True
    assert ec2.enable_ebs_encryption_by_default()["EbsEncryptionByDefault"] is True
    assert ec2.disable_ebs_encryption_by_default()["EbsEncryptionByDefault"] is False
    assert by_default(ec2) is False


def test_encryption_by_default_is_per_account_and_per_region(
    regions_server: ServerProcess,
) -> None:
    _, key_a = regions_server.new_account()
    _, key_b = regions_server.new_account()
    client_of(regions_server, key_a).enable_ebs_encryption_by_default()
    assert by_default(client_of(regions_server, key_a)) is True
    assert by_default(client_of(regions_server, key_a, OTHER_REGION)) is False
    assert by_default(client_of(regions_server, key_b)) is False
    client_of(regions_server, key_b, OTHER_REGION).enable_ebs_encryption_by_default()
    assert by_default(client_of(regions_server, key_b)) is False
    assert by_default(client_of(regions_server, key_b, OTHER_REGION)) is True


def test_dry_run_of_enable_changes_nothing(account: tuple[str, Any]) -> None:
    _, ec2 = account
    code, _, status = aws_error(ec2.enable_ebs_encryption_by_default, DryRun=True)
    assert (code, status) == ("DryRunOperation", 412)
    assert by_default(ec2) is False


# ---- the default KMS key ------------------------------------------------------------------


def test_default_key_is_the_aws_managed_alias_until_modified_and_again_after_reset(
    account: tuple[str, Any],
) -> None:
    account_id, ec2 = account
    assert ec2.get_ebs_default_kms_key_id()["KmsKeyId"] == DEFAULT_ALIAS
    arn = f"arn:aws:kms:{REGION}:{account_id}:key/{KEY_ID}"
    assert ec2.modify_ebs_default_kms_key_id(KmsKeyId=KEY_ID)["KmsKeyId"] == arn
    assert ec2.get_ebs_default_kms_key_id()["KmsKeyId"] == arn
    assert ec2.reset_ebs_default_kms_key_id()["KmsKeyId"] == DEFAULT_ALIAS
    assert ec2.get_ebs_default_kms_key_id()["KmsKeyId"] == DEFAULT_ALIAS


@pytest.mark.parametrize(
    "form",
    ["key-id", "key-arn", "alias-name", "alias-arn", "multi-region-key-id", "other-account-arn"],
)
def test_modify_default_key_takes_every_form_and_answers_a_key_arn(
    account: tuple[str, Any], form: str
) -> None:
    account_id, ec2 = account
    given = {
        "key-id": KEY_ID,
        "key-arn": f"arn:aws:kms:{REGION}:{account_id}:key/{KEY_ID}",
        "alias-name": "alias/team-volumes",
        "alias-arn": f"arn:aws:kms:{REGION}:{account_id}:alias/team-volumes",
        "multi-region-key-id": "mrk-" + "0" * 31 + "1",
        "other-account-arn": f"arn:aws:kms:{REGION}:111122223333:key/{KEY_ID}",
    }[form]
    arn = ec2.modify_ebs_default_kms_key_id(KmsKeyId=given)["KmsKeyId"]
    assert arn.startswith(f"arn:aws:kms:{REGION}:")
    assert ":key/" in arn
    assert ec2.get_ebs_default_kms_key_id()["KmsKeyId"] == arn
    if form in ("key-id", "key-arn"):
        assert arn == f"arn:aws:kms:{REGION}:{account_id}:key/{KEY_ID}"
    if form == "other-account-arn":
        assert arn == given


def test_an_alias_names_the_same_key_by_name_and_by_arn_and_another_alias_another_key(
    account: tuple[str, Any],
) -> None:
    account_id, ec2 = account
    by_name = ec2.modify_ebs_default_kms_key_id(KmsKeyId="alias/one")["KmsKeyId"]
    again = ec2.modify_ebs_default_kms_key_id(KmsKeyId="alias/one")["KmsKeyId"]
    by_arn = ec2.modify_ebs_default_kms_key_id(
        KmsKeyId=f"arn:aws:kms:{REGION}:{account_id}:alias/one"
    )["KmsKeyId"]
    other = ec2.modify_ebs_default_kms_key_id(KmsKeyId="alias/two")["KmsKeyId"]
    assert by_name == again == by_arn != other
    match = ARN.fullmatch(by_name)
    assert match is not None and match["account"] == account_id


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "not-a-key",
        "1234ABCD-12AB-34CD-56EF-1234567890AB",
        "1234abcd-12ab-34cd-56ef-1234567890",
        "alias/",
        "alias/has space",
        "arn:aws:kms:us-east-1:123:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "arn:aws:s3:::bucket",
        "arn:aws:kms:us-east-1:000000000000:key/alias/x",
    ],
)
def test_malformed_key_ids_are_invalid_parameter_value(account: tuple[str, Any], bad: str) -> None:
    _, ec2 = account
    code, message, status = aws_error(ec2.modify_ebs_default_kms_key_id, KmsKeyId=bad)
    assert (code, status) == ("InvalidParameterValue", 400)
    assert "KmsKeyId" in message
    assert ec2.get_ebs_default_kms_key_id()["KmsKeyId"] == DEFAULT_ALIAS


def test_a_key_of_another_region_is_refused(account: tuple[str, Any]) -> None:
    account_id, ec2 = account
    arn = f"arn:aws:kms:{OTHER_REGION}:{account_id}:key/{KEY_ID}"
    code, message, _ = aws_error(ec2.modify_ebs_default_kms_key_id, KmsKeyId=arn)
    assert code == "InvalidParameterValue"
    assert OTHER_REGION in message


def test_default_key_is_per_account_and_per_region(regions_server: ServerProcess) -> None:
    a_id, key_a = regions_server.new_account()
    _, key_b = regions_server.new_account()
    client_of(regions_server, key_a).modify_ebs_default_kms_key_id(KmsKeyId=KEY_ID)
    assert client_of(regions_server, key_a).get_ebs_default_kms_key_id()["KmsKeyId"] == (
        f"arn:aws:kms:{REGION}:{a_id}:key/{KEY_ID}"
    )
    in_other_region = client_of(regions_server, key_a, OTHER_REGION)
    assert in_other_region.get_ebs_default_kms_key_id()["KmsKeyId"] == DEFAULT_ALIAS
    assert client_of(regions_server, key_b).get_ebs_default_kms_key_id()["KmsKeyId"] == (
        DEFAULT_ALIAS
    )
    # Resetting in one region leaves the other region's key alone.
    in_other_region.modify_ebs_default_kms_key_id(KmsKeyId="alias/eu")
    client_of(regions_server, key_a).reset_ebs_default_kms_key_id()
    assert in_other_region.get_ebs_default_kms_key_id()["KmsKeyId"].startswith(
        f"arn:aws:kms:{OTHER_REGION}:{a_id}:key/"
    )


def test_settings_survive_a_restart(fresh_server: ServerProcess) -> None:
    ec2 = fresh_server.client()
    ec2.enable_ebs_encryption_by_default()
    arn = ec2.modify_ebs_default_kms_key_id(KmsKeyId="alias/kept")["KmsKeyId"]
    fresh_server.restart()
    ec2 = fresh_server.client()
    assert by_default(ec2) is True
    assert ec2.get_ebs_default_kms_key_id()["KmsKeyId"] == arn


# ---- CreateVolume and CreateSnapshot -------------------------------------------------------


def test_encrypted_volume_gets_the_aws_managed_key_as_an_arn_and_a_luks_file(
    regions_server: ServerProcess, account: tuple[str, Any]
) -> None:
    account_id, ec2 = account
    volume = ec2.create_volume(AvailabilityZone=ZONE, Size=1, Encrypted=True)
    assert volume["Encrypted"] is True
    match = ARN.fullmatch(volume["KmsKeyId"])
    assert match is not None and (match["region"], match["account"]) == (REGION, account_id)
    shown = wait_state(ec2, volume["VolumeId"])
    assert (shown["Encrypted"], shown["KmsKeyId"]) == (True, volume["KmsKeyId"])
    # The same managed key for every volume of the account in the region.
    second = ec2.create_volume(AvailabilityZone=ZONE, Size=1, Encrypted=True)
    assert second["KmsKeyId"] == volume["KmsKeyId"]
    segment = volume_segment(regions_server.data_dir, volume["VolumeId"])
    with segment.open("rb") as handle:
        assert handle.read(6) == LUKS_MAGIC
    assert segment.stat().st_size == 1024**3 + 2 * 1024**2
    # The header makes the file longer than the volume: that is no fault of its storage.
    [status] = ec2.describe_volume_status(VolumeIds=[volume["VolumeId"]])["VolumeStatuses"]
    assert status["VolumeStatus"]["Status"] == "ok", status
    assert status["Events"] == [] and status["Actions"] == []
    ec2.delete_volume(VolumeId=volume["VolumeId"])
    wait_state(ec2, second["VolumeId"])
    ec2.delete_volume(VolumeId=second["VolumeId"])


def test_an_encrypted_volume_cannot_grow_and_is_told_so_at_once_but_changes_type(
    account: tuple[str, Any],
) -> None:
    """Before, ModifyVolume answered `modifying` and the modification failed in the
    background, starting the cooldown all the same."""
    _, ec2 = account
    volume_id = ec2.create_volume(AvailabilityZone=ZONE, Size=1, Encrypted=True)["VolumeId"]
    wait_state(ec2, volume_id)
    code, message, status = aws_error(ec2.modify_volume, VolumeId=volume_id, Size=2)
    assert (code, status) == ("UnsupportedOperation", 400)
    assert volume_id in message and "encrypted" in message
    code, _, _ = aws_error(ec2.describe_volumes_modifications, VolumeIds=[volume_id])
    assert code == "InvalidVolumeModification.NotFound"
    changed = ec2.modify_volume(VolumeId=volume_id, VolumeType="gp3")["VolumeModification"]
    assert (changed["TargetVolumeType"], changed["TargetSize"]) == ("gp3", 1)
    ec2.get_waiter("volume_available").wait(VolumeIds=[volume_id], WaiterConfig={"Delay": 0.2})


def test_encryption_by_default_encrypts_even_with_encrypted_false_under_the_default_key(
    account: tuple[str, Any],
) -> None:
    _, ec2 = account
    ec2.enable_ebs_encryption_by_default()
    arn = ec2.modify_ebs_default_kms_key_id(KmsKeyId="alias/by-default")["KmsKeyId"]
    plain = ec2.create_volume(AvailabilityZone=ZONE, Size=1)
    refused_off = ec2.create_volume(AvailabilityZone=ZONE, Size=1, Encrypted=False)
    for volume in (plain, refused_off):
        assert (volume["Encrypted"], volume["KmsKeyId"]) == (True, arn)
    ec2.disable_ebs_encryption_by_default()
    unencrypted = ec2.create_volume(AvailabilityZone=ZONE, Size=1)
    assert unencrypted["Encrypted"] is False
    assert "KmsKeyId" not in unencrypted


def test_kms_key_id_without_encrypted_is_invalid_parameter_dependency(
    account: tuple[str, Any],
) -> None:
    _, ec2 = account
    ec2.enable_ebs_encryption_by_default()  # encryption by default does not stand in for it
    code, message, _ = aws_error(ec2.create_volume, AvailabilityZone=ZONE, Size=1, KmsKeyId=KEY_ID)
    assert code == "InvalidParameterDependency"
    assert "KmsKeyId" in message


def test_create_volume_with_a_named_key_reports_its_arn_and_refuses_a_malformed_one(
    account: tuple[str, Any],
) -> None:
    account_id, ec2 = account
    volume = ec2.create_volume(AvailabilityZone=ZONE, Size=1, Encrypted=True, KmsKeyId=KEY_ID)
    assert volume["KmsKeyId"] == f"arn:aws:kms:{REGION}:{account_id}:key/{KEY_ID}"
    code, _, _ = aws_error(
        ec2.create_volume, AvailabilityZone=ZONE, Size=1, Encrypted=True, KmsKeyId="nope"
    )
    assert code == "InvalidParameterValue"


def test_snapshot_of_an_encrypted_volume_is_encrypted_and_restores_encrypted_under_its_key(
    account: tuple[str, Any],
) -> None:
    account_id, ec2 = account
    volume_id = new_volume(ec2, Size=1, Encrypted=True, KmsKeyId="alias/snap")
    key = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]["KmsKeyId"]
    snapshot_id = new_snapshot(ec2, volume_id)
    snapshot = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
    assert (snapshot["Encrypted"], snapshot["KmsKeyId"]) == (True, key)
    restored = ec2.create_volume(AvailabilityZone=ZONE, SnapshotId=snapshot_id)
    assert (restored["Encrypted"], restored["KmsKeyId"]) == (True, key)
    other = ec2.create_volume(
        AvailabilityZone=ZONE, SnapshotId=snapshot_id, Encrypted=True, KmsKeyId=KEY_ID
    )
    assert other["KmsKeyId"] == f"arn:aws:kms:{REGION}:{account_id}:key/{KEY_ID}"
    for made in (restored, other):
        assert wait_state(ec2, made["VolumeId"])["Encrypted"] is True


def test_a_copy_of_an_encrypted_snapshot_keeps_its_data_key_and_restores_the_same_ciphertext(
    regions_server: ServerProcess, account: tuple[str, Any]
) -> None:
    _, ec2 = account
    volume_id = new_volume(ec2, Size=1, Encrypted=True)
    key = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]["KmsKeyId"]
    snapshot_id = new_snapshot(ec2, volume_id)
    copy = ec2.copy_snapshot(SourceRegion=REGION, SourceSnapshotId=snapshot_id)["SnapshotId"]
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[copy], WaiterConfig=FAST)
    described = ec2.describe_snapshots(SnapshotIds=[copy])["Snapshots"][0]
    assert (described["Encrypted"], described["KmsKeyId"]) == (True, key)

    restored = ec2.create_volume(AvailabilityZone=ZONE, SnapshotId=copy)["VolumeId"]
    assert wait_state(ec2, restored)["Encrypted"] is True  # its data key came with the copy
    data = regions_server.data_dir
    source_bytes = volume_segment(data, volume_id).read_bytes()
    assert source_bytes.startswith(LUKS_MAGIC)
    assert volume_segment(data, restored).read_bytes() == source_bytes  # the same ciphertext


def test_an_encrypted_copy_of_an_unencrypted_snapshot_is_refused_saying_why(
    account: tuple[str, Any],
) -> None:
    _, ec2 = account
    snapshot_id = new_snapshot(ec2, new_volume(ec2, Size=1))
    code, message, _ = aws_error(
        ec2.copy_snapshot, SourceRegion=REGION, SourceSnapshotId=snapshot_id, Encrypted=True
    )
    assert code == "UnsupportedOperation" and "unencrypted snapshot" in message


def test_an_encrypted_volume_from_an_unencrypted_snapshot_is_refused_saying_why(
    account: tuple[str, Any],
) -> None:
    _, ec2 = account
    snapshot_id = new_snapshot(ec2, new_volume(ec2, Size=1))
    code, message, _ = aws_error(
        ec2.create_volume, AvailabilityZone=ZONE, SnapshotId=snapshot_id, Encrypted=True
    )
    assert code == "UnsupportedOperation"
    assert "unencrypted snapshot" in message
    ec2.enable_ebs_encryption_by_default()
    code, message, _ = aws_error(ec2.create_volume, AvailabilityZone=ZONE, SnapshotId=snapshot_id)
    assert code == "UnsupportedOperation"
    assert "DisableEbsEncryptionByDefault" in message


def test_encrypted_snapshots_share_only_under_a_customer_key_and_never_publicly(
    regions_server: ServerProcess, account: tuple[str, Any]
) -> None:
    _, ec2 = account
    friend_id, friend_key = regions_server.new_account()
    managed = new_snapshot(ec2, new_volume(ec2, Size=1, Encrypted=True))
    code, message, _ = aws_error(
        ec2.modify_snapshot_attribute,
        SnapshotId=managed,
        Attribute="createVolumePermission",
        OperationType="add",
        UserIds=[friend_id],
    )
    assert code == "OperationNotPermitted" and "default key" in message
    custom = new_snapshot(ec2, new_volume(ec2, Size=1, Encrypted=True, KmsKeyId="alias/shared"))
    code, _, _ = aws_error(
        ec2.modify_snapshot_attribute,
        SnapshotId=custom,
        Attribute="createVolumePermission",
        OperationType="add",
        GroupNames=["all"],
    )
    assert code == "OperationNotPermitted"
    ec2.modify_snapshot_attribute(
        SnapshotId=custom,
        Attribute="createVolumePermission",
        OperationType="add",
        UserIds=[friend_id],
    )
    friend = client_of(regions_server, friend_key)
    restored = friend.create_volume(AvailabilityZone=ZONE, SnapshotId=custom)
    assert restored["Encrypted"] is True
    assert wait_state(friend, restored["VolumeId"])["Encrypted"] is True


# ---- a store that cannot encrypt -----------------------------------------------------------


@pytest.fixture
def plain_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server whose qemu-img cannot be found: encryption at rest is unavailable."""
    config = TEST_CONFIG + "\n[hostcmds qemu-img]\nversionCmd = /nonexistent/qemu-img --version\n"
    proc = ServerProcess(tmp_path / "data", config, backend="file")  # LUKS, as above
    proc.start()
    yield proc
    proc.stop()


def test_without_qemu_img_encrypted_volumes_are_refused_and_settings_still_work(
    plain_server: ServerProcess,
) -> None:
    ec2 = plain_server.client()
    code, message, _ = aws_error(ec2.create_volume, AvailabilityZone=ZONE, Size=1, Encrypted=True)
    assert code == "UnsupportedOperation"
    assert "cannot encrypt at rest" in message and "qemu-img" in message
    assert ec2.enable_ebs_encryption_by_default()["EbsEncryptionByDefault"] is True
    assert by_default(ec2) is True
    code, message, _ = aws_error(ec2.create_volume, AvailabilityZone=ZONE, Size=1)
    assert code == "UnsupportedOperation"
    assert "encryption by default is enabled" in message
    assert "DisableEbsEncryptionByDefault" in message
    ec2.disable_ebs_encryption_by_default()
    assert ec2.create_volume(AvailabilityZone=ZONE, Size=1)["Encrypted"] is False


# ---- the AWS CLI ---------------------------------------------------------------------------


def cli(server: ServerProcess, key: tuple[str, str], *args: str) -> Any:
    argv = [str(AWS), "ec2", *args, "--endpoint-url", server.url, "--output", "json"]
    done = subprocess.run(
        argv, env=server.cli_env(key), capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"{' '.join(args)}: {done.stderr}"
    return json.loads(done.stdout) if done.stdout.strip() else None


def test_cli_settings_round_trip_and_an_encrypted_volume(regions_server: ServerProcess) -> None:
    account_id, key = regions_server.new_account()
    assert cli(regions_server, key, "get-ebs-encryption-by-default") == {
        "EbsEncryptionByDefault": False,
        "SseType": "sse-ebs",
    }
    enabled = cli(regions_server, key, "enable-ebs-encryption-by-default")
    assert enabled == {"EbsEncryptionByDefault": True}
    assert cli(regions_server, key, "get-ebs-default-kms-key-id") == {"KmsKeyId": DEFAULT_ALIAS}
    arn = cli(regions_server, key, "modify-ebs-default-kms-key-id", "--kms-key-id", "alias/cli")
    match = ARN.fullmatch(arn["KmsKeyId"])
    assert match is not None and match["account"] == account_id
    assert cli(regions_server, key, "get-ebs-default-kms-key-id") == arn
    volume = cli(regions_server, key, "create-volume", "--availability-zone", ZONE, "--size", "1")
    assert (volume["Encrypted"], volume["KmsKeyId"]) == (True, arn["KmsKeyId"])
    assert cli(regions_server, key, "reset-ebs-default-kms-key-id") == {"KmsKeyId": DEFAULT_ALIAS}
    disabled = cli(regions_server, key, "disable-ebs-encryption-by-default")
    assert disabled == {"EbsEncryptionByDefault": False}
    volume = cli(regions_server, key, "create-volume", "--availability-zone", ZONE, "--size", "1")
    assert volume["Encrypted"] is False


def test_cli_refuses_a_malformed_key_id(regions_server: ServerProcess) -> None:
    _, key = regions_server.new_account()
    argv = [str(AWS), "ec2", "modify-ebs-default-kms-key-id", "--kms-key-id", "bogus"]
    done = subprocess.run(
        [*argv, "--endpoint-url", regions_server.url],
        env=regions_server.cli_env(key),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
    assert "InvalidParameterValue" in done.stderr
