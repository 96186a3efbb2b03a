"""DescribeVolumeAttribute, ModifyVolumeAttribute, EnableVolumeIO and DescribeVolumeStatus over
HTTP with boto3 and the AWS CLI: statuses come from the real backing files, which the tests
remove, shrink and put back behind the server's back."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.config import Config as BotoConfig

from backends.blockstore import LocalBlockStore
from backends.file import FileStorage
from ebsemu.app import build_services
from ebsemu.config import Config
from ebsemu.model import GIB, Volume, VolumeState, VolumeType, new_id, utcnow
from ebsemu.service.core import Core
from ebsemu.service.jobs import Jobs
from ebsemu.service.storage_hosts import StorageHostEntry, StorageHosts
from ebsemu.service.volume_status import EXPORT_LOST, STORAGE_LOST
from ebsemu.store.sqlite import SqliteStore
from ebsemu.timefmt import to_wire
from tests.api_support import aws_error, new_volume, raw_request, volume_segment
from tests.server import TEST_CONFIG, ServerProcess
from tests.test_api_cli import aws, aws_json

OTHER_ACCOUNT = "444455556666"
EVENT = "potential-data-inconsistency"


@dataclass
class Lab:
    server: ServerProcess
    ec2: Any
    other: Any  # another account's client


@pytest.fixture(scope="session")
def backend_kind() -> str:
    """The file backend for this module's servers too: the tests hide volumes' segment files."""
    return "file"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    # The file backend: the tests impair volumes by hiding or truncating their segment files.
    server = ServerProcess(
        tmp_path_factory.mktemp("volstatus") / "data", TEST_CONFIG, backend="file"
    )
    server.start()
    try:
        _, key = server.new_account(OTHER_ACCOUNT)
        retries = BotoConfig(retries={"total_max_attempts": 1})
        yield Lab(server, server.client(config=retries), server.client(key=key, config=retries))
    finally:
        server.stop()


def status_of(ec2: Any, volume_id: str) -> dict[str, Any]:
    [item] = ec2.describe_volume_status(VolumeIds=[volume_id])["VolumeStatuses"]
    assert item["VolumeId"] == volume_id
    return dict(item)


def details(item: dict[str, Any]) -> dict[str, str]:
    return {d["Name"]: d["Status"] for d in item["VolumeStatus"]["Details"]}


def hide(segment: Path) -> Path:
    """Move the volume's backing file away (as a lost disk would); where it went."""
    aside = segment.with_name(segment.name + ".aside")
    os.rename(segment, aside)
    return aside


# ---- attributes ----------------------------------------------------------------------------


def test_auto_enable_io_is_false_by_default_and_modify_sets_it(lab: Lab) -> None:
    volume_id = new_volume(lab.ec2)
    got = lab.ec2.describe_volume_attribute(VolumeId=volume_id, Attribute="autoEnableIO")
    assert got["VolumeId"] == volume_id
    assert got["AutoEnableIO"] == {"Value": False}
    assert "ProductCodes" not in got

    lab.ec2.modify_volume_attribute(VolumeId=volume_id, AutoEnableIO={"Value": True})
    got = lab.ec2.describe_volume_attribute(VolumeId=volume_id, Attribute="autoEnableIO")
    assert got["AutoEnableIO"] == {"Value": True}
    lab.ec2.modify_volume_attribute(VolumeId=volume_id, AutoEnableIO={"Value": False})
    got = lab.ec2.describe_volume_attribute(VolumeId=volume_id, Attribute="autoEnableIO")
    assert got["AutoEnableIO"] == {"Value": False}


def test_product_codes_are_an_empty_list(lab: Lab) -> None:
    volume_id = new_volume(lab.ec2)
    got = lab.ec2.describe_volume_attribute(VolumeId=volume_id, Attribute="productCodes")
    assert got["VolumeId"] == volume_id
    assert got["ProductCodes"] == []
    assert "AutoEnableIO" not in got


def test_auto_enable_io_survives_a_restart(fresh_server: ServerProcess) -> None:
    ec2 = fresh_server.client()
    volume_id = new_volume(ec2)
    ec2.modify_volume_attribute(VolumeId=volume_id, AutoEnableIO={"Value": True})
    fresh_server.restart()
    ec2 = fresh_server.client()
    got = ec2.describe_volume_attribute(VolumeId=volume_id, Attribute="autoEnableIO")
    assert got["AutoEnableIO"] == {"Value": True}


def test_an_unknown_attribute_is_invalid_parameter_value(lab: Lab) -> None:
    volume_id = new_volume(lab.ec2)
    code, message, status = aws_error(
        lab.ec2.describe_volume_attribute, VolumeId=volume_id, Attribute="size"
    )
    assert (code, status) == ("InvalidParameterValue", 400)
    assert message == "Value (size) for parameter attribute is invalid. Unknown attribute."


def test_a_missing_attribute_or_auto_enable_io_value_is_refused(lab: Lab) -> None:
    volume_id = new_volume(lab.ec2)
    answer = raw_request(
        lab.server.url,
        {"Action": "DescribeVolumeAttribute", "Version": "2016-11-15", "VolumeId": volume_id},
    )
    assert answer.status == 400
    assert answer.error()[0] == "MissingParameter"
    answer = raw_request(
        lab.server.url,
        {"Action": "ModifyVolumeAttribute", "Version": "2016-11-15", "VolumeId": volume_id},
    )
    assert answer.status == 400
    assert answer.error() == ("InvalidRequest", "The request received was invalid.")
    code, _, status = aws_error(
        lab.ec2.modify_volume_attribute, VolumeId=volume_id, AutoEnableIO={}
    )
    assert (code, status) == ("InvalidRequest", 400)


DRY_RUN_CALLS: list[tuple[str, dict[str, Any]]] = [
    ("describe_volume_attribute", {"Attribute": "autoEnableIO"}),
    ("modify_volume_attribute", {"AutoEnableIO": {"Value": True}}),
    ("enable_volume_io", {}),
    ("describe_volume_status", {}),
]


@pytest.mark.parametrize(("operation", "extra"), DRY_RUN_CALLS, ids=[c[0] for c in DRY_RUN_CALLS])
def test_dry_run_answers_dry_run_operation_and_changes_nothing(
    lab: Lab, operation: str, extra: dict[str, Any]
) -> None:
    volume_id = new_volume(lab.ec2)
    ids = {"VolumeIds": [volume_id]} if operation == "describe_volume_status" else {}
    target = {} if ids else {"VolumeId": volume_id}
    code, message, status = aws_error(
        getattr(lab.ec2, operation), DryRun=True, **target, **ids, **extra
    )
    assert (code, message, status) == (
        "DryRunOperation",
        "Request would have succeeded, but DryRun flag is set.",
        412,
    )
    got = lab.ec2.describe_volume_attribute(VolumeId=volume_id, Attribute="autoEnableIO")
    assert got["AutoEnableIO"] == {"Value": False}


CALLS: list[tuple[str, dict[str, Any]]] = [
    ("describe_volume_attribute", {"Attribute": "autoEnableIO"}),
    ("modify_volume_attribute", {"AutoEnableIO": {"Value": True}}),
    ("enable_volume_io", {}),
]


@pytest.mark.parametrize(("operation", "extra"), CALLS, ids=[c[0] for c in CALLS])
def test_absent_malformed_and_other_accounts_volumes(
    lab: Lab, operation: str, extra: dict[str, Any]
) -> None:
    absent = "vol-0123456789abcdef0"
    code, message, status = aws_error(getattr(lab.ec2, operation), VolumeId=absent, **extra)
    assert (code, status) == ("InvalidVolume.NotFound", 400)
    assert message == f"The volume '{absent}' does not exist."

    code, _, status = aws_error(getattr(lab.ec2, operation), VolumeId="vol-nothex", **extra)
    assert (code, status) == ("InvalidVolumeID.Malformed", 400)

    mine = new_volume(lab.ec2)
    code, message, status = aws_error(getattr(lab.other, operation), VolumeId=mine, **extra)
    assert (code, status) == ("InvalidVolume.NotFound", 400)
    assert message == f"The volume '{mine}' does not exist."
    got = lab.ec2.describe_volume_attribute(VolumeId=mine, Attribute="autoEnableIO")
    assert got["AutoEnableIO"] == {"Value": False}  # the other account changed nothing


def test_describe_volume_status_hides_other_accounts_volumes(lab: Lab) -> None:
    mine = new_volume(lab.ec2)
    code, message, _ = aws_error(lab.other.describe_volume_status, VolumeIds=[mine])
    assert code == "InvalidVolume.NotFound"
    assert message == f"The volume '{mine}' does not exist."
    listed = lab.other.describe_volume_status()["VolumeStatuses"]
    assert mine not in [item["VolumeId"] for item in listed]


# ---- status from the backing storage -------------------------------------------------------


def test_a_healthy_volume_is_ok_with_io_enabled_passed(lab: Lab) -> None:
    volume_id = new_volume(lab.ec2)
    item = status_of(lab.ec2, volume_id)
    assert item["VolumeStatus"]["Status"] == "ok"
    assert details(item) == {"io-enabled": "passed", "io-performance": "not-applicable"}
    assert item["Events"] == [] and item["Actions"] == []
    assert item["AvailabilityZone"] == "us-east-1a"
    assert item["AvailabilityZoneId"] == "use1-az1"


def test_provisioned_iops_volumes_report_io_performance_normal(lab: Lab) -> None:
    volume_id = new_volume(lab.ec2, Size=4, VolumeType="io1", Iops=100)
    assert details(status_of(lab.ec2, volume_id))["io-performance"] == "normal"


def test_a_removed_backing_file_impairs_the_volume_and_disables_io_until_enable_volume_io(
    lab: Lab,
) -> None:
    ec2 = lab.ec2
    volume_id = new_volume(ec2)
    segment = volume_segment(lab.server.data_dir, volume_id)
    aside = hide(segment)

    item = status_of(ec2, volume_id)
    assert item["VolumeStatus"]["Status"] == "impaired"
    assert details(item)["io-enabled"] == "failed"
    [event] = item["Events"]
    assert event["EventType"] == EVENT
    assert event["EventId"].startswith("evol-")
    assert event["Description"] == STORAGE_LOST
    assert [(a["Code"], a["EventId"], a["EventType"]) for a in item["Actions"]] == [
        ("enable-volume-io", event["EventId"], EVENT)
    ]
    assert status_of(ec2, volume_id)["Events"] == [event]  # one incident, not one per call

    os.rename(aside, segment)
    item = status_of(ec2, volume_id)  # the data is back, but I/O stays off until enabled
    assert item["VolumeStatus"]["Status"] == "impaired"
    assert details(item)["io-enabled"] == "failed"
    assert [a["Code"] for a in item["Actions"]] == ["enable-volume-io"]
    assert item["Events"] == [event]

    ec2.enable_volume_io(VolumeId=volume_id)
    item = status_of(ec2, volume_id)
    assert item["VolumeStatus"]["Status"] == "ok"
    assert details(item)["io-enabled"] == "passed"
    assert item["Events"] == [] and item["Actions"] == []


def test_enable_volume_io_while_the_data_is_still_gone_leaves_it_impaired_without_action(
    lab: Lab,
) -> None:
    volume_id = new_volume(lab.ec2)
    shutil.rmtree(volume_segment(lab.server.data_dir, volume_id).parent)
    assert [a["Code"] for a in status_of(lab.ec2, volume_id)["Actions"]] == ["enable-volume-io"]
    lab.ec2.enable_volume_io(VolumeId=volume_id)
    item = status_of(lab.ec2, volume_id)
    assert item["VolumeStatus"]["Status"] == "impaired"
    assert details(item)["io-enabled"] == "failed"
    assert item["Actions"] == []
    assert [e["EventType"] for e in item["Events"]] == [EVENT]


def test_with_auto_enable_io_the_volume_is_ok_as_soon_as_its_data_is_back(lab: Lab) -> None:
    volume_id = new_volume(lab.ec2)
    lab.ec2.modify_volume_attribute(VolumeId=volume_id, AutoEnableIO={"Value": True})
    segment = volume_segment(lab.server.data_dir, volume_id)
    aside = hide(segment)
    item = status_of(lab.ec2, volume_id)
    assert item["VolumeStatus"]["Status"] == "impaired"
    assert details(item)["io-enabled"] == "failed"
    assert [e["EventType"] for e in item["Events"]] == [EVENT]
    assert item["Actions"] == []  # I/O is not disabled: nothing to enable

    os.rename(aside, segment)
    item = status_of(lab.ec2, volume_id)
    assert item["VolumeStatus"]["Status"] == "ok"
    assert item["Events"] == [] and item["Actions"] == []


def test_a_backing_file_of_the_wrong_size_impairs_the_volume(lab: Lab) -> None:
    volume_id = new_volume(lab.ec2)
    os.truncate(volume_segment(lab.server.data_dir, volume_id), GIB // 2)
    item = status_of(lab.ec2, volume_id)
    assert item["VolumeStatus"]["Status"] == "impaired"
    assert [e["Description"] for e in item["Events"]] == [STORAGE_LOST]


def test_volumes_not_created_or_busy_have_insufficient_data(tmp_path: Path) -> None:
    """A creating or error volume is not checked, nor one a job is working on: its status
    is insufficient-data. Once the job is done, the check runs again."""

    async def scenario() -> list[list[tuple[str, str, str]]]:
        config = Config(data_dir=tmp_path)
        store = SqliteStore(config.database)
        await store.open()
        try:
            core = Core(
                config=config,
                store=store,
                storage_hosts=StorageHosts(
                    [StorageHostEntry("default", None, FileStorage(config.volumes_dir), "file")]
                ),
                blocks=LocalBlockStore(config.blocks_dir),
                jobs=Jobs(store),
            )
            service = build_services(core).volume_status
            volumes = []
            for state, vtype in (
                (VolumeState.CREATING, VolumeType.GP2),
                (VolumeState.ERROR, VolumeType.IO2),
                (VolumeState.AVAILABLE, VolumeType.GP3),
            ):
                volume = Volume(
                    id=new_id("vol"),
                    owner_id=config.account_id,
                    region="us-east-1",
                    zone="us-east-1a",
                    size_gib=1,
                    volume_type=vtype,
                    state=state,
                    create_time=utcnow(),
                )
                volumes.append(await store.insert_volume(volume))
            await core.storage_for(volumes[2]).create(volumes[2].id, GIB)
            release = asyncio.Event()

            async def work(resource_id: str, payload: dict[str, Any]) -> None:
                await release.wait()

            core.jobs.register("test_work", work)
            await core.jobs.submit("test_work", volumes[2].id)
            seen = [
                [
                    (s.status, s.io_enabled, s.io_performance)
                    for s in await service.statuses(volumes)
                ]
            ]
            release.set()
            await core.jobs.idle()
            seen.append(
                [
                    (s.status, s.io_enabled, s.io_performance)
                    for s in await service.statuses(volumes)
                ]
            )
            return seen
        finally:
            await store.close()

    busy, done = asyncio.run(scenario())
    insufficient = ("insufficient-data", "insufficient-data", "not-applicable")
    assert busy == [
        insufficient,
        ("insufficient-data", "insufficient-data", "insufficient-data"),
        insufficient,
    ]
    assert done[:2] == busy[:2]
    assert done[2] == ("ok", "passed", "not-applicable")


# ---- filters and pages ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair(lab: Lab) -> tuple[str, str, dict[str, Any]]:
    """A healthy volume, an impaired one (I/O disabled), and the impaired one's event."""
    healthy = new_volume(lab.ec2)
    impaired = new_volume(lab.ec2)
    hide(volume_segment(lab.server.data_dir, impaired))
    [event] = status_of(lab.ec2, impaired)["Events"]
    return healthy, impaired, event


def filtered(lab: Lab, pair: tuple[str, str, dict[str, Any]], name: str, *values: str) -> set[str]:
    healthy, impaired, _ = pair
    found = lab.ec2.describe_volume_status(
        VolumeIds=[healthy, impaired], Filters=[{"Name": name, "Values": list(values)}]
    )["VolumeStatuses"]
    return {item["VolumeId"] for item in found}


def test_every_documented_filter(lab: Lab, pair: tuple[str, str, dict[str, Any]]) -> None:
    healthy, impaired, event = pair
    both = {healthy, impaired}
    since = to_wire(event["NotBefore"])
    expectations: list[tuple[str, tuple[str, ...], set[str]]] = [
        ("volume-status.status", ("impaired",), {impaired}),
        ("volume-status.status", ("ok",), {healthy}),
        ("volume-status.status", ("ok", "impaired"), both),
        ("volume-status.status", ("warning",), set()),
        ("volume-status.details-name", ("io-enabled",), both),
        ("volume-status.details-name", ("initialization-state",), set()),
        ("volume-status.details-status", ("failed",), {impaired}),
        ("volume-status.details-status", ("passed",), {healthy}),
        ("volume-status.details-status", ("not-applicable",), both),
        ("availability-zone", ("us-east-1a",), both),
        ("availability-zone", ("us-east-1b",), set()),
        ("availability-zone", ("us-east-1?",), both),
        ("action.code", ("enable-volume-io",), {impaired}),
        ("action.description", ("Enable volume I/O",), {impaired}),
        ("action.description", ("*I/O",), {impaired}),
        ("action.event-id", (event["EventId"],), {impaired}),
        ("action.event-id", ("evol-00000000000000000",), set()),
        ("event.event-id", (event["EventId"],), {impaired}),
        ("event.event-type", (EVENT,), {impaired}),
        ("event.description", ("*missing or damaged*",), {impaired}),
        ("event.description", (EXPORT_LOST,), set()),
        ("event.not-before", (since,), {impaired}),
        ("event.not-before", (since[:10] + "*",), {impaired}),
        ("event.not-after", ("*",), set()),
        ("attachment-status.instance-id", ("*",), set()),
    ]
    for name, values, expected in expectations:
        assert filtered(lab, pair, name, *values) == expected, (name, values)
    together = lab.ec2.describe_volume_status(
        VolumeIds=[healthy, impaired],
        Filters=[
            {"Name": "volume-status.status", "Values": ["impaired", "ok"]},
            {"Name": "action.code", "Values": ["enable-volume-io"]},
        ],
    )["VolumeStatuses"]
    assert [item["VolumeId"] for item in together] == [impaired]  # filters are ANDed


def test_an_unknown_filter_is_invalid_parameter_value(lab: Lab) -> None:
    code, message, status = aws_error(
        lab.ec2.describe_volume_status, Filters=[{"Name": "volume-status.colour", "Values": ["x"]}]
    )
    assert (code, status) == ("InvalidParameterValue", 400)
    assert message == "The filter 'volume-status.colour' is invalid"


def test_pages_with_max_results_and_next_token(fresh_server: ServerProcess) -> None:
    ec2 = fresh_server.client()
    created = [new_volume(ec2, wait=False) for _ in range(7)]
    ec2.get_waiter("volume_available").wait(
        VolumeIds=created, WaiterConfig={"Delay": 0.1, "MaxAttempts": 300}
    )
    first = ec2.describe_volume_status(MaxResults=5)
    assert len(first["VolumeStatuses"]) == 5
    second = ec2.describe_volume_status(MaxResults=5, NextToken=first["NextToken"])
    assert len(second["VolumeStatuses"]) == 2
    assert "NextToken" not in second
    listed = [i["VolumeId"] for i in first["VolumeStatuses"] + second["VolumeStatuses"]]
    assert listed == created

    pages = ec2.get_paginator("describe_volume_status").paginate(PaginationConfig={"PageSize": 5})
    assert [i["VolumeId"] for page in pages for i in page["VolumeStatuses"]] == created

    for volume_id in created[1:3]:
        hide(volume_segment(fresh_server.data_dir, volume_id))
    impaired = ec2.describe_volume_status(
        MaxResults=5, Filters=[{"Name": "volume-status.status", "Values": ["impaired"]}]
    )
    assert [i["VolumeId"] for i in impaired["VolumeStatuses"]] == created[1:3]
    assert "NextToken" not in impaired
    ok_page = ec2.describe_volume_status(
        MaxResults=5, Filters=[{"Name": "volume-status.status", "Values": ["ok"]}]
    )
    assert [i["VolumeId"] for i in ok_page["VolumeStatuses"]] == [created[0], *created[3:7]]
    assert "NextToken" not in ok_page  # exactly five matched, none after them


def test_max_results_rules_and_bad_tokens(lab: Lab) -> None:
    volume_id = new_volume(lab.ec2)
    code, _, status = aws_error(lab.ec2.describe_volume_status, MaxResults=4)
    assert (code, status) == ("InvalidParameterValue", 400)
    code, _, status = aws_error(lab.ec2.describe_volume_status, MaxResults=5, VolumeIds=[volume_id])
    assert (code, status) == ("InvalidParameterCombination", 400)
    code, _, status = aws_error(lab.ec2.describe_volume_status, NextToken="bm90LWEtdG9rZW4")
    assert (code, status) == ("InvalidPaginationToken", 400)
    token = lab.ec2.describe_volumes(MaxResults=5)["NextToken"]  # another call's token
    code, _, _ = aws_error(lab.ec2.describe_volume_status, NextToken=token)
    assert code == "InvalidPaginationToken"


def test_an_absent_or_malformed_id_is_refused(lab: Lab) -> None:
    code, message, _ = aws_error(
        lab.ec2.describe_volume_status, VolumeIds=["vol-0123456789abcdef1"]
    )
    assert code == "InvalidVolume.NotFound"
    assert message == "The volume 'vol-0123456789abcdef1' does not exist."
    code, _, _ = aws_error(lab.ec2.describe_volume_status, VolumeIds=["volume-1"])
    assert code == "InvalidVolumeID.Malformed"


# ---- the AWS CLI ---------------------------------------------------------------------------


def test_the_aws_cli_drives_attributes_status_and_enable_volume_io(lab: Lab) -> None:
    server = lab.server
    volume_id = new_volume(lab.ec2)
    got = aws_json(
        server, "describe-volume-attribute", "--volume-id", volume_id, "--attribute", "autoEnableIO"
    )
    assert got == {"AutoEnableIO": {"Value": False}, "VolumeId": volume_id}
    got = aws_json(
        server, "describe-volume-attribute", "--volume-id", volume_id, "--attribute", "productCodes"
    )
    assert got == {"ProductCodes": [], "VolumeId": volume_id}
    aws(server, "modify-volume-attribute", "--volume-id", volume_id, "--auto-enable-io")
    got = aws_json(
        server, "describe-volume-attribute", "--volume-id", volume_id, "--attribute", "autoEnableIO"
    )
    assert got["AutoEnableIO"] == {"Value": True}
    aws(server, "modify-volume-attribute", "--volume-id", volume_id, "--no-auto-enable-io")

    hide(volume_segment(server.data_dir, volume_id))
    [item] = aws_json(server, "describe-volume-status", "--volume-ids", volume_id)["VolumeStatuses"]
    assert item["VolumeStatus"]["Status"] == "impaired"
    assert [a["Code"] for a in item["Actions"]] == ["enable-volume-io"]
    aws(server, "enable-volume-io", "--volume-id", volume_id)
    listed = aws_json(
        server,
        "describe-volume-status",
        "--filters", "Name=action.code,Values=enable-volume-io",
    )["VolumeStatuses"]  # fmt: skip
    assert volume_id not in [i["VolumeId"] for i in listed]

    done = aws(
        server,
        "describe-volume-attribute", "--volume-id", volume_id, "--attribute", "size",
        check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "InvalidParameterValue" in done.stderr
    done = aws(server, "enable-volume-io", "--volume-id", "vol-0123456789abcdef0", check=False)
    assert "InvalidVolume.NotFound" in done.stderr
