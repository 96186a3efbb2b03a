"""The EBS direct API's edges: other accounts, sharing, signatures, unknown routes, timeouts,
and the AWS CLI (`aws ebs`) with nothing but --endpoint-url."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.config import Config as BotoConfig

from tests import test_api_transport
from tests.api_support import FAST, block_path, poll, raw_request, sigv4_headers
from tests.direct_support import BLOCK, checksum, put, random_blocks, refusal, upload
from tests.server import TEST_CONFIG, ServerProcess

AWS = Path(sys.executable).with_name("aws")
# The HTTPS server and its certificate, shared with the transport tests.
certificate = test_api_transport.certificate
tls_server = test_api_transport.tls_server


@pytest.fixture(scope="module")
def ebs(server: ServerProcess) -> Any:
    return server.client("ebs")


@pytest.fixture(scope="module")
def other(server: ServerProcess) -> tuple[str, Any, Any]:
    """Another account: its id, ec2 and ebs clients."""
    account_id, key = server.new_account()
    return account_id, server.client(key=key), server.client("ebs", key=key)


def test_another_accounts_snapshots_are_not_found_until_shared(
    server: ServerProcess, ebs: Any, other: tuple[str, Any, Any]
) -> None:
    account_id, _, their_ebs = other
    blocks = random_blocks([0])
    mine = upload(ebs, blocks)
    token = ebs.list_snapshot_blocks(SnapshotId=mine)["Blocks"][0]["BlockToken"]
    pending = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    for call, params in [
        (their_ebs.list_snapshot_blocks, {"SnapshotId": mine}),
        (their_ebs.list_changed_blocks, {"SecondSnapshotId": mine}),
        (their_ebs.get_snapshot_block, {"SnapshotId": mine, "BlockIndex": 0, "BlockToken": token}),
        (their_ebs.complete_snapshot, {"SnapshotId": pending, "ChangedBlocksCount": 0}),
        (their_ebs.start_snapshot, {"VolumeSize": 1, "ParentSnapshotId": mine}),
    ]:
        hidden = refusal(call, **params)
        assert (hidden.code, hidden.status, hidden.reason) == (
            "ResourceNotFoundException",
            404,
            "SNAPSHOT_NOT_FOUND",
        )
    assert refusal(put, their_ebs, pending, 0, blocks[0]).status == 404

    server.client().modify_snapshot_attribute(
        SnapshotId=mine,
        Attribute="createVolumePermission",
        OperationType="add",
        UserIds=[account_id],
    )
    shared = their_ebs.list_snapshot_blocks(SnapshotId=mine)["Blocks"]
    assert [b["BlockIndex"] for b in shared] == [0]
    read = their_ebs.get_snapshot_block(
        SnapshotId=mine, BlockIndex=0, BlockToken=shared[0]["BlockToken"]
    )
    assert read["BlockData"].read() == blocks[0]
    # Shared for reading, not for writing.
    assert refusal(put, their_ebs, pending, 0, blocks[0]).status == 404
    ebs.complete_snapshot(SnapshotId=pending, ChangedBlocksCount=0)


def test_unsigned_and_ec2_signed_requests_are_refused_as_rest_json(server: ServerProcess) -> None:
    for auth, code in [(None, "MissingAuthenticationTokenException"), ("v4", None)]:
        answer = raw_request(
            server.url, method="GET", path="/snapshots/snap-0123abcd/blocks", auth=auth
        )
        assert answer.status in (400, 401, 403)
        error_type = answer.headers.get("x-amzn-ErrorType", "")
        assert error_type and (code is None or error_type == code)
        body = json.loads(answer.body)
        assert body["Message"]
    # EC2 still answers at / as before.
    assert (
        raw_request(server.url, {"Action": "DescribeRegions", "Version": "2016-11-15"}).status
        == 200
    )


def test_paths_that_name_no_operation_are_json_errors(server: ServerProcess, ebs: Any) -> None:
    answer = raw_request(server.url, method="DELETE", path="/snapshots/snap-0123abcd/blocks")
    assert answer.status == 404
    assert answer.headers["x-amzn-ErrorType"] == "UnknownOperationException"
    assert "DELETE /snapshots/snap-0123abcd/blocks" in json.loads(answer.body)["Message"]


@pytest.fixture
def quick_timeouts(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server whose StartSnapshot Timeout minute lasts 0.05 s (so 10 minutes is 0.5 s)."""
    quick = "[server]\nebs_timeout_minute_seconds = 0.05\n"
    proc = ServerProcess(tmp_path / "data", TEST_CONFIG.replace("[server]\n", quick))
    proc.start()
    yield proc
    proc.stop()


def test_a_snapshot_not_completed_within_its_timeout_goes_to_error(
    quick_timeouts: ServerProcess,
) -> None:
    ebs = quick_timeouts.client("ebs")
    ec2 = quick_timeouts.client()
    data = random_blocks([2])[2]
    snapshot_id = ebs.start_snapshot(VolumeSize=1, Timeout=10)["SnapshotId"]
    put(ebs, snapshot_id, 2, data)

    def errored() -> dict[str, Any] | None:
        (found,) = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
        return dict(found) if found["State"] != "pending" else None

    snapshot = poll(errored)
    assert snapshot["State"] == "error"
    assert "timeout of 10 minutes" in snapshot["StateMessage"]
    late = refusal(put, ebs, snapshot_id, 3, data)
    assert (late.code, late.status) == ("ValidationException", 400)
    assert (
        refusal(ebs.complete_snapshot, SnapshotId=snapshot_id, ChangedBlocksCount=1).status == 400
    )
    poll(lambda: True if not block_path(quick_timeouts.data_dir, data).exists() else None)
    with pytest.raises(Exception, match="Waiter SnapshotCompleted failed"):
        ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[snapshot_id], WaiterConfig=FAST)
    bounds = refusal(ebs.start_snapshot, VolumeSize=1, Timeout=4321)
    assert (bounds.code, bounds.status) == ("ValidationException", 400)


def aws_ebs(server: ServerProcess, *args: str) -> Any:
    argv = [str(AWS), "ebs", *args, "--endpoint-url", server.url, "--output", "json"]
    done = subprocess.run(
        argv, env=server.cli_env(), capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"{' '.join(args)}: {done.stderr}"
    return json.loads(done.stdout) if done.stdout.strip() else None


def test_aws_cli_writes_and_lists_a_snapshot(server: ServerProcess, tmp_path: Path) -> None:
    started = aws_ebs(server, "start-snapshot", "--volume-size", "1", "--description", "cli")
    snapshot_id = started["SnapshotId"]
    assert (started["Status"], started["BlockSize"]) == ("pending", BLOCK)
    data = random_blocks([4])[4]
    block_file = tmp_path / "block"
    block_file.write_bytes(data)
    stored = aws_ebs(
        server,
        "put-snapshot-block",
        "--snapshot-id", snapshot_id,
        "--block-index", "4",
        "--block-data", str(block_file),
        "--data-length", str(BLOCK),
        "--checksum", checksum(data),
        "--checksum-algorithm", "SHA256",
    )  # fmt: skip
    assert stored["Checksum"] == checksum(data)
    done = aws_ebs(
        server, "complete-snapshot", "--snapshot-id", snapshot_id, "--changed-blocks-count", "1"
    )
    assert done["Status"] == "completed"
    listed = aws_ebs(server, "list-snapshot-blocks", "--snapshot-id", snapshot_id)
    assert [b["BlockIndex"] for b in listed["Blocks"]] == [4]
    out = tmp_path / "read"
    got = aws_ebs(
        server,
        "get-snapshot-block",
        "--snapshot-id", snapshot_id,
        "--block-index", "4",
        "--block-token", listed["Blocks"][0]["BlockToken"],
        str(out),
    )  # fmt: skip
    assert (got["Checksum"], out.read_bytes()) == (checksum(data), data)


def signed_put(
    server: ServerProcess, path: str, data: bytes, headers: dict[str, str]
) -> urllib.request.Request:
    """A PUT of ``data`` signed for `ebs` with UNSIGNED-PAYLOAD over ``headers`` only."""
    signed = sigv4_headers(
        "PUT",
        server.url + path,
        data,
        {**headers, "X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"},
        service="ebs",
    )
    return urllib.request.Request(server.url + path, data=data, method="PUT", headers=signed)


def send(request: urllib.request.Request, extra: dict[str, str]) -> tuple[int, str]:
    for name, value in extra.items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, ""
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers.get("x-amzn-ErrorType", "")


def test_an_unsigned_block_is_taken_only_with_its_signed_checksum(
    server: ServerProcess, ebs: Any
) -> None:
    snapshot_id = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    path = f"/snapshots/{snapshot_id}/blocks/0"
    data = random_blocks([0])[0]
    block_headers = {"x-amz-Data-Length": str(BLOCK), "x-amz-Checksum-Algorithm": "SHA256"}
    # The checksum header added after signing: nothing signed binds the body.
    unbound = signed_put(server, path, data, block_headers)
    assert send(unbound, {"x-amz-Checksum": checksum(data)}) == (403, "InvalidSignatureException")
    bound = signed_put(server, path, data, {**block_headers, "x-amz-Checksum": checksum(data)})
    assert send(bound, {}) == (201, "")
    ebs.complete_snapshot(SnapshotId=snapshot_id, ChangedBlocksCount=1)


def test_a_pending_snapshot_survives_a_restart_and_is_completed_after_it(
    fresh_server: ServerProcess,
) -> None:
    ebs = fresh_server.client("ebs")
    blocks = random_blocks([0, 1])
    snapshot_id = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    put(ebs, snapshot_id, 0, blocks[0])
    fresh_server.restart()
    ebs = fresh_server.client("ebs")
    (snapshot,) = fresh_server.client().describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
    assert snapshot["State"] == "pending"  # not taken for a capture to finish
    put(ebs, snapshot_id, 1, blocks[1])
    ebs.complete_snapshot(SnapshotId=snapshot_id, ChangedBlocksCount=2)
    listed = ebs.list_snapshot_blocks(SnapshotId=snapshot_id)["Blocks"]
    assert [b["BlockIndex"] for b in listed] == [0, 1]


MALFORMED = [
    ("GET", "/snapshots/snap-0123abcd/blocks?startingBlockIndex=99999999999999999999", b""),
    ("GET", "/snapshots/snap-0123abcd/blocks?startingBlockIndex=9999999999999999999", b""),
    ("GET", "/snapshots/snap-0123abcd/blocks?maxResults=many", b""),
    ("GET", "/snapshots/snap-0123abcd/blocks?pageToken=%25%25", b""),
    ("GET", "/snapshots/snap-XYZ/blocks", b""),
    ("GET", "/snapshots/snap-0123abcd/blocks/first?blockToken=AAAA", b""),
    ("GET", "/snapshots/snap-0123abcd/blocks/0", b""),
    ("GET", "/snapshots/snap-0123abcd/changedblocks?firstSnapshotId=vol-1", b""),
    ("POST", "/snapshots", b"not json"),
    ("POST", "/snapshots", b"\xff\xfe"),
    ("POST", "/snapshots", b"[]"),
    ("POST", "/snapshots", b"{}"),
    ("POST", "/snapshots", b'{"VolumeSize": "1"}'),
    ("POST", "/snapshots", b'{"VolumeSize": 1e400}'),
    ("POST", "/snapshots", b'{"VolumeSize": 1, "Tags": "x"}'),
    ("POST", "/snapshots", b'{"VolumeSize": 1, "Tags": [{"Key": 5}]}'),
    ("POST", "/snapshots", b'{"VolumeSize": 1, "Tags": [7]}'),
    ("POST", "/snapshots", b'{"VolumeSize": 1, "Timeout": 5}'),
    ("POST", "/snapshots", b'{"VolumeSize": 1, "Description": ""}'),
    ("POST", "/snapshots/completion/snap-0123abcd", b""),
    ("PUT", "/snapshots/snap-0123abcd/blocks/0", b""),
]


@pytest.mark.parametrize(("method", "target", "body"), MALFORMED)
def test_malformed_requests_get_a_rest_json_client_error(
    server: ServerProcess, method: str, target: str, body: bytes
) -> None:
    url = server.url + target
    headers = sigv4_headers(method, url, body, {}, service="ebs")
    request = urllib.request.Request(url, data=body or None, method=method, headers=headers)
    with pytest.raises(urllib.error.HTTPError) as caught, urllib.request.urlopen(request):
        pass
    with caught.value as error:
        assert error.code in (400, 404)
        assert error.headers["x-amzn-ErrorType"] in (
            "ValidationException",
            "ResourceNotFoundException",
        )
        assert json.loads(error.read())["Message"]


def test_a_corrupt_stored_block_is_an_internal_server_exception_not_bad_data(
    server: ServerProcess, ebs: Any
) -> None:
    data = random_blocks([0])[0]
    snapshot_id = upload(ebs, {0: data})
    block_path(server.data_dir, data).write_bytes(bytes(BLOCK))  # damage the stored block
    token = ebs.list_snapshot_blocks(SnapshotId=snapshot_id)["Blocks"][0]["BlockToken"]
    broken = refusal(ebs.get_snapshot_block, SnapshotId=snapshot_id, BlockIndex=0, BlockToken=token)
    assert (broken.code, broken.status) == ("InternalServerException", 500)


@pytest.fixture
def throttled(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server allowing each key two requests, then one a minute."""
    limits = "[limits]\nrequests_per_second = 0.016\nrequest_burst = 2\n"
    text = TEST_CONFIG.split("[limits]")[0] + limits
    proc = ServerProcess(tmp_path / "data", text)
    proc.start()
    yield proc
    proc.stop()


def test_past_its_request_rate_a_key_is_throttled(throttled: ServerProcess) -> None:
    ebs = throttled.client("ebs", config=BotoConfig(retries={"total_max_attempts": 1}))
    ebs.start_snapshot(VolumeSize=1)
    ebs.start_snapshot(VolumeSize=1)
    slowed = refusal(ebs.start_snapshot, VolumeSize=1)
    assert (slowed.code, slowed.status, slowed.reason) == (
        "RequestThrottledException",
        400,
        "ACCOUNT_THROTTLED",
    )


def test_over_https_boto3_sends_the_block_unsigned_and_it_is_taken(
    tls_server: ServerProcess, certificate: tuple[Path, Path]
) -> None:
    ebs = tls_server.client("ebs", verify=str(certificate[0]))
    blocks = random_blocks([0])
    snapshot_id = upload(ebs, blocks)
    token = ebs.list_snapshot_blocks(SnapshotId=snapshot_id)["Blocks"][0]["BlockToken"]
    got = ebs.get_snapshot_block(SnapshotId=snapshot_id, BlockIndex=0, BlockToken=token)
    assert got["BlockData"].read() == blocks[0]
