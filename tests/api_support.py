"""Helpers for the API tests: unique names, fast waiters, polling, raw (signed) EC2 Query
requests."""

from __future__ import annotations

import base64
import hmac
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
import xmltodict
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError, WaiterError

from tests.block_support import StoredBlock
from tests.server import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, ZONE

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
        try:
            ec2.get_waiter("volume_available").wait(VolumeIds=[volume_id], WaiterConfig=FAST)
        except WaiterError:
            pytest.fail(f"never available: {ec2.describe_volumes(VolumeIds=[volume_id])}")
    return volume_id


def new_snapshot(ec2: Any, volume_id: str, *, wait: bool = True, **params: Any) -> str:
    snapshot_id: str = ec2.create_snapshot(VolumeId=volume_id, **params)["SnapshotId"]
    if wait:
        try:
            ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[snapshot_id], WaiterConfig=FAST)
        except WaiterError:
            pytest.fail(f"never completed: {ec2.describe_snapshots(SnapshotIds=[snapshot_id])}")
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


def deleted(ec2: Any, volume_id: str) -> bool:
    """Whether the volume is deleted: `deleted` for a short while, then InvalidVolume.NotFound."""
    try:
        return volume_state(ec2, volume_id) == "deleted"
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "InvalidVolume.NotFound":
            raise
        return True


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


Params = Mapping[str, str] | list[tuple[str, str]]
Key = tuple[str, str]
DEFAULT_KEY: Key = (ACCESS_KEY_ID, SECRET_ACCESS_KEY)


def encode_params(params: Params | None) -> str:
    """Form/query encoding as AWS canonicalizes it (`%20`, not `+`), so a SigV4 signature
    over the query string matches what the server reads."""
    pairs = list(params.items()) if isinstance(params, Mapping) else list(params or [])
    return urllib.parse.urlencode(pairs, quote_via=urllib.parse.quote)


def sigv2_params(
    params: Params | None,
    *,
    method: str,
    url: str,
    path: str = "/",
    key: Key = DEFAULT_KEY,
    signature_method: str = "HmacSHA256",
    timestamp: datetime | None = None,
) -> list[tuple[str, str]]:
    """``params`` with SigV2's parameters and Signature added, as euca2ools 3.1 signs:
    base64 HMAC of `METHOD\nhost\npath\n` and every parameter, sorted, AWS-encoded."""
    pairs = list(params.items()) if isinstance(params, Mapping) else list(params or [])
    moment = timestamp or datetime.now(UTC)
    pairs += [
        ("AWSAccessKeyId", key[0]),
        ("SignatureVersion", "2"),
        ("SignatureMethod", signature_method),
        ("Timestamp", moment.strftime("%Y-%m-%dT%H:%M:%SZ")),
    ]
    ordered = sorted(pairs, key=lambda pair: pair[0].encode())
    canonical = "&".join(
        f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
        for k, v in ordered
    )
    host = urllib.parse.urlsplit(url).netloc.lower()
    to_sign = f"{method.upper()}\n{host}\n{path}\n{canonical}".encode()
    digest = "sha256" if signature_method == "HmacSHA256" else "sha1"
    signature = hmac.new(key[1].encode(), to_sign, digest).digest()
    return [*pairs, ("Signature", base64.b64encode(signature).decode())]


def sigv4_headers(
    method: str,
    target: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    key: Key = DEFAULT_KEY,
    region: str = REGION,
    service: str = "ec2",
) -> dict[str, str]:
    """``headers`` plus X-Amz-Date and Authorization from botocore's SigV4 signer, over
    exactly this method, URL and body."""
    request = AWSRequest(method=method, url=target, data=body, headers=dict(headers))
    SigV4Auth(Credentials(*key), service, region).add_auth(request)
    return dict(request.headers.items())


def raw_request(
    url: str,
    params: Params | None = None,
    *,
    method: str = "POST",
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    path: str = "/",
    auth: str | None = "v4",
    key: Key = DEFAULT_KEY,
    region: str = REGION,
    context: ssl.SSLContext | None = None,
) -> RawResponse:
    """One HTTP request to the server; any status is returned, not raised.

    Signed by default: ``auth="v4"`` signs the exact bytes sent with botocore's SigV4 signer
    (``key``, ``region``, service ec2); ``"v2"`` / ``"v2-sha1"`` add SigV2 parameters
    (HmacSHA256 / HmacSHA1); None sends it unsigned.
    """
    if auth in ("v2", "v2-sha1"):
        signature_method = "HmacSHA1" if auth == "v2-sha1" else "HmacSHA256"
        params = sigv2_params(
            params, method=method, url=url, path=path, key=key, signature_method=signature_method
        )
    encoded = encode_params(params)
    target = url + path
    if method == "GET":
        if encoded:
            target += ("&" if "?" in target else "?") + encoded
    elif body is None:
        body = encoded.encode()
    all_headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    all_headers.update(headers or {})
    if auth == "v4":
        all_headers = sigv4_headers(
            method, target, body or b"", all_headers, key=key, region=region
        )
    request = urllib.request.Request(target, data=body, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return RawResponse(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as error:
        with error:
            return RawResponse(error.code, dict(error.headers), error.read())


def volume_segment(data_dir: Path, volume_id: str) -> Path:
    """The file backend's first segment file of a volume (its first bytes live there)."""
    (path,) = data_dir.glob(f"storage/volumes/{volume_id}/seg-0000")
    return path


def block_path(data_dir: Path, data: bytes) -> StoredBlock:
    """The snapshot block holding ``data`` in the local block store."""
    return StoredBlock.of(data_dir / "blocks", data)


def at_once(calls: Sequence[Callable[[], Any]]) -> list[str]:
    """Make the boto3 calls together (each in a thread, all released at once): the error code
    of each, or "ok"."""
    outcomes = [""] * len(calls)
    start = threading.Barrier(len(calls))

    def call(number: int) -> None:
        start.wait()
        try:
            calls[number]()
            outcomes[number] = "ok"
        except ClientError as exc:
            outcomes[number] = str(exc.response["Error"]["Code"])

    threads = [threading.Thread(target=call, args=(n,)) for n in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return outcomes
