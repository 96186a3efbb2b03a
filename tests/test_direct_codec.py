"""The EBS direct API's codec and tokens, without a server: what botocore's `ebs` client
sends parses back to its parameters, answers parse in botocore as sent, tokens bind."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.parsers import RestJSONParser
from botocore.serialize import RestJSONSerializer

from ebsemu import errors
from ebsemu.direct import codec
from ebsemu.direct.operations import OPERATIONS
from ebsemu.direct.tokens import TokenSigner

MODEL = codec.ebs_model()


def sent(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """What botocore's serializer sends for ``params``, parsed back by the server's codec."""
    operation = MODEL.operation_model(name)
    request = RestJSONSerializer().serialize_to_request(params, operation)
    uri = request["url_path"].split("?")[0]
    http = operation.http["requestUri"]
    names = [part[1:-1] for part in http.split("/") if part.startswith("{")]
    values = [p for p, t in zip(uri.split("/"), http.split("/"), strict=True) if t.startswith("{")]
    query = {k: str(v) for k, v in request["query_string"].items()}
    body = request["body"]
    return codec.parse_request(
        operation,
        dict(zip(names, values, strict=True)),
        query,
        {k: str(v) for k, v in request["headers"].items()},
        body if isinstance(body, bytes) else body.encode(),
    )


def test_every_operation_of_the_model_has_an_adapter() -> None:
    assert set(OPERATIONS) == set(MODEL.operation_names)


def test_botocore_requests_parse_back_to_their_parameters() -> None:
    start = {
        "VolumeSize": 8,
        "ParentSnapshotId": "snap-0123456789abcdef0",
        "Tags": [{"Key": "k", "Value": "v"}],
        "Description": "d",
        "ClientToken": "t",
        "Timeout": 30,
    }
    assert sent("StartSnapshot", start) == start
    put = {
        "SnapshotId": "snap-0123456789abcdef0",
        "BlockIndex": 7,
        "BlockData": b"\0\1\2",
        "DataLength": 3,
        "Checksum": "AAAA",
        "ChecksumAlgorithm": "SHA256",
        "Progress": 40,
    }
    assert sent("PutSnapshotBlock", put) == put
    changed = {
        "FirstSnapshotId": "snap-0123456789abcdef0",
        "SecondSnapshotId": "snap-0123456789abcdef1",
        "MaxResults": 100,
        "NextToken": "AAAA",
        "StartingBlockIndex": 5,
    }
    assert sent("ListChangedBlocks", changed) == changed


@pytest.mark.parametrize(
    ("name", "params", "constraint"),
    [
        ("ListSnapshotBlocks", {"SnapshotId": "snap-0abc", "MaxResults": 10001}, "less than"),
        ("ListSnapshotBlocks", {"SnapshotId": "snap-0abc", "StartingBlockIndex": 2**31}, "from"),
        (
            "GetSnapshotBlock",
            {"SnapshotId": "snap-0abc", "BlockIndex": 0, "BlockToken": "a-b"},
            "pattern",
        ),
        (
            "PutSnapshotBlock",
            {
                "SnapshotId": "snap-0abc",
                "BlockIndex": 0,
                "BlockData": b"x",
                "DataLength": 1,
                "Checksum": "AAAA",
                "ChecksumAlgorithm": "MD5",
            },
            "enum",
        ),
    ],
)
def test_values_outside_their_shape_are_validation_exceptions(
    name: str, params: dict[str, Any], constraint: str
) -> None:
    with pytest.raises(errors.ValidationException) as caught:
        sent(name, params)
    assert constraint in caught.value.message
    assert caught.value.reason == "INVALID_PARAMETER_VALUE"


def parsed(name: str, reply: codec.Reply) -> dict[str, Any]:
    """The reply as botocore's rest-json parser reads it."""
    operation = MODEL.operation_model(name)
    response = {
        "status_code": reply.status,
        # botocore reads headers case-insensitively (lowercase here stands in for that)
        "headers": {
            **{k.lower(): v for k, v in reply.headers.items()},
            "content-type": reply.content_type,
        },
        "body": reply.body,
    }
    shape = operation.output_shape if reply.status < 300 else None
    result: dict[str, Any] = RestJSONParser().parse(response, shape)
    result.pop("ResponseMetadata", None)
    return result


def test_answers_parse_in_botocore_as_they_were_made() -> None:
    expiry = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    listed = {
        "Blocks": [{"BlockIndex": 3, "BlockToken": "AAAA"}],
        "ExpiryTime": expiry,
        "VolumeSize": 8,
        "BlockSize": 524288,
        "NextToken": "BBBB",
    }
    operation = MODEL.operation_model("ListSnapshotBlocks")
    assert parsed("ListSnapshotBlocks", codec.serialize_response(operation, listed)) == listed
    block = {
        "DataLength": 3,
        "BlockData": b"abc",
        "Checksum": "CCCC",
        "ChecksumAlgorithm": "SHA256",
    }
    reply = codec.serialize_response(MODEL.operation_model("GetSnapshotBlock"), block)
    assert (reply.body, reply.headers["x-amz-Data-Length"]) == (b"abc", "3")
    assert (
        codec.serialize_response(
            MODEL.operation_model("StartSnapshot"), {"SnapshotId": "snap-1"}
        ).status
        == 201
    )


def test_a_misspelled_result_key_is_a_programming_error_not_an_answer() -> None:
    operation = MODEL.operation_model("CompleteSnapshot")
    with pytest.raises(codec.ResultShapeError):
        codec.serialize_response(operation, {"State": "completed"})


def test_errors_carry_code_status_and_reason_as_botocore_reads_them() -> None:
    reply = codec.serialize_error(
        errors.ValidationException("bad token", "INVALID_BLOCK_TOKEN"), "req-1"
    )
    assert (reply.status, reply.headers["x-amzn-ErrorType"]) == (400, "ValidationException")
    assert json.loads(reply.body) == {"Message": "bad token", "Reason": "INVALID_BLOCK_TOKEN"}
    error = parsed("GetSnapshotBlock", reply)
    assert error["Error"] == {"Code": "ValidationException", "Message": "bad token"}


@pytest.mark.parametrize("shape_name", [n for n in MODEL.shape_names if n.endswith("Exception")])
def test_each_error_shape_has_a_class_with_the_models_status(shape_name: str) -> None:
    cls = getattr(errors, shape_name)
    assert cls.code == shape_name
    assert cls.http_status == MODEL.shape_for(shape_name).metadata["error"]["httpStatusCode"]


def test_block_tokens_bind_snapshot_index_digest_and_expiry() -> None:
    signer = TokenSigner(b"k" * 32)
    digest = bytes(range(32))
    token = signer.block_token("snap-1", 4, digest, expires=1000)
    assert signer.block_token_valid(token, "snap-1", 4, digest, now=999)
    assert not signer.block_token_valid(token, "snap-1", 4, digest, now=1000)  # expired
    assert not signer.block_token_valid(token, "snap-2", 4, digest, now=0)
    assert not signer.block_token_valid(token, "snap-1", 5, digest, now=0)
    assert not signer.block_token_valid(token, "snap-1", 4, bytes(32), now=0)
    assert not TokenSigner(b"x" * 32).block_token_valid(token, "snap-1", 4, digest, now=0)
    assert not signer.block_token_valid("AAAA", "snap-1", 4, digest, now=0)


def test_page_tokens_continue_only_their_own_listing() -> None:
    signer = TokenSigner(b"k" * 32)
    token = signer.page_token("blocks:snap-1", 300)
    assert signer.page_index("blocks:snap-1", token) == 300
    assert signer.page_index("blocks:snap-2", token) is None
    assert signer.page_index("blocks:snap-1", "not base64!") is None
