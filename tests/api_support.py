"""Helpers for the API tests: unique names, fast waiters, polling, raw EC2 Query requests."""

from __future__ import annotations

import hashlib
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import xmltodict
from botocore.exceptions import ClientError

from tests.server import ZONE

T = TypeVar("T")

# Waiters poll every 0.1 s (botocore's default is 15 s) for at most 30 s.
FAST = {"Delay": 0.1, "MaxAttempts": 300}
EC2_NS = "http://ec2.amazonaws.com/doc/2016-11-15/"
DRY_RUN_MESSAGE = "Request would have succeeded, but DryRun flag is set."


def unique() -> str:
    return uuid.uuid4().hex


def tag_spec(resource_type: str, **tags: str) -> list[dict[str, Any]]:
    return [
        {"ResourceType": resource_type, "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
    ]


def new_volume(ec2: Any, *, wait: bool = True, **params: Any) -> str:
    """Create a volume (1 GiB gp2 in the test zone unless told otherwise); its id."""
    if "AvailabilityZoneId" not in params:
        params.setdefault("AvailabilityZone", ZONE)
    if "SnapshotId" not in params:
        params.setdefault("Size", 1)
    volume_id: str = ec2.create_volume(**params)["VolumeId"]
    if wait:
        ec2.get_waiter("volume_available").wait(VolumeIds=[volume_id], WaiterConfig=FAST)
    return volume_id


def new_snapshot(ec2: Any, volume_id: str, *, wait: bool = True, **params: Any) -> str:
    snapshot_id: str = ec2.create_snapshot(VolumeId=volume_id, **params)["SnapshotId"]
    if wait:
        ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[snapshot_id], WaiterConfig=FAST)
    return snapshot_id


def aws_error(call: Callable[..., Any], /, **params: Any) -> tuple[str, str, int]:
    """Call a boto3 operation that must fail; its (code, message, HTTP status)."""
    with pytest.raises(ClientError) as caught:
        call(**params)
    response = caught.value.response
    return (
        response["Error"]["Code"],
        response["Error"]["Message"],
        response["ResponseMetadata"]["HTTPStatusCode"],
    )


def poll(probe: Callable[[], T | None], *, timeout: float = 20.0, every: float = 0.05) -> T:
    """Call ``probe`` until it returns something other than None; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(every)


def volume_state(ec2: Any, volume_id: str) -> str:
    state: str = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]["State"]
    return state


def ids(items: list[dict[str, Any]], key: str) -> list[str]:
    return [item[key] for item in items]


@dataclass
class RawResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")

    def xml(self) -> dict[str, Any]:
        """The body parsed by xmltodict (namespaces kept out of the element names)."""
        parsed: dict[str, Any] = xmltodict.parse(self.body)
        return parsed

    def error(self) -> tuple[str, str]:
        """(Code, Message) of an EC2 error envelope."""
        error = self.xml()["Response"]["Errors"]["Error"]
        return error["Code"], error["Message"]


def raw_request(
    url: str,
    params: Mapping[str, str] | list[tuple[str, str]] | None = None,
    *,
    method: str = "POST",
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    path: str = "/",
) -> RawResponse:
    """One HTTP request to the server, unsigned; any status is returned, not raised."""
    encoded = urllib.parse.urlencode(params or {})
    target = url + path
    if method == "GET":
        target += "?" + encoded
    elif body is None:
        body = encoded.encode()
    all_headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    all_headers.update(headers or {})
    request = urllib.request.Request(target, data=body, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return RawResponse(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as error:
        with error:
            return RawResponse(error.code, dict(error.headers), error.read())


def volume_segment(data_dir: Path, volume_id: str) -> Path:
    """The file backend's first segment file of a volume (its first bytes live there)."""
    (path,) = data_dir.glob(f"storage/volumes/{volume_id}/seg-0000")
    return path


def block_path(data_dir: Path, data: bytes) -> Path:
    """Where the local block store keeps the snapshot block holding ``data``."""
    name = hashlib.sha256(data).hexdigest()
    return data_dir / "blocks" / name[0:2] / name[2:4] / name
