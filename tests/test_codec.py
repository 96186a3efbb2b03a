"""The EC2 Query codec, checked against botocore's own serializer and parser."""

from __future__ import annotations

import base64
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qsl

import pytest
from botocore.awsrequest import AWSRequest
from botocore.model import OperationModel, Shape
from botocore.parsers import create_parser
from botocore.serialize import create_serializer
from hypothesis import given, settings
from hypothesis import strategies as st

from ebsemu.api.codec import (
    COMMON_PARAMS,
    ec2_model,
    parse_query,
    serialize_error,
    serialize_response,
)
from ebsemu.errors import (
    ApiError,
    InvalidParameterValue,
    MissingParameter,
    UnknownParameter,
)

NS = "{http://ec2.amazonaws.com/doc/2016-11-15/}"


def op(name: str) -> OperationModel:
    return ec2_model().operation_model(name)


def all_operations() -> Iterator[OperationModel]:
    model = ec2_model()
    for name in model.operation_names:
        yield model.operation_model(name)


# --- generic value generator ------------------------------------------------------------------


class ValueMaker:
    """Fills every member of a shape with varied, valid values (lists of two)."""

    def __init__(self, *, for_output: bool) -> None:
        self.count = 0
        self.for_output = for_output

    def make(self, shape: Shape, depth: int = 0) -> Any:
        self.count += 1
        n = self.count
        kind = shape.type_name
        if kind == "structure":
            assert depth < 30, f"unexpectedly deep shape {shape.name}"
            return {name: self.make(member, depth + 1) for name, member in shape.members.items()}
        if kind == "list":
            size = max(2, int(shape.metadata.get("min", 0)))
            return [self.make(shape.member, depth + 1) for _ in range(size)]
        if kind == "string":
            text = f"{shape.name}-{n} <&>\"' ]]> é雪🙂 %+=\t\n"
            return text + "\r" if self.for_output else text
        if kind in ("integer", "long"):
            base = 2**40 if kind == "long" else 1000
            return max(int(shape.metadata.get("min", 0)), base + n)
        if kind in ("double", "float"):
            return n + 0.25
        if kind == "boolean":
            return n % 2 == 0
        if kind == "timestamp":
            micro = (n * 1000) % 1_000_000 if self.for_output else n % 1_000_000
            return datetime(2024, 1, 2, 3, 4, 5, micro, tzinfo=UTC) + timedelta(days=n)
        if kind == "blob":
            return bytes([n % 256, 0, 255]) + "é".encode()
        raise AssertionError(f"no generator for {kind}")


def wire_pairs(operation: OperationModel, params: dict[str, Any]) -> list[tuple[str, str]]:
    """What boto3 puts on the wire for ``params``, decoded as the server sees it."""
    request = create_serializer("ec2").serialize_to_request(params, operation)
    body = AWSRequest(method="POST", url="https://ec2.test/", data=request["body"]).prepare().body
    assert isinstance(body, str)
    return parse_qsl(body, keep_blank_values=True, strict_parsing=True)


def botocore_parse(operation: OperationModel, body: bytes, status: int = 200) -> dict[str, Any]:
    response = {"body": body, "headers": {}, "status_code": status}
    parsed: dict[str, Any] = create_parser("ec2").parse(response, operation.output_shape)
    return parsed


# --- round trips against botocore -------------------------------------------------------------


def test_every_operation_input_round_trips_through_botocore_serializer() -> None:
    failures: list[str] = []
    checked = 0
    for operation in all_operations():
        if operation.input_shape is None:
            continue
        params = ValueMaker(for_output=False).make(operation.input_shape)
        pairs = wire_pairs(operation, params)
        assert ("Action", operation.name) in pairs
        try:
            parsed = parse_query(operation, pairs)
        except ApiError as error:
            failures.append(f"{operation.name}: {error.code} {error.message}")
            continue
        if parsed != params:
            failures.append(f"{operation.name}: parsed {parsed!r:.300}")
        checked += 1
    assert failures == []
    assert checked > 700


def test_every_operation_output_round_trips_through_botocore_parser() -> None:
    failures: list[str] = []
    checked = 0
    for operation in all_operations():
        if operation.output_shape is None:
            continue
        result = ValueMaker(for_output=True).make(operation.output_shape)
        body = serialize_response(operation, result, "req-7")
        parsed = botocore_parse(operation, body)
        if parsed.pop("ResponseMetadata")["RequestId"] != "req-7" or parsed != result:
            failures.append(f"{operation.name}: parsed {parsed!r:.300}")
        checked += 1
    assert failures == []
    assert checked > 700


def test_operations_without_output_answer_return_true() -> None:
    names = [o.name for o in all_operations() if o.output_shape is None]
    assert "DeleteVolume" in names
    for name in names:
        root = ET.fromstring(serialize_response(op(name), {}, "r-1"))
        assert root.tag == f"{NS}{name}Response"
        assert [(child.tag, child.text) for child in root] == [
            (f"{NS}requestId", "r-1"),
            (f"{NS}return", "true"),
        ]
        parsed = botocore_parse(op(name), serialize_response(op(name), {}, "r-1"))
        assert parsed.pop("ResponseMetadata")["RequestId"] == "r-1"
        assert parsed == {}


def test_error_body_parses_in_botocore_with_code_message_and_request_id() -> None:
    body = serialize_error("InvalidVolume.NotFound", "The volume 'vol-1<&>' does not exist.", "r-9")
    parsed = botocore_parse(op("DescribeVolumes"), body, status=400)
    assert parsed["Error"]["Code"] == "InvalidVolume.NotFound"
    assert parsed["Error"]["Message"] == "The volume 'vol-1<&>' does not exist."
    assert parsed["ResponseMetadata"]["RequestId"] == "r-9"
    assert body.startswith(b'<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error>')


# --- parse_query: wire forms ------------------------------------------------------------------


def test_list_items_are_ordered_by_numeric_index_and_gaps_are_allowed() -> None:
    pairs = [("VolumeId.10", "c"), ("VolumeId.3", "b"), ("VolumeId.1", "a")]
    assert parse_query(op("DescribeVolumes"), pairs) == {"VolumeIds": ["a", "b", "c"]}


def test_filters_and_tag_specifications_parse_into_boto3_shapes() -> None:
    pairs = [
        ("Filter.1.Name", "tag:Name"),
        ("Filter.1.Value.2", "y"),
        ("Filter.1.Value.1", "x"),
        ("Filter.2.Name", "status"),
        ("Filter.2.Value.1", "available"),
    ]
    assert parse_query(op("DescribeVolumes"), pairs) == {
        "Filters": [
            {"Name": "tag:Name", "Values": ["x", "y"]},
            {"Name": "status", "Values": ["available"]},
        ]
    }
    create = [
        ("AvailabilityZone", "az-1"),
        ("Size", "8"),
        ("Encrypted", "TRUE"),
        ("TagSpecification.1.ResourceType", "volume"),
        ("TagSpecification.1.Tag.1.Key", "Name"),
        ("TagSpecification.1.Tag.1.Value", ""),
    ]
    assert parse_query(op("CreateVolume"), create) == {
        "AvailabilityZone": "az-1",
        "Size": 8,
        "Encrypted": True,
        "TagSpecifications": [{"ResourceType": "volume", "Tags": [{"Key": "Name", "Value": ""}]}],
    }


def test_modify_snapshot_attribute_accepts_flat_and_nested_permission_forms() -> None:
    pairs = [
        ("SnapshotId", "snap-1"),
        ("Attribute", "createVolumePermission"),
        ("OperationType", "add"),
        ("UserId.1", "111122223333"),
        ("UserGroup.1", "all"),
        ("CreateVolumePermission.Add.1.UserId", "444455556666"),
        ("CreateVolumePermission.Remove.1.Group", "all"),
    ]
    assert parse_query(op("ModifySnapshotAttribute"), pairs) == {
        "SnapshotId": "snap-1",
        "Attribute": "createVolumePermission",
        "OperationType": "add",
        "UserIds": ["111122223333"],
        "GroupNames": ["all"],
        "CreateVolumePermission": {
            "Add": [{"UserId": "444455556666"}],
            "Remove": [{"Group": "all"}],
        },
    }


def test_describe_snapshots_owner_and_restorable_by_lists() -> None:
    pairs = [("Owner.1", "self"), ("RestorableBy.1", "all")]
    parsed = parse_query(op("DescribeSnapshots"), pairs)
    assert parsed == {"OwnerIds": ["self"], "RestorableByUserIds": ["all"]}


def test_common_and_query_auth_parameters_are_skipped() -> None:
    pairs = [(name, "x") for name in sorted(COMMON_PARAMS)]
    pairs += [("X-Amz-Something-New", "x"), ("x-amz-lowercase", "x"), ("VolumeId.1", "vol-1")]
    assert parse_query(op("DescribeVolumes"), pairs) == {"VolumeIds": ["vol-1"]}
    assert {"Action", "Version", "Signature", "X-Amz-Credential"} <= COMMON_PARAMS


@pytest.mark.parametrize("text", ["true", "TRUE", "True", "false", "FALSE", "fAlSe"])
def test_booleans_are_case_insensitive(text: str) -> None:
    parsed = parse_query(op("DescribeVolumes"), [("DryRun", text)])
    assert parsed == {"DryRun": text.lower() == "true"}


@pytest.mark.parametrize("text", ["0", "-7", "9223372036854775807", "-9223372036854775808"])
def test_integers_within_signed_64_bits_parse(text: str) -> None:
    assert parse_query(op("DescribeVolumes"), [("MaxResults", text)]) == {"MaxResults": int(text)}


def test_timestamps_become_aware_utc_datetimes() -> None:
    operation = op("DescribeSpotPriceHistory")
    parsed = parse_query(
        operation,
        [("StartTime", "2024-01-02T03:04:05+02:00"), ("EndTime", "2024-01-02T03:04:05.250Z")],
    )
    assert parsed["StartTime"] == datetime(2024, 1, 2, 1, 4, 5, tzinfo=UTC)
    assert parsed["StartTime"].utcoffset() == timedelta(0)
    assert parsed["EndTime"] == datetime(2024, 1, 2, 3, 4, 5, 250000, tzinfo=UTC)


def test_empty_list_form_parses_as_empty_list() -> None:
    assert parse_query(op("DescribeVolumes"), [("VolumeId", "")]) == {"VolumeIds": []}


# --- parse_query: errors ----------------------------------------------------------------------


def test_missing_top_level_required_member_is_missing_parameter() -> None:
    pairs = [("VolumeId", "vol-1"), ("InstanceId", "i-1")]
    with pytest.raises(MissingParameter) as caught:
        parse_query(op("AttachVolume"), pairs)
    assert caught.value.message == "The request must contain the parameter Device"
    assert caught.value.code == "MissingParameter"


def test_missing_nested_required_member_names_its_wire_path() -> None:
    pairs = [
        ("AvailabilityZone", "az-1"),
        ("Image.Format", "RAW"),
        ("Image.ImportManifestUrl", "https://x"),
        ("Volume.Size", "1"),
    ]
    with pytest.raises(MissingParameter, match=r"parameter Image\.Bytes$"):
        parse_query(op("ImportVolume"), pairs)


def test_empty_required_list_is_missing_parameter() -> None:
    pairs = [("ResourceId", ""), ("Tag.1.Key", "k")]
    with pytest.raises(MissingParameter, match=r"parameter ResourceId$"):
        parse_query(op("DeleteTags"), pairs)


@pytest.mark.parametrize("name", ["Foo", "Filter.1.Nome", "", "volumeId.1", "ünïcödé", "Size"])
def test_names_outside_the_input_shape_are_unknown_parameter(name: str) -> None:
    with pytest.raises(UnknownParameter) as caught:
        parse_query(op("DescribeVolumes"), [(name, "x")])
    assert caught.value.message == f"The parameter {name} is not recognized"
    assert caught.value.code == "UnknownParameter"


@pytest.mark.parametrize(
    ("operation", "name", "value"),
    [
        ("DescribeVolumes", "MaxResults", "abc"),
        ("DescribeVolumes", "MaxResults", "5.0"),
        ("DescribeVolumes", "MaxResults", "+5"),
        ("DescribeVolumes", "MaxResults", " 5"),
        ("DescribeVolumes", "MaxResults", "1_000"),
        ("DescribeVolumes", "MaxResults", "٣"),
        ("DescribeVolumes", "MaxResults", "9223372036854775808"),
        ("DescribeVolumes", "MaxResults", ""),
        ("DescribeVolumes", "DryRun", "yes"),
        ("DescribeVolumes", "DryRun", "1"),
        ("DescribeVolumes", "DryRun", ""),
        ("DescribeSpotPriceHistory", "StartTime", "x"),
        ("DescribeSpotPriceHistory", "StartTime", "2024-13-01T00:00:00Z"),
        ("DescribeSpotPriceHistory", "StartTime", "0001-01-01T00:00:00+01:00"),
        ("DescribeVolumes", "VolumeId.a", "vol-1"),
        ("DescribeVolumes", "VolumeId.0", "vol-1"),
        ("DescribeVolumes", "VolumeId.01", "vol-1"),
        ("DescribeVolumes", "VolumeId.-1", "vol-1"),
        ("DescribeVolumes", "VolumeId.10001", "vol-1"),
        ("DescribeVolumes", "VolumeId.99999999999", "vol-1"),
        ("DescribeVolumes", "VolumeId.", "vol-1"),
        ("DescribeVolumes", "VolumeId", "vol-1"),
        ("DescribeVolumes", "Filter.1", "x"),
        ("DescribeVolumes", "MaxResults.1", "5"),
        ("DescribeVolumes", "MaxResults.x.y", "5"),
    ],
)
def test_malformed_values_are_invalid_parameter_value_naming_parameter_and_value(
    operation: str, name: str, value: str
) -> None:
    with pytest.raises(InvalidParameterValue) as caught:
        parse_query(op(operation), [(name, value)])
    assert caught.value.code == "InvalidParameterValue"
    message = caught.value.message
    assert f" for parameter {name} is invalid." in message
    bad_index = f"({name.rsplit('.', 1)[-1]})" in message and "List indexes" in message
    assert message.startswith(f"Value ({value}) ") or bad_index


def test_max_list_index_is_accepted() -> None:
    parsed = parse_query(op("DescribeVolumes"), [("VolumeId.10000", "v")])
    assert parsed == {"VolumeIds": ["v"]}


def test_bad_base64_blob_is_invalid_parameter_value() -> None:
    operation = op("ImportKeyPair")
    good = base64.b64encode(b"ssh-rsa AAAA").decode()
    assert parse_query(operation, [("KeyName", "k"), ("PublicKeyMaterial", good)]) == {
        "KeyName": "k",
        "PublicKeyMaterial": b"ssh-rsa AAAA",
    }
    with pytest.raises(InvalidParameterValue, match="PublicKeyMaterial"):
        parse_query(operation, [("KeyName", "k"), ("PublicKeyMaterial", "not base64!")])


@pytest.mark.parametrize(
    "pairs",
    [
        [("Filter", "x"), ("Filter.1.Name", "y")],
        [("Filter.1.Name", "y"), ("Filter", "x")],
        [("Filter.1.Name", "y"), ("Filter.1", "x")],
        [("VolumeId", ""), ("VolumeId.1", "vol-1")],
        [("VolumeId.1", "vol-1"), ("VolumeId", "")],
    ],
)
def test_value_and_sub_fields_for_one_parameter_conflict(pairs: list[tuple[str, str]]) -> None:
    with pytest.raises(InvalidParameterValue):
        parse_query(op("DescribeVolumes"), pairs)


def test_same_parameter_twice_is_invalid_parameter_value() -> None:
    pairs = [("VolumeId.1", "vol-1"), ("VolumeId.1", "vol-2")]
    with pytest.raises(InvalidParameterValue, match=r"VolumeId\.1"):
        parse_query(op("DescribeVolumes"), pairs)


def test_long_values_and_names_are_truncated_in_messages() -> None:
    with pytest.raises(InvalidParameterValue) as caught:
        parse_query(op("DescribeVolumes"), [("MaxResults", "9" * 100_000)])
    assert len(caught.value.message) < 300
    with pytest.raises(UnknownParameter) as unknown:
        parse_query(op("DescribeVolumes"), [("X" * 100_000, "v")])
    assert len(unknown.value.message) < 300


def test_deeply_dotted_name_is_rejected_quickly() -> None:
    started = time.perf_counter()
    with pytest.raises(InvalidParameterValue):
        parse_query(op("DescribeVolumes"), [("Filter.1.Value.1" + ".9" * 200_000, "v")])
    with pytest.raises(UnknownParameter):
        parse_query(op("DescribeVolumes"), [("." * 200_000, "v")])
    assert time.perf_counter() - started < 1.0


_SEGMENTS = st.sampled_from(
    [
        *("VolumeId", "Filter", "Name", "Value", "Tag", "Key", "TagSpecification", "Size"),
        *("Encrypted", "Image", "Bytes", "Format", "UserId", "Add", "CreateVolumePermission"),
        *("1", "2", "0", "01", "10000", "10001", "99999999999", "", "-1", "a", "ÿ", "\x00"),
    ]
)
_NAMES = st.one_of(
    st.lists(_SEGMENTS, min_size=1, max_size=7).map(".".join),
    st.text(max_size=40),
    st.sampled_from(sorted(COMMON_PARAMS)),
)
_VALUES = st.one_of(
    st.sampled_from(["", "true", "FALSE", "5", "-1", "2024-01-02T03:04:05Z", "eA==", "x"]),
    st.text(max_size=30),
)
_OPERATIONS = st.sampled_from(
    [
        *("DescribeVolumes", "CreateVolume", "ModifySnapshotAttribute", "ImportVolume"),
        *("CreateTags", "DescribeSpotPriceHistory", "ImportKeyPair", "DeleteTags", "AttachVolume"),
    ]
)


@settings(max_examples=200, deadline=None)
@given(_OPERATIONS, st.lists(st.tuples(_NAMES, _VALUES), max_size=12))
def test_random_parameters_raise_only_api_errors(name: str, pairs: list[tuple[str, str]]) -> None:
    operation = op(name)
    try:
        parsed = parse_query(operation, pairs)
    except ApiError as error:
        assert error.http_status == 400
        assert error.code in {"InvalidParameterValue", "MissingParameter", "UnknownParameter"}
        return
    assert set(parsed) <= set(operation.input_shape.members)


# --- serialize_response: element names and lists ---------------------------------------------


def _children(element: ET.Element) -> list[str]:
    return [child.tag.removeprefix(NS) for child in element]


def test_volume_uses_status_tag_items_and_empty_tag_set() -> None:
    volume = {
        "VolumeId": "vol-0123456789abcdef0",
        "State": "in-use",
        "SnapshotId": "",
        "Size": 8,
        "Encrypted": False,
        "CreateTime": datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        "Tags": [{"Key": "Name", "Value": "data"}, {"Key": "env", "Value": ""}],
        "Attachments": [{"VolumeId": "vol-0123456789abcdef0", "State": "attached", "Device": "x"}],
        "KmsKeyId": None,
    }
    empty = dict(volume, VolumeId="vol-2", Tags=[])
    body = serialize_response(op("DescribeVolumes"), {"Volumes": [volume, empty]}, "r")
    text = body.decode()
    assert text.startswith(
        '<?xml version="1.0" encoding="UTF-8"?><DescribeVolumesResponse '
        'xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>r</requestId><volumeSet>'
    )
    root = ET.fromstring(body)
    assert _children(root) == ["requestId", "volumeSet"]
    volume_set = root.find(f"{NS}volumeSet")
    assert volume_set is not None
    assert _children(volume_set) == ["item", "item"]
    first = volume_set[0]
    assert first.findtext(f"{NS}status") == "in-use"
    assert first.find(f"{NS}state") is None
    assert first.find(f"{NS}kmsKeyId") is None
    assert first.findtext(f"{NS}createTime") == "2024-01-02T03:04:05.678Z"
    assert first.findtext(f"{NS}encrypted") == "false"
    assert "<snapshotId/>" in text
    tags = first.find(f"{NS}tagSet")
    assert tags is not None
    assert [_children(item) for item in tags] == [["key", "value"], ["key", "value"]]
    assert _children(tags) == ["item", "item"]
    attachment = first.find(f"{NS}attachmentSet/{NS}item")
    assert attachment is not None
    assert attachment.findtext(f"{NS}status") == "attached"
    assert "<tagSet/>" in text
    parsed = botocore_parse(op("DescribeVolumes"), body)
    assert parsed["Volumes"][1]["Tags"] == []
    assert "KmsKeyId" not in parsed["Volumes"][0]


def test_snapshot_state_and_message_use_status_tags_but_create_snapshots_uses_state() -> None:
    snapshot = {"SnapshotId": "snap-1", "State": "error", "StateMessage": "disk on fire"}
    root = ET.fromstring(
        serialize_response(op("DescribeSnapshots"), {"Snapshots": [snapshot]}, "r")
    )
    item = root.find(f"{NS}snapshotSet/{NS}item")
    assert item is not None
    assert sorted(_children(item)) == ["snapshotId", "status", "statusMessage"]
    info = {"SnapshotId": "snap-2", "State": "pending"}
    root = ET.fromstring(serialize_response(op("CreateSnapshots"), {"Snapshots": [info]}, "r"))
    item = root.find(f"{NS}snapshotSet/{NS}item")
    assert item is not None
    assert sorted(_children(item)) == ["snapshotId", "state"]


def test_create_volume_members_are_direct_children_of_the_root() -> None:
    body = serialize_response(op("CreateVolume"), {"VolumeId": "vol-1", "Size": 1}, "r")
    root = ET.fromstring(body)
    assert root.tag == f"{NS}CreateVolumeResponse"
    assert _children(root) == ["requestId", "volumeId", "size"]


def test_timestamps_are_written_in_utc_with_milliseconds() -> None:
    plus_two = timezone(timedelta(hours=2))
    moment = datetime(2024, 1, 2, 5, 4, 5, 999999, tzinfo=plus_two)
    root = ET.fromstring(serialize_response(op("CreateVolume"), {"CreateTime": moment}, "r"))
    assert root.findtext(f"{NS}createTime") == "2024-01-02T03:04:05.999Z"


@pytest.mark.parametrize(
    ("result", "path"),
    [
        ({"Volumes": [{"VolumeId": "v"}, {"Stat": "available"}]}, "Volumes[1].Stat"),
        ({"Volume": []}, ".Volume"),
        ({"Volumes": [{"Attachments": [{"Devise": "x"}]}]}, "Volumes[0].Attachments[0].Devise"),
        ({"Volumes": [{"Size": "8"}]}, "Volumes[0].Size"),
        ({"Volumes": [{"Size": True}]}, "Volumes[0].Size"),
        ({"Volumes": [{"Encrypted": 1}]}, "Volumes[0].Encrypted"),
        ({"Volumes": [{"CreateTime": datetime(2024, 1, 2)}]}, "Volumes[0].CreateTime"),
        ({"Volumes": [{"VolumeId": 5}]}, "Volumes[0].VolumeId"),
        ({"Volumes": "vol-1"}, "Volumes"),
        ({"Volumes": [None]}, "Volumes[0]"),
        ({"Volumes": [{"Tags": {"Key": "k"}}]}, "Volumes[0].Tags"),
    ],
)
def test_result_not_fitting_the_output_shape_raises_with_its_path(
    result: dict[str, Any], path: str
) -> None:
    with pytest.raises(ValueError, match="DescribeVolumes result") as caught:
        serialize_response(op("DescribeVolumes"), result, "r")
    assert path in str(caught.value)


def test_result_keys_for_an_operation_without_output_raise() -> None:
    with pytest.raises(ValueError, match="DeleteVolume"):
        serialize_response(op("DeleteVolume"), {"Return": True}, "r")


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_string_yields_well_formed_xml_that_botocore_reads_back(text: str) -> None:
    body = serialize_response(op("CreateVolume"), {"VolumeId": text}, text)
    parsed = botocore_parse(op("CreateVolume"), body)
    legal = "".join(
        ch
        if ch in "\t\n\r" or "\x20" <= ch <= "\ud7ff" or "\ue000" <= ch <= "\ufffd" or ch > "\uffff"
        else "\ufffd"
        for ch in text
    )
    assert parsed.get("VolumeId", "") == legal
    assert parsed["ResponseMetadata"]["RequestId"] == (legal or None)


def test_special_characters_in_error_fields_are_escaped() -> None:
    body = serialize_error("Code<1>", "a & b \x00 c\r", "<id>")
    root = ET.fromstring(body)
    assert root.findtext("Errors/Error/Code") == "Code<1>"
    assert root.findtext("Errors/Error/Message") == "a & b \ufffd c\r"
    assert root.findtext("RequestID") == "<id>"
