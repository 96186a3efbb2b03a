"""The EC2 Query protocol on the wire: envelopes, element names, methods, signatures, errors.

Requests here are built by hand (signed by botocore's SigV4 signer, SigV2-signed, or unsigned)
and responses are read raw with xmltodict, so nothing is hidden by boto3's tolerance.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.api_support import (
    DRY_RUN_MESSAGE,
    EC2_NS,
    RawResponse,
    new_snapshot,
    new_volume,
    raw_request,
    unique,
)
from tests.server import REGION, ZONE, ServerProcess

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
VOLUME_ID = re.compile(r"vol-[0-9a-f]{17}")
SNAPSHOT_ID = re.compile(r"snap-[0-9a-f]{17}")


@pytest.fixture(scope="module")
def ec2(server: ServerProcess) -> Any:
    """One client for the module: building a boto3 client costs tens of milliseconds."""
    return server.client()


def is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


def success(response: RawResponse, action: str) -> dict[str, Any]:
    """The body of a well-formed EC2 success response, below its root element."""
    assert response.status == 200, response.body[:500]
    assert response.content_type.startswith("text/xml")
    root = response.xml()[f"{action}Response"]
    assert root["@xmlns"] == EC2_NS
    assert is_uuid(root["requestId"])
    assert next(iter(k for k in root if not k.startswith("@"))) == "requestId"
    return dict(root)


def failure(response: RawResponse, status: int = 400) -> tuple[str, str]:
    """(Code, Message) of a well-formed EC2 error response with the given status."""
    assert response.status == status, response.body[:500]
    assert response.content_type.startswith("text/xml")
    document = response.xml()
    assert list(document) == ["Response"]
    assert list(document["Response"]) == ["Errors", "RequestID"]
    assert is_uuid(document["Response"]["RequestID"])
    error = document["Response"]["Errors"]["Error"]
    assert list(error) == ["Code", "Message"]
    return error["Code"], error["Message"]


def call(server: ServerProcess, action: str, method: str = "POST", **params: str) -> RawResponse:
    return raw_request(
        server.url, {"Action": action, "Version": "2016-11-15", **params}, method=method
    )


# ---- envelopes and element names ------------------------------------------------------------


def test_create_and_describe_volume_elements_are_ec2_names(server: ServerProcess) -> None:
    run = unique()
    created = success(
        call(
            server,
            "CreateVolume",
            AvailabilityZone=ZONE,
            Size="2",
            VolumeType="gp3",
            **{
                "TagSpecification.1.ResourceType": "volume",
                "TagSpecification.1.Tag.1.Key": "run",
                "TagSpecification.1.Tag.1.Value": run,
            },
        ),
        "CreateVolume",
    )
    volume_id = created["volumeId"]
    assert VOLUME_ID.fullmatch(volume_id)
    assert created["status"] == "creating"
    assert created["size"] == "2" and created["volumeType"] == "gp3"
    assert created["iops"] == "3000" and created["throughput"] == "125"
    assert created["availabilityZone"] == ZONE
    assert created["snapshotId"] is None  # present and empty, as EC2 sends it
    assert TIMESTAMP.fullmatch(created["createTime"])
    assert created["encrypted"] == "false" and created["multiAttachEnabled"] == "false"
    assert created["tagSet"]["item"] == {"key": "run", "value": run}
    assert "State" not in created and "state" not in created

    server.client().get_waiter("volume_available").wait(
        VolumeIds=[volume_id], WaiterConfig={"Delay": 0.1}
    )
    described = success(
        call(server, "DescribeVolumes", **{"VolumeId.1": volume_id}), "DescribeVolumes"
    )
    item = described["volumeSet"]["item"]
    assert item["volumeId"] == volume_id and item["status"] == "available"
    assert item["attachmentSet"] is None  # <attachmentSet/>
    assert item["tagSet"]["item"] == {"key": "run", "value": run}
    assert item["createTime"] == created["createTime"]
    assert "nextToken" not in described

    deleted = success(call(server, "DeleteVolume", VolumeId=volume_id), "DeleteVolume")
    assert deleted["return"] == "true"


def test_snapshot_elements_are_ec2_names(server: ServerProcess, ec2: Any) -> None:
    volume_id = new_volume(ec2)
    created = success(
        call(server, "CreateSnapshot", VolumeId=volume_id, Description="d&<>"), "CreateSnapshot"
    )
    snapshot_id = created["snapshotId"]
    assert SNAPSHOT_ID.fullmatch(snapshot_id)
    assert (created["status"], created["progress"]) == ("pending", "0%")
    assert created["description"] == "d&<>"
    ec2.get_waiter("snapshot_completed").wait(
        SnapshotIds=[snapshot_id], WaiterConfig={"Delay": 0.1}
    )
    described = success(
        call(server, "DescribeSnapshots", **{"SnapshotId.1": snapshot_id}), "DescribeSnapshots"
    )
    item = described["snapshotSet"]["item"]
    assert (item["snapshotId"], item["volumeId"]) == (snapshot_id, volume_id)
    assert (item["status"], item["progress"]) == ("completed", "100%")
    assert item["volumeSize"] == "1" and item["ownerId"] == "000000000000"
    assert TIMESTAMP.fullmatch(item["startTime"]) and TIMESTAMP.fullmatch(item["completionTime"])
    assert item["encrypted"] == "false"
    assert "tagSet" not in item  # untagged: EC2 leaves the element out
    deleted = success(call(server, "DeleteSnapshot", SnapshotId=snapshot_id), "DeleteSnapshot")
    assert deleted["return"] == "true"
    ec2.delete_volume(VolumeId=volume_id)


def test_tag_elements_are_ec2_names(server: ServerProcess, ec2: Any) -> None:
    volume_id = new_volume(ec2)
    answer = success(
        call(
            server,
            "CreateTags",
            **{"ResourceId.1": volume_id, "Tag.1.Key": "k", "Tag.1.Value": "v"},
        ),
        "CreateTags",
    )
    assert answer["return"] == "true"
    described = success(
        call(
            server,
            "DescribeTags",
            **{"Filter.1.Name": "resource-id", "Filter.1.Value.1": volume_id},
        ),
        "DescribeTags",
    )
    assert described["tagSet"]["item"] == {
        "resourceId": volume_id,
        "resourceType": "volume",
        "key": "k",
        "value": "v",
    }
    deleted = success(
        call(server, "DeleteTags", **{"ResourceId.1": volume_id, "Tag.1.Key": "k"}), "DeleteTags"
    )
    assert deleted["return"] == "true"
    ec2.delete_volume(VolumeId=volume_id)


def test_zone_and_region_elements_are_ec2_names(server: ServerProcess) -> None:
    zones = success(call(server, "DescribeAvailabilityZones"), "DescribeAvailabilityZones")
    zone = zones["availabilityZoneInfo"]["item"]
    assert (zone["zoneName"], zone["zoneState"], zone["regionName"]) == (ZONE, "available", REGION)
    assert zone["zoneId"] == "use1-az1"
    regions = success(call(server, "DescribeRegions"), "DescribeRegions")
    region = regions["regionInfo"]["item"]
    assert region["regionName"] == REGION and region["regionEndpoint"]


def test_boto3_request_id_is_the_one_in_the_body(server: ServerProcess, ec2: Any) -> None:
    answer = ec2.describe_regions()
    request_id = answer["ResponseMetadata"]["RequestId"]
    assert is_uuid(request_id)
    again = ec2.describe_regions()["ResponseMetadata"]["RequestId"]
    assert again != request_id


def test_every_response_has_its_own_request_id(server: ServerProcess) -> None:
    ids = {
        success(call(server, "DescribeRegions"), "DescribeRegions")["requestId"] for _ in range(5)
    }
    ids |= {
        server_error_id(call(server, "DescribeVolumes", **{"VolumeId.1": "vol-0123456789abcdef0"}))
        for _ in range(5)
    }
    assert len(ids) == 10


def server_error_id(response: RawResponse) -> str:
    failure(response)
    return str(response.xml()["Response"]["RequestID"])


# ---- methods, versions and signatures -------------------------------------------------------


def test_get_with_query_parameters_is_served(server: ServerProcess, ec2: Any) -> None:
    volume_id = new_volume(ec2)
    answer = success(
        call(server, "DescribeVolumes", method="GET", **{"VolumeId.1": volume_id}),
        "DescribeVolumes",
    )
    assert answer["volumeSet"]["item"]["volumeId"] == volume_id
    ec2.delete_volume(VolumeId=volume_id)


def test_post_with_action_in_the_query_string_is_served(server: ServerProcess) -> None:
    response = raw_request(server.url, body=b"Version=2016-11-15", path="/?Action=DescribeRegions")
    success(response, "DescribeRegions")


@pytest.mark.parametrize("version", ["2016-11-15", "2015-10-01", "2014-06-15", "2013-02-01", None])
def test_any_api_version_is_accepted(server: ServerProcess, version: str | None) -> None:
    params = {"Action": "DescribeAvailabilityZones"}
    if version:
        params["Version"] = version
    success(raw_request(server.url, params), "DescribeAvailabilityZones")


@pytest.mark.parametrize("auth", ["v2", "v2-sha1"])
def test_sigv2_signed_request_is_served(server: ServerProcess, auth: str) -> None:
    params = {"Action": "DescribeVolumes", "Version": "2013-02-01"}
    success(raw_request(server.url, params, auth=auth), "DescribeVolumes")
    success(raw_request(server.url, params, method="GET", auth=auth), "DescribeVolumes")


def test_unsigned_request_is_refused_for_its_missing_access_key(server: ServerProcess) -> None:
    response = raw_request(server.url, {"Action": "DescribeRegions"}, auth=None)
    assert failure(response) == (
        "MissingParameter",
        "The request must contain the parameter AWSAccessKeyId",
    )


def sigv4_request(server: ServerProcess, region: str, params: dict[str, str]) -> RawResponse:
    request = AWSRequest(
        method="POST",
        url=server.url + "/",
        data=params,
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
    )
    SigV4Auth(Credentials("AKIDEXAMPLE", "secret"), "ec2", region).add_auth(request)
    prepared = request.prepare()
    body = prepared.body if isinstance(prepared.body, bytes) else str(prepared.body).encode()
    return raw_request(server.url, body=body, headers=dict(prepared.headers), auth=None)


def test_sigv4_request_for_the_configured_region_is_served(server: ServerProcess) -> None:
    answer = success(
        sigv4_request(server, REGION, {"Action": "DescribeAvailabilityZones"}),
        "DescribeAvailabilityZones",
    )
    assert answer["availabilityZoneInfo"]["item"]["zoneName"] == ZONE


@pytest.mark.parametrize("region", ["undefined-4242", "eu-west-1"])
def test_sigv4_request_for_an_unknown_region_is_served_as_the_default(
    server: ServerProcess, region: str
) -> None:
    answer = success(
        sigv4_request(server, region, {"Action": "DescribeAvailabilityZones"}),
        "DescribeAvailabilityZones",
    )
    assert answer["availabilityZoneInfo"]["item"]["regionName"] == REGION


# ---- errors ---------------------------------------------------------------------------------


def test_dry_run_is_412_dry_run_operation_with_the_exact_message(server: ServerProcess) -> None:
    for action, params in (
        ("DescribeVolumes", {}),
        ("CreateVolume", {"AvailabilityZone": ZONE, "Size": "1"}),
        ("DescribeSnapshots", {}),
        ("DescribeTags", {}),
        ("DescribeAvailabilityZones", {}),
        ("DescribeRegions", {}),
    ):
        response = call(server, action, DryRun="true", **params)
        assert failure(response, 412) == ("DryRunOperation", DRY_RUN_MESSAGE)


def test_dry_run_false_runs_the_request(server: ServerProcess) -> None:
    success(call(server, "DescribeRegions", DryRun="false"), "DescribeRegions")


@pytest.mark.parametrize(
    "action",
    ["Bogus", "describevolumes", "DESCRIBEVOLUMES", "RunInstances", "ListBuckets", "x" * 300],
)
def test_unknown_or_unsupported_action_is_invalid_action(
    server: ServerProcess, action: str
) -> None:
    for method in ("POST", "GET"):
        code, message = failure(call(server, action, method=method))
        assert code == "InvalidAction"
        assert len(message) < 200


def test_request_without_action_is_a_client_error(server: ServerProcess) -> None:
    for method in ("POST", "GET"):
        code, _ = failure(raw_request(server.url, {"Version": "2016-11-15"}, method=method))
        assert code in {"MissingAction", "InvalidAction", "MissingParameter"}


@pytest.mark.parametrize(
    ("action", "params", "code"),
    [
        ("DescribeVolumes", {"Foo": "1"}, "UnknownParameter"),
        ("DescribeVolumes", {"VolumeIds.1": "vol-0123456789abcdef0"}, "UnknownParameter"),
        ("DescribeVolumes", {"Filter.1.Bogus": "x"}, "UnknownParameter"),
        ("DeleteVolume", {}, "MissingParameter"),
        ("DeleteSnapshot", {}, "MissingParameter"),
        ("CreateSnapshot", {}, "MissingParameter"),
        ("CreateTags", {"ResourceId.1": "vol-0123456789abcdef0"}, "MissingParameter"),
        ("CreateTags", {"Tag.1.Key": "k"}, "MissingParameter"),
        ("DeleteTags", {}, "MissingParameter"),
        ("CreateVolume", {"AvailabilityZone": ZONE, "Size": "abc"}, "InvalidParameterValue"),
        ("CreateVolume", {"AvailabilityZone": ZONE, "Size": "1.5"}, "InvalidParameterValue"),
        (
            "CreateVolume",
            {"AvailabilityZone": ZONE, "Size": "99999999999999999999999"},
            "InvalidParameterValue",
        ),
        (
            "CreateVolume",
            {"AvailabilityZone": ZONE, "Size": "1", "Encrypted": "yes"},
            "InvalidParameterValue",
        ),
        ("DescribeVolumes", {"DryRun": "maybe"}, "InvalidParameterValue"),
        ("DescribeVolumes", {"MaxResults": "ten"}, "InvalidParameterValue"),
        ("DescribeVolumes", {"VolumeId.0": "vol-0123456789abcdef0"}, "InvalidParameterValue"),
        ("DescribeVolumes", {"VolumeId.x": "vol-0123456789abcdef0"}, "InvalidParameterValue"),
        ("DescribeVolumes", {"VolumeId": "vol-0123456789abcdef0"}, "InvalidParameterValue"),
        ("DescribeVolumes", {"Filter.1.Value.1": "x"}, "InvalidParameterValue"),
        ("DescribeVolumes", {"Filter.1.Name": "status", "Filter.1": "x"}, "InvalidParameterValue"),
    ],
)
def test_malformed_parameters_are_the_aws_error(
    server: ServerProcess, action: str, params: dict[str, str], code: str
) -> None:
    assert failure(call(server, action, **params))[0] == code


def test_repeated_parameter_is_a_client_error(server: ServerProcess) -> None:
    body = (
        b"Action=DescribeVolumes&VolumeId.1=vol-0123456789abcdef0&VolumeId.1=vol-0123456789abcdef1"
    )
    assert failure(raw_request(server.url, body=body))[0] == "InvalidParameterValue"


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"Action=DescribeVolumes&\xff\xfe=1", "application/x-www-form-urlencoded"),
        (b"Action=DescribeVolumes&%ff%fe=1", "application/x-www-form-urlencoded"),
        (b"Action=DescribeVolumes&%zz=1", "application/x-www-form-urlencoded"),
        (b'{"Action": "DescribeVolumes"}', "application/json"),
        (b"<Action>DescribeVolumes</Action>", "text/xml"),
        (b"\x00\x01\x02", "application/octet-stream"),
        (
            b"Action=DescribeVolumes&" + b"Filter.1.Value.1=x&" * 2,
            "application/x-www-form-urlencoded",
        ),
        (b"Action=DescribeVolumes&VolumeId.99999=vol-0123456789abcdef0", ""),
        (b"=&=&&==", "application/x-www-form-urlencoded"),
    ],
)
def test_malformed_bodies_are_client_errors_never_500(
    server: ServerProcess, body: bytes, content_type: str
) -> None:
    response = raw_request(server.url, body=body, headers={"Content-Type": content_type})
    failure(response)


def test_oversized_body_is_a_client_error(server: ServerProcess) -> None:
    body = b"Action=DescribeVolumes&Filter.1.Name=" + b"a" * (2 * 1024 * 1024)
    response = raw_request(server.url, body=body)
    assert 400 <= response.status < 500
    assert b"<Code>" in response.body and b"<html" not in response.body.lower()


@pytest.mark.parametrize(
    ("method", "path"), [("PUT", "/"), ("DELETE", "/"), ("GET", "/no/such/path")]
)
def test_other_methods_and_paths_are_client_errors_not_html(
    server: ServerProcess, method: str, path: str
) -> None:
    response = raw_request(server.url, {"Action": "DescribeRegions"}, method=method, path=path)
    assert 400 <= response.status < 500
    assert "html" not in response.content_type and b"<html" not in response.body.lower()


# ---- fuzzing: whatever arrives, the answer is a well-formed EC2 answer, never a 500 ---------

ACTIONS = [
    "CreateVolume",
    "DeleteVolume",
    "DescribeVolumes",
    "CreateSnapshot",
    "DeleteSnapshot",
    "DescribeSnapshots",
    "CreateTags",
    "DeleteTags",
    "DescribeTags",
    "DescribeAvailabilityZones",
    "DescribeRegions",
]
NAMES = [
    "VolumeId",
    "VolumeId.1",
    "SnapshotId",
    "SnapshotId.1",
    "Size",
    "Iops",
    "Throughput",
    "VolumeType",
    "AvailabilityZone",
    "AvailabilityZoneId",
    "MaxResults",
    "NextToken",
    "Filter.1.Name",
    "Filter.1.Value.1",
    "Filter.2.Value.1",
    "Owner.1",
    "RestorableBy.1",
    "ResourceId.1",
    "Tag.1.Key",
    "Tag.1.Value",
    "TagSpecification.1.ResourceType",
    "TagSpecification.1.Tag.1.Key",
    "Encrypted",
    "MultiAttachEnabled",
    "ClientToken",
    "Description",
    "ZoneName.1",
    "RegionName.1",
    "DryRun",
]
VALUES = st.one_of(
    st.sampled_from(
        [
            "",
            "1",
            "0",
            "-1",
            "5",
            "501",
            "true",
            "false",
            "gp3",
            "io2",
            "sc2",
            ZONE,
            "use1-az1",
            "vol-0123456789abcdef0",
            "snap-0123456789abcdef0",
            "status",
            "tag:Name",
            "volume",
            "self",
            "*",
            "?",
            "\\",
            "[",
            "%",
            "aws:x",
            "99999999999999999999",
        ]
    ),
    st.text(max_size=40),
)
PARAMS = st.lists(
    st.tuples(st.one_of(st.sampled_from(NAMES), st.text(min_size=1, max_size=20)), VALUES),
    max_size=6,
    unique_by=lambda pair: pair[0],
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(action=st.sampled_from(ACTIONS), params=PARAMS, method=st.sampled_from(["POST", "GET"]))
def test_any_parameters_get_a_well_formed_answer_never_a_500(
    server: ServerProcess, action: str, params: list[tuple[str, str]], method: str
) -> None:
    # Deletions need exact ids, which the strategy cannot guess; nothing of other tests is hit.
    pairs = [("Action", action), *[(k, v) for k, v in params if k not in ("Action", "Version")]]
    response = raw_request(server.url, pairs, method=method)
    assert response.status < 500, response.body[:500]
    if response.status == 200:
        success(response, action)
    else:
        failure(response, response.status)


def test_snapshot_ids_and_volume_ids_have_17_hex_digits(ec2: Any) -> None:
    volume_id = new_volume(ec2)
    snapshot_id = new_snapshot(ec2, volume_id)
    ec2.delete_snapshot(SnapshotId=snapshot_id)
    ec2.delete_volume(VolumeId=volume_id)
    assert VOLUME_ID.fullmatch(volume_id) and SNAPSHOT_ID.fullmatch(snapshot_id)
