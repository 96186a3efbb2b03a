"""Signatures on the wire, end to end: boto3, the AWS CLI, presigned URLs, raw SigV4 and SigV2.

Each test signs a request correctly and then gets one part wrong (key id, secret, region,
service, date, a signed header, the body, the clock, an expired presigned URL) and checks the
AWS error EC2 answers, with its HTTP status.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.auth
import pytest
from botocore.config import Config as BotoConfig

from tests.api_support import (
    DEFAULT_KEY,
    RawResponse,
    aws_error,
    encode_params,
    raw_request,
    sigv2_params,
    sigv4_headers,
)
from tests.server import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, TEST_CONFIG, ServerProcess

AUTH_FAILURE = ("AuthFailure", 401)
NOT_VALIDATED = "AWS was not able to validate the provided access credentials"
FORM = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
DESCRIBE = {"Action": "DescribeVolumes", "Version": "2016-11-15"}


def error_of(response: RawResponse) -> tuple[str, int]:
    """(Code, HTTP status) of an EC2 error envelope."""
    assert b"<Response><Errors><Error><Code>" in response.body, response.body[:300]
    return response.error()[0], response.status


def ok(response: RawResponse) -> None:
    assert response.status == 200, response.body[:500]
    assert b"<DescribeVolumesResponse" in response.body


def client(server: ServerProcess, key: tuple[str, str] = DEFAULT_KEY, **kwargs: Any) -> Any:
    config = BotoConfig(retries={"total_max_attempts": 1}, **kwargs.pop("boto", {}))
    return server.client(key=key, config=config, **kwargs)


# ---- boto3 --------------------------------------------------------------------------------


def test_boto3_with_the_right_key_is_served(server: ServerProcess) -> None:
    assert "Volumes" in client(server).describe_volumes()


@pytest.mark.parametrize(
    "key",
    [("AKIDWRONG", SECRET_ACCESS_KEY), (ACCESS_KEY_ID, "wrong"), ("AKIDWRONG", "wrong")],
    ids=["wrong-key-id", "wrong-secret", "both-wrong"],
)
def test_boto3_with_a_wrong_key_id_or_secret_is_401_auth_failure(
    server: ServerProcess, key: tuple[str, str]
) -> None:
    code, message, status = aws_error(client(server, key).describe_volumes)
    assert (code, status) == AUTH_FAILURE
    assert message == NOT_VALIDATED  # the same answer whether or not the key id exists


@pytest.mark.parametrize("region", ["eu-west-1", "undefined-4242"])
def test_boto3_signing_for_any_region_is_served_in_the_default_region(
    server: ServerProcess, region: str
) -> None:
    zones = client(server, region_name=region).describe_availability_zones()
    assert [z["RegionName"] for z in zones["AvailabilityZones"]] == [REGION]


def test_boto3_sigv2_is_served_and_a_wrong_secret_is_403_signature_does_not_match(
    server: ServerProcess,
) -> None:
    v2 = {"boto": {"signature_version": "v2"}}
    assert "Volumes" in client(server, **v2).describe_volumes()
    code, _, status = aws_error(client(server, (ACCESS_KEY_ID, "wrong"), **v2).describe_volumes)
    assert (code, status) == ("SignatureDoesNotMatch", 403)
    code, _, status = aws_error(client(server, ("AKIDWRONG", "x"), **v2).describe_volumes)
    assert (code, status) == AUTH_FAILURE


def test_boto3_signing_with_a_clock_20_minutes_off_is_request_expired(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    for skew in (-20, 20):
        moment = dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(minutes=skew)
        monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda m=moment: m)
        code, message, status = aws_error(client(server).describe_volumes)
        assert (code, status) == ("RequestExpired", 400)
        assert message.startswith("Request has expired.")
    monkeypatch.undo()
    client(server).describe_volumes()


def test_boto3_signing_with_a_clock_10_minutes_off_is_still_served(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    moment = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(minutes=10)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: moment)
    assert "Volumes" in client(server).describe_volumes()


# ---- presigned URLs ------------------------------------------------------------------------


def presigned(server: ServerProcess, expires: int, *, method: str = "GET", **kwargs: Any) -> str:
    url: str = client(server, **kwargs).generate_presigned_url(
        "describe_volumes", Params={}, ExpiresIn=expires, HttpMethod=method
    )
    return url


def fetch(url: str, method: str = "GET") -> RawResponse:
    parts = urllib.parse.urlsplit(url)
    base = f"{parts.scheme}://{parts.netloc}"
    return raw_request(base, method=method, body=b"", path=f"{parts.path}?{parts.query}", auth=None)


def test_presigned_url_is_served_until_it_expires_then_request_expired(
    server: ServerProcess,
) -> None:
    url = presigned(server, 2)
    ok(fetch(url))
    ok(fetch(url))  # a presigned URL may be used more than once while it is valid
    time.sleep(3)
    assert error_of(fetch(url)) == ("RequestExpired", 400)


def test_presigned_post_url_is_served(server: ServerProcess) -> None:
    ok(fetch(presigned(server, 60, method="POST"), method="POST"))


def test_presigned_url_with_a_wrong_secret_or_tampered_query_is_auth_failure(
    server: ServerProcess,
) -> None:
    assert error_of(fetch(presigned(server, 60, key=(ACCESS_KEY_ID, "wrong")))) == AUTH_FAILURE
    url = presigned(server, 60)
    assert error_of(fetch(url + "&MaxResults=5")) == AUTH_FAILURE
    assert error_of(fetch(url.replace("X-Amz-Expires=60", "X-Amz-Expires=600"))) == AUTH_FAILURE


def test_presigned_url_signature_never_reaches_the_log(server: ServerProcess) -> None:
    url = presigned(server, 60)
    ok(fetch(url))
    signature = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["X-Amz-Signature"][0]
    assert signature not in server.log_path.read_text(errors="replace")


# ---- raw SigV4, one part wrong at a time -----------------------------------------------------


def signed(
    server: ServerProcess, *, body: bytes | None = None, **sign: Any
) -> tuple[bytes, dict[str, str]]:
    """A correctly signed DescribeVolumes POST: its body and headers."""
    payload = body if body is not None else encode_params(DESCRIBE).encode()
    return payload, sigv4_headers("POST", server.url + "/", payload, FORM, **sign)


def send(server: ServerProcess, body: bytes, headers: dict[str, str]) -> RawResponse:
    return raw_request(server.url, body=body, headers=headers, auth=None)


def test_raw_sigv4_signed_by_botocore_is_served(server: ServerProcess) -> None:
    ok(send(server, *signed(server)))


def rescope(headers: dict[str, str], index: int, value: str) -> dict[str, str]:
    """The Authorization header with one part of its credential scope replaced."""
    head, credential, tail = headers["Authorization"].partition("Credential=")
    scope, comma, rest = tail.partition(",")
    parts = scope.split("/")
    parts[index] = value
    return {**headers, "Authorization": head + credential + "/".join(parts) + comma + rest}


@pytest.mark.parametrize(
    ("index", "value", "expected"),
    [
        (0, "AKIDWRONG", AUTH_FAILURE),
        (1, "20200101", AUTH_FAILURE),
        (2, "eu-west-1", AUTH_FAILURE),
        (3, "ebs", AUTH_FAILURE),
        (3, "s3", AUTH_FAILURE),
        (4, "aws5_request", AUTH_FAILURE),
    ],
    ids=["key-id", "date", "region", "service-ebs", "service-s3", "terminator"],
)
def test_raw_sigv4_with_one_scope_part_changed_is_refused(
    server: ServerProcess, index: int, value: str, expected: tuple[str, int]
) -> None:
    body, headers = signed(server)
    assert error_of(send(server, body, rescope(headers, index, value))) == expected


@pytest.mark.parametrize("service", ["ebs", "s3"])
def test_raw_sigv4_correctly_signed_for_another_service_is_auth_failure(
    server: ServerProcess, service: str
) -> None:
    body, headers = signed(server, service=service)
    assert error_of(send(server, body, headers)) == AUTH_FAILURE


def test_raw_sigv4_with_the_date_header_changed_is_auth_failure(server: ServerProcess) -> None:
    body, headers = signed(server)
    date = headers["X-Amz-Date"]  # 20240102T030405Z: move the seconds, keep the day
    moved = date[:-3] + f"{(int(date[-3:-1]) + 1) % 60:02d}Z"
    assert error_of(send(server, body, {**headers, "X-Amz-Date": moved})) == AUTH_FAILURE


def test_raw_sigv4_with_a_signed_header_changed_is_auth_failure(server: ServerProcess) -> None:
    body, headers = signed(server)
    assert "content-type" in headers["Authorization"]
    tampered = {**headers, "Content-Type": "application/x-www-form-urlencoded"}
    assert error_of(send(server, body, tampered)) == AUTH_FAILURE


def test_raw_sigv4_with_the_body_changed_is_auth_failure(server: ServerProcess) -> None:
    body, headers = signed(server)
    tampered = body.replace(b"DescribeVolumes", b"DescribeSnapshots")
    assert error_of(send(server, tampered, headers)) == AUTH_FAILURE
    assert error_of(send(server, body + b"&MaxResults=5", headers)) == AUTH_FAILURE


def test_raw_sigv4_with_an_unsigned_body_over_plain_http_is_auth_failure(
    server: ServerProcess,
) -> None:
    headers = {**FORM, "X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"}
    body = encode_params(DESCRIBE).encode()
    signed_headers = sigv4_headers("POST", server.url + "/", body, headers)
    assert error_of(send(server, body, signed_headers)) == AUTH_FAILURE


@pytest.mark.parametrize(
    "authorization",
    [
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240101/us-east-1/ec2/aws4_request",
        "AWS4-HMAC-SHA512 Credential=a, SignedHeaders=host, Signature=0",
        "Basic dXNlcjpwYXNz",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE, SignedHeaders=host, Signature=00",
    ],
    ids=["no-signature", "algorithm", "basic", "short-scope"],
)
def test_malformed_authorization_header_is_400_incomplete_signature(
    server: ServerProcess, authorization: str
) -> None:
    body, headers = signed(server)
    response = send(server, body, {**headers, "Authorization": authorization})
    assert error_of(response) == ("IncompleteSignature", 400)


def test_unsigned_request_is_400_missing_parameter(server: ServerProcess) -> None:
    for method in ("POST", "GET"):
        response = raw_request(server.url, DESCRIBE, method=method, auth=None)
        assert error_of(response) == ("MissingParameter", 400)


# ---- raw SigV2 -----------------------------------------------------------------------------


@pytest.mark.parametrize("auth", ["v2", "v2-sha1"])
@pytest.mark.parametrize("method", ["POST", "GET"])
def test_sigv2_with_the_right_key_is_served(server: ServerProcess, auth: str, method: str) -> None:
    ok(raw_request(server.url, DESCRIBE, method=method, auth=auth))


def test_sigv2_with_a_wrong_secret_is_403_and_an_unknown_key_401(server: ServerProcess) -> None:
    wrong_secret = raw_request(server.url, DESCRIBE, auth="v2", key=(ACCESS_KEY_ID, "wrong"))
    assert error_of(wrong_secret) == ("SignatureDoesNotMatch", 403)
    unknown = raw_request(server.url, DESCRIBE, auth="v2", key=("AKIDWRONG", "wrong"))
    assert error_of(unknown) == AUTH_FAILURE


def test_sigv2_with_a_parameter_changed_after_signing_is_signature_does_not_match(
    server: ServerProcess,
) -> None:
    params = sigv2_params(DESCRIBE, method="POST", url=server.url)
    tampered = [(k, "DescribeSnapshots" if k == "Action" else v) for k, v in params]
    response = raw_request(server.url, tampered, auth=None)
    assert error_of(response) == ("SignatureDoesNotMatch", 403)
    added = raw_request(server.url, [*params, ("MaxResults", "5")], auth=None)
    assert error_of(added) == ("SignatureDoesNotMatch", 403)


def test_sigv2_timestamp_20_minutes_old_is_request_expired(server: ServerProcess) -> None:
    old = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=20)
    params = sigv2_params(DESCRIBE, method="POST", url=server.url, timestamp=old)
    assert error_of(raw_request(server.url, params, auth=None)) == ("RequestExpired", 400)


# ---- the AWS CLI ---------------------------------------------------------------------------


def aws_cli(server: ServerProcess, tmp_path: Path, key: tuple[str, str]) -> Any:
    env = server.cli_env(key)
    env.update(
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
        AWS_MAX_ATTEMPTS="1",
    )
    aws = Path(sys.executable).with_name("aws")
    argv = [str(aws), "ec2", "describe-volumes", "--endpoint-url", server.url, "--output", "json"]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)


def test_aws_cli_with_the_right_key_is_served_and_a_wrong_secret_is_auth_failure(
    server: ServerProcess, tmp_path: Path
) -> None:
    done = aws_cli(server, tmp_path, DEFAULT_KEY)
    assert done.returncode == 0, done.stderr
    refused = aws_cli(server, tmp_path, (ACCESS_KEY_ID, "wrong"))
    assert refused.returncode != 0 and "(AuthFailure)" in refused.stderr


# ---- --no-auth -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        tmp_path_factory.mktemp("no-auth") / "data", TEST_CONFIG, args=("--no-auth",)
    )
    proc.start()
    yield proc
    proc.stop()


def test_no_auth_serves_unsigned_and_wrongly_signed_requests_as_the_default_account(
    open_server: ServerProcess,
) -> None:
    ok(raw_request(open_server.url, DESCRIBE, auth=None))
    volume = client(open_server, ("anyone", "anything")).create_volume(
        AvailabilityZone="us-east-1a", Size=1
    )
    assert volume["OwnerId"] == "000000000000"


def test_no_auth_is_announced_by_a_warning_at_start_up(open_server: ServerProcess) -> None:
    log = open_server.log_path.read_text()
    assert "WARNING" in log and "authentication is OFF (--no-auth)" in log


def test_without_no_auth_the_server_logs_no_such_warning(server: ServerProcess) -> None:
    assert "authentication is OFF" not in server.log_path.read_text()
