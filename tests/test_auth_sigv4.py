"""SigV4 verification against requests signed by botocore itself (boto3, AWS CLI, euca2ools
style), in the Authorization header and presigned, with each wrong part rejected as EC2 does.

The helpers at the top (`Received`, `received_from`, `KEYS`) are shared with the SigV2 tests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import os
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from aiohttp import web
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSPreparedRequest, AWSRequest, AWSResponse
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from ebsemu import errors
from ebsemu.api.auth import VerifiedRequest, prepare_request, verify_request
from ebsemu.api.auth.canonical import header_values
from ebsemu.api.codec import serialize_error
from tests.server import free_port

KEY_ID = "AKIDEXAMPLE00000001"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
OTHER_KEY_ID = "AKIDEXAMPLE00000002"
OTHER_SECRET = "another/secret+key=="
KEYS = {KEY_ID: SECRET, OTHER_KEY_ID: OTHER_SECRET}
ENDPOINT = "http://127.0.0.1:8773"
FORM = "application/x-www-form-urlencoded; charset=utf-8"
EUCA_FORM = "application/x-www-form-urlencoded"
VOLUMES_BODY = (
    b'<DescribeVolumesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
    b"<requestId>5e7c1a6c-0000-4000-8000-000000000000</requestId><volumeSet/>"
    b"</DescribeVolumesResponse>"
)


# --- requests as the server receives them -------------------------------------------------


@dataclass(frozen=True)
class Received:
    """A request as aiohttp hands it over: raw path and query, headers, body, Host."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes
    host: str

    def verify(
        self,
        *,
        now: datetime,
        lookup: Callable[[str], str | None] = KEYS.get,
        services: tuple[str, ...] = ("ec2", "ebs"),
    ) -> VerifiedRequest:
        return verify_request(
            self.method,
            self.path,
            self.query,
            self.headers,
            self.body,
            lookup,
            now=now,
            host_header=self.host,
            services=services,
        )

    def with_headers(self, **changes: str | None) -> Received:
        """Headers replaced by name (underscores for dashes); None removes one."""
        wanted = {name.replace("_", "-").lower(): value for name, value in changes.items()}
        headers = {k: v for k, v in self.headers.items() if k.lower() not in wanted}
        headers.update({k: v for k, v in wanted.items() if v is not None})
        return dataclasses.replace(self, headers=headers)


def received_from(prepared: AWSPreparedRequest) -> Received:
    split = urllib.parse.urlsplit(prepared.url)
    headers = {
        name: value.decode() if isinstance(value, bytes) else value
        for name, value in prepared.headers.items()
    }
    headers["Host"] = split.netloc
    body = prepared.body or b""
    if isinstance(body, str):
        body = body.encode()
    return Received(prepared.method, split.path or "/", split.query, headers, body, split.netloc)


def signed_at(received: Received) -> datetime:
    stamp = received.headers.get("X-Amz-Date")
    if stamp is None:
        stamp = dict(urllib.parse.parse_qsl(received.query))["X-Amz-Date"]
    return datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def error_of(received: Received, now: datetime, **kwargs: Any) -> errors.ApiError:
    with pytest.raises(errors.ApiError) as caught:
        received.verify(now=now, **kwargs)
    return caught.value


# --- signers ------------------------------------------------------------------------------


class _CannedBody:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.body


@functools.cache
def _boto3_client(region: str, key: str, secret: str) -> tuple[Any, list[AWSPreparedRequest]]:
    client = boto3.client(
        "ec2",
        endpoint_url=ENDPOINT,
        region_name=region,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
    )
    sent: list[AWSPreparedRequest] = []

    def capture(request: AWSPreparedRequest, **_: Any) -> AWSResponse:
        sent.append(request)
        return AWSResponse(request.url, 200, {}, _CannedBody(VOLUMES_BODY))

    client.meta.events.register("before-send.ec2.*", capture)
    return client, sent


def boto3_describe_volumes(
    region: str = "us-east-1", key: str = KEY_ID, secret: str = SECRET
) -> Received:
    """DescribeVolumes exactly as boto3 (and so the AWS CLI) sends it, caught before sending."""
    client, sent = _boto3_client(region, key, secret)
    client.describe_volumes(
        VolumeIds=["vol-0123456789abcdef0"],
        Filters=[{"Name": "tag:Name", "Values": ["a b~c+d/é*"]}],
    )
    return received_from(sent[-1])


def sigv4_signed(
    *,
    method: str = "POST",
    url: str = ENDPOINT + "/",
    body: bytes = b"Action=DescribeVolumes&Version=2016-11-15",
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    region: str = "us-east-1",
    service: str = "ec2",
    key: str = KEY_ID,
    secret: str = SECRET,
) -> Received:
    request = AWSRequest(
        method=method,
        url=url,
        data=body,
        params=params or {},
        headers={"Content-Type": FORM} if headers is None else headers,
    )
    SigV4Auth(Credentials(key, secret), service, region).add_auth(request)
    return received_from(request.prepare())


def presigned(
    *,
    expires: int = 60,
    method: str = "GET",
    params: dict[str, str] | None = None,
    region: str = "us-east-1",
) -> Received:
    request = AWSRequest(
        method=method,
        url=ENDPOINT + "/",
        params=params or {"Action": "DescribeVolumes", "Version": "2016-11-15"},
    )
    SigV4QueryAuth(Credentials(KEY_ID, SECRET), "ec2", region, expires=expires).add_auth(request)
    return received_from(request.prepare())


def replace_in_authorization(received: Received, old: str, new: str) -> Received:
    authorization = received.headers["Authorization"]
    assert old in authorization
    return received.with_headers(authorization=authorization.replace(old, new, 1))


# --- what verifies ------------------------------------------------------------------------


def test_boto3_request_verifies_with_the_right_key_and_reports_scope() -> None:
    request = boto3_describe_volumes()
    assert request.headers["Content-Type"] == FORM
    verified = request.verify(now=signed_at(request))
    assert verified == VerifiedRequest(KEY_ID, "us-east-1", "ec2", 4, True)


def test_second_key_verifies_as_itself() -> None:
    request = boto3_describe_volumes(key=OTHER_KEY_ID, secret=OTHER_SECRET)
    assert request.verify(now=signed_at(request)).access_key_id == OTHER_KEY_ID


def test_euca2ools_form_without_charset_and_made_up_region_verifies() -> None:
    region = f"undefined-{os.getpid()}"
    request = sigv4_signed(
        body=b"Action=DescribeVolumes&Version=2015-10-01&VolumeId.1=vol-0123456789abcdef0",
        headers={"Content-Type": EUCA_FORM},
        region=region,
    )
    verified = request.verify(now=signed_at(request))
    assert (verified.region, verified.service, verified.version) == (region, "ec2", 4)


@pytest.mark.parametrize("region", ["eu-west-3", "US-WEST-2", "moon-base-1"])
def test_any_signing_region_verifies_and_is_reported(region: str) -> None:
    request = boto3_describe_volumes(region=region)
    assert request.verify(now=signed_at(request)).region == region


def test_ebs_signing_name_verifies_on_an_ebs_path_with_encoded_segments() -> None:
    request = sigv4_signed(
        method="PUT",
        url=ENDPOINT + "/snapshots/snap-0123456789abcdef0/blocks/7",
        body=b"\x00" * 4096,
        headers={"Content-Type": "application/octet-stream", "x-amz-Data-Length": "4096"},
        service="ebs",
    )
    verified = request.verify(now=signed_at(request))
    assert (verified.service, verified.version) == ("ebs", 4)


def test_path_with_spaces_and_dot_segments_verifies_as_aws_normalizes_it() -> None:
    request = sigv4_signed(method="GET", url=ENDPOINT + "/a/./b%20c/../d%2Fe/", body=b"")
    assert request.verify(now=signed_at(request)).version == 4


def test_query_parameters_with_spaces_unicode_and_reserved_characters_verify() -> None:
    request = sigv4_signed(
        method="GET",
        body=b"",
        params={"Action": "DescribeVolumes", "Filter.1.Value.1": "a b+c/é~*", "Empty": ""},
    )
    assert "+" in request.query  # urlencode sends a space as '+', the signer used %20
    assert request.verify(now=signed_at(request)).version == 4


def test_date_header_instead_of_x_amz_date_verifies() -> None:
    request = sigv4_signed(headers={"Content-Type": FORM, "Date": "Mon, 01 Jan 2024 00:00:00 GMT"})
    assert "X-Amz-Date" not in request.headers
    moment = parsedate_to_datetime(request.headers["Date"]).replace(tzinfo=UTC)
    assert request.verify(now=moment).version == 4


def test_declared_payload_hash_that_matches_the_body_verifies() -> None:
    body = b"Action=DescribeVolumes&Version=2016-11-15"
    request = sigv4_signed(
        body=body,
        headers={"Content-Type": FORM, "X-Amz-Content-SHA256": hashlib.sha256(body).hexdigest()},
    )
    assert request.verify(now=signed_at(request)).payload_signed


def test_unsigned_payload_verifies_and_is_reported_as_unsigned() -> None:
    request = sigv4_signed(
        headers={"Content-Type": FORM, "X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"}
    )
    verified = request.verify(now=signed_at(request))
    assert (verified.version, verified.payload_signed) == (4, False)


def test_changing_an_unsigned_header_does_not_matter() -> None:
    request = boto3_describe_volumes().with_headers(user_agent="something else entirely")
    assert request.verify(now=signed_at(request)).access_key_id == KEY_ID


def test_repeated_header_values_are_joined_with_commas_as_signed() -> None:
    request = sigv4_signed(headers={"Content-Type": FORM, "X-Amz-Meta-Tag": "a,b"})
    headers = CIMultiDict(request.headers)
    headers.popall("X-Amz-Meta-Tag")
    headers.add("X-Amz-Meta-Tag", "a")
    headers.add("X-Amz-Meta-Tag", " b ")
    split = dataclasses.replace(request, headers=headers)
    assert "x-amz-meta-tag" in request.headers["Authorization"]
    assert split.verify(now=signed_at(request)).version == 4


def _proxy(pairs: list[tuple[str, str]]) -> Mapping[str, str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


@pytest.mark.parametrize("kind", [dict, CIMultiDict, _proxy])
def test_header_values_are_found_case_insensitively_in_order_in_dicts_and_multidicts(
    kind: Callable[[list[tuple[str, str]]], Mapping[str, str]],
) -> None:
    headers = kind([("X-Amz-Meta-Tag", "a"), ("Content-Type", FORM), ("x-amz-meta-TAG", " b ")])
    for name in ("x-amz-meta-tag", "X-AMZ-META-TAG"):
        assert header_values(headers, name) == ["a", " b "]
    assert header_values(headers, "X-Amz-Date") == []


def test_timestamp_fourteen_minutes_away_still_verifies() -> None:
    request = boto3_describe_volumes()
    for offset in (timedelta(minutes=14), timedelta(minutes=-14)):
        assert request.verify(now=signed_at(request) + offset).version == 4


def test_prepare_request_checks_all_but_the_secret_for_an_async_key_store() -> None:
    request = boto3_describe_volumes()
    signed = prepare_request(
        request.method,
        request.path,
        request.query,
        request.headers,
        request.body,
        now=signed_at(request),
        host_header=request.host,
    )
    assert signed.access_key_id == KEY_ID
    assert signed.verify(SECRET).access_key_id == KEY_ID
    with pytest.raises(errors.AuthFailure):
        signed.verify(OTHER_SECRET)


# --- each wrong part ----------------------------------------------------------------------


def test_unknown_key_id_is_401_auth_failure() -> None:
    request = boto3_describe_volumes(key="AKIDNOBODYHASTHIS000")
    failure = error_of(request, signed_at(request))
    assert (type(failure), failure.code, failure.http_status) == (
        errors.AuthFailure,
        "AuthFailure",
        401,
    )
    assert failure.message == "AWS was not able to validate the provided access credentials"


def test_wrong_secret_gets_the_same_answer_as_an_unknown_key() -> None:
    request = boto3_describe_volumes(secret="not-the-secret")
    wrong = error_of(request, signed_at(request))
    unknown_request = boto3_describe_volumes(key="AKIDNOBODYHASTHIS000")
    unknown = error_of(unknown_request, signed_at(unknown_request))
    assert (wrong.code, wrong.http_status, wrong.message) == (
        unknown.code,
        unknown.http_status,
        unknown.message,
    )


def test_key_id_swapped_after_signing_is_auth_failure() -> None:
    request = replace_in_authorization(boto3_describe_volumes(), KEY_ID, OTHER_KEY_ID)
    assert isinstance(error_of(request, signed_at(request)), errors.AuthFailure)


def test_region_changed_after_signing_is_auth_failure() -> None:
    request = replace_in_authorization(boto3_describe_volumes(), "/us-east-1/", "/us-west-2/")
    assert isinstance(error_of(request, signed_at(request)), errors.AuthFailure)


def test_service_changed_after_signing_is_auth_failure() -> None:
    request = replace_in_authorization(boto3_describe_volumes(), "/ec2/", "/ebs/")
    assert isinstance(error_of(request, signed_at(request)), errors.AuthFailure)


def test_signing_for_another_service_is_auth_failure_naming_the_right_ones() -> None:
    request = sigv4_signed(service="s3")
    failure = error_of(request, signed_at(request))
    assert isinstance(failure, errors.AuthFailure)
    assert "'ebs' or 'ec2'" in failure.message


def test_ebs_signature_on_an_ec2_only_endpoint_is_auth_failure() -> None:
    request = sigv4_signed(service="ebs")
    failure = error_of(request, signed_at(request), services=("ec2",))
    assert isinstance(failure, errors.AuthFailure)


def test_x_amz_date_changed_by_a_second_is_auth_failure() -> None:
    request = boto3_describe_volumes()
    later = signed_at(request) + timedelta(seconds=1)
    tampered = request.with_headers(x_amz_date=later.strftime("%Y%m%dT%H%M%SZ"))
    assert isinstance(error_of(tampered, later), errors.AuthFailure)


def test_scope_date_not_matching_x_amz_date_is_auth_failure() -> None:
    request = boto3_describe_volumes()
    day = signed_at(request).strftime("%Y%m%d")
    other_day = (signed_at(request) - timedelta(days=1)).strftime("%Y%m%d")
    tampered = replace_in_authorization(request, f"/{day}/", f"/{other_day}/")
    failure = error_of(tampered, signed_at(request))
    assert isinstance(failure, errors.AuthFailure)
    assert "Date in Credential scope" in failure.message


@pytest.mark.parametrize(
    "header, value",
    [("Content-Type", "application/x-www-form-urlencoded"), ("X-Amz-Date", None)],
)
def test_signed_header_changed_or_removed_is_auth_failure(header: str, value: str | None) -> None:
    request = boto3_describe_volumes()
    tampered = request.with_headers(**{header.replace("-", "_"): value})
    if value is None:
        tampered = tampered.with_headers(
            date=format_datetime(signed_at(request), usegmt=True)
        )  # the Date header then stands in: same moment, but not what was signed
    assert isinstance(error_of(tampered, signed_at(request)), errors.AuthFailure)


def test_host_other_than_the_one_signed_is_auth_failure() -> None:
    request = boto3_describe_volumes()
    moved = dataclasses.replace(request, host="127.0.0.1:9999").with_headers(host="127.0.0.1:9999")
    assert isinstance(error_of(moved, signed_at(request)), errors.AuthFailure)


def test_body_tampered_is_auth_failure() -> None:
    request = boto3_describe_volumes()
    tampered = dataclasses.replace(
        request, body=request.body.replace(b"DescribeVolumes", b"DeleteVolume")
    )
    assert isinstance(error_of(tampered, signed_at(request)), errors.AuthFailure)


def test_declared_payload_hash_not_matching_the_body_is_auth_failure() -> None:
    body = b"Action=DescribeVolumes&Version=2016-11-15"
    request = sigv4_signed(
        body=body,
        headers={"Content-Type": FORM, "X-Amz-Content-SHA256": hashlib.sha256(body).hexdigest()},
    )
    tampered = dataclasses.replace(request, body=b"Action=DeleteVolume&Version=2016-11-15")
    failure = error_of(tampered, signed_at(request))
    assert isinstance(failure, errors.AuthFailure)
    assert "x-amz-content-sha256" in failure.message


def test_query_parameter_added_after_signing_is_auth_failure() -> None:
    request = boto3_describe_volumes()
    tampered = dataclasses.replace(request, query="Action=DeleteVolume")
    assert isinstance(error_of(tampered, signed_at(request)), errors.AuthFailure)


def test_method_changed_after_signing_is_auth_failure() -> None:
    request = boto3_describe_volumes()
    tampered = dataclasses.replace(request, method="PUT")
    assert isinstance(error_of(tampered, signed_at(request)), errors.AuthFailure)


@pytest.mark.parametrize("minutes", [16, -16, 60 * 24])
def test_timestamp_more_than_15_minutes_away_is_400_request_expired(minutes: int) -> None:
    request = boto3_describe_volumes()
    failure = error_of(request, signed_at(request) + timedelta(minutes=minutes))
    assert (type(failure), failure.code, failure.http_status) == (
        errors.RequestExpired,
        "RequestExpired",
        400,
    )
    assert failure.message.startswith("Request has expired.")


def test_no_credentials_at_all_is_400_missing_parameter_awsaccesskeyid() -> None:
    request = boto3_describe_volumes().with_headers(authorization=None)
    failure = error_of(request, signed_at(request))
    assert (failure.code, failure.http_status) == ("MissingParameter", 400)
    assert failure.message == "The request must contain the parameter AWSAccessKeyId"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda a: a.replace(", Signature=", ", Sig="),
        lambda a: a.split(", Signature=")[0],
        lambda a: a.replace("AWS4-HMAC-SHA256", "AWS4-ECDSA-P256-SHA256"),
        lambda a: a.replace("/aws4_request", ""),
        lambda a: a.replace("SignedHeaders=content-type;host;", "SignedHeaders=content-type;"),
        lambda a: a.replace("SignedHeaders=content-type", "SignedHeaders=Content-Type"),
        lambda a: a.replace(", SignedHeaders", ",, SignedHeaders"),
        lambda a: a + ", Signature=00",
        lambda a: "",
    ],
    ids=[
        "field-renamed",
        "signature-missing",
        "other-algorithm",
        "credential-four-parts",
        "host-not-signed",
        "uppercase-header-name",
        "empty-component",
        "duplicate-field",
        "empty",
    ],
)
def test_malformed_authorization_is_400_incomplete_signature(
    mangle: Callable[[str], str],
) -> None:
    request = boto3_describe_volumes()
    mangled = request.with_headers(authorization=mangle(request.headers["Authorization"]))
    failure = error_of(mangled, signed_at(request))
    assert (type(failure), failure.code, failure.http_status) == (
        errors.IncompleteSignature,
        "IncompleteSignature",
        400,
    )


def test_unparseable_x_amz_date_is_incomplete_signature() -> None:
    request = boto3_describe_volumes().with_headers(x_amz_date="2024-01-01T00:00:00Z")
    assert isinstance(error_of(request, datetime.now(UTC)), errors.IncompleteSignature)


@pytest.mark.parametrize(
    "date", ["Fri, 31 Dec 9999 23:59:59 -0100", "Mon, 32 Jan 2024 00:00:00 GMT", "soon"]
)
def test_date_header_out_of_range_or_unparseable_is_incomplete_signature(date: str) -> None:
    request = sigv4_signed(headers={"Content-Type": FORM, "Date": date})
    tampered = request.with_headers(date=date)
    assert isinstance(error_of(tampered, datetime.now(UTC)), errors.IncompleteSignature)


def test_authorization_header_and_presigned_query_together_is_incomplete_signature() -> None:
    url = presigned()
    both = dataclasses.replace(boto3_describe_volumes(), query=url.query)
    assert isinstance(error_of(both, signed_at(url)), errors.IncompleteSignature)


# --- presigned query strings --------------------------------------------------------------


def test_presigned_url_verifies_until_it_expires() -> None:
    url = presigned(expires=60)
    assert "X-Amz-Signature=" in url.query and "Authorization" not in url.headers
    assert url.verify(now=signed_at(url) + timedelta(seconds=60)).version == 4


def test_presigned_url_used_after_expiry_is_request_expired() -> None:
    url = presigned(expires=60)
    failure = error_of(url, signed_at(url) + timedelta(seconds=61))
    assert (failure.code, failure.http_status) == ("RequestExpired", 400)


def test_presigned_url_dated_in_the_future_is_request_expired() -> None:
    url = presigned(expires=3600)
    assert isinstance(error_of(url, signed_at(url) - timedelta(minutes=16)), errors.RequestExpired)


def test_presigned_url_valid_for_a_week_still_verifies_after_a_day() -> None:
    url = presigned(expires=7 * 24 * 3600)
    assert url.verify(now=signed_at(url) + timedelta(days=1)).version == 4


def test_boto3_generate_presigned_url_verifies_as_post() -> None:
    client, _ = _boto3_client("us-east-1", KEY_ID, SECRET)
    url = client.generate_presigned_url(
        "describe_volumes", Params={"VolumeIds": ["vol-0123456789abcdef0"]}, ExpiresIn=300
    )
    split = urllib.parse.urlsplit(url)
    received = Received("POST", split.path or "/", split.query, {}, b"", split.netloc)
    assert received.verify(now=signed_at(received)).region == "us-east-1"


def test_presigned_query_parameter_changed_is_auth_failure() -> None:
    url = presigned(params={"Action": "DescribeVolumes", "VolumeId.1": "vol-1"})
    tampered = dataclasses.replace(url, query=url.query.replace("vol-1", "vol-2"))
    assert isinstance(error_of(tampered, signed_at(url)), errors.AuthFailure)


def test_presigned_expiry_extended_after_signing_is_auth_failure() -> None:
    url = presigned(expires=60)
    tampered = dataclasses.replace(
        url, query=url.query.replace("X-Amz-Expires=60", "X-Amz-Expires=600")
    )
    assert isinstance(
        error_of(tampered, signed_at(url) + timedelta(seconds=90)), errors.AuthFailure
    )


def test_presigned_body_added_after_signing_is_auth_failure() -> None:
    url = presigned(method="POST")
    tampered = dataclasses.replace(url, body=b"Action=DeleteVolume&VolumeId=vol-1")
    assert isinstance(error_of(tampered, signed_at(url)), errors.AuthFailure)


@pytest.mark.parametrize(
    "old, new",
    [
        ("X-Amz-Algorithm=AWS4-HMAC-SHA256", "X-Amz-Algorithm=AWS4-HMAC-SHA1"),
        ("X-Amz-Expires=60", "X-Amz-Expires=604801"),
        ("X-Amz-Expires=60", "X-Amz-Expires=-1"),
        ("X-Amz-SignedHeaders=host", "X-Amz-SignedHeaders=x-amz-date"),
        ("X-Amz-Date=", "X-Amz-Date=2024"),
        ("&X-Amz-Credential=", "&X-Amz-Nothing="),
        ("X-Amz-Expires=60", "X-Amz-Expires=60&X-Amz-Expires=60"),
    ],
)
def test_malformed_presigned_query_is_incomplete_signature(old: str, new: str) -> None:
    url = presigned(expires=60)
    assert old in url.query
    mangled = dataclasses.replace(url, query=url.query.replace(old, new, 1))
    assert isinstance(error_of(mangled, signed_at(url)), errors.IncompleteSignature)


# --- random mutations ---------------------------------------------------------------------


@functools.cache
def _bases() -> dict[str, Received]:
    return {
        "boto3": boto3_describe_volumes(),
        "euca2ools": sigv4_signed(
            body=b"Action=DescribeVolumes&Version=2015-10-01",
            headers={"Content-Type": EUCA_FORM},
            region="undefined-4242",
        ),
        "presigned": presigned(params={"Action": "DescribeVolumes", "VolumeId.1": "vol-1 é"}),
    }


def _pairs(raw: str) -> list[tuple[str, str]]:
    return urllib.parse.parse_qsl(raw, keep_blank_values=True)


def _encode(pairs: list[tuple[str, str]]) -> str:
    return urllib.parse.urlencode(pairs, quote_via=urllib.parse.quote)


_VISIBLE = st.characters(min_codepoint=0x21, max_codepoint=0x7E)


@st.composite
def mutated(draw: st.DrawFn, base: Received) -> Received:
    """One change to a part the signature covers; never a change AWS would call equivalent."""
    kind = draw(
        st.sampled_from(
            [
                "body",
                "query-value",
                "query-add",
                "query-drop",
                "header",
                "drop-header",
                "auth-char",
                "method",
                "path",
                "host",
            ]
        )
    )
    if kind == "body":
        body = bytearray(base.body or b"x")
        at = draw(st.integers(0, len(body) - 1))
        body[at] = (body[at] + draw(st.integers(1, 255))) % 256
        return dataclasses.replace(base, body=bytes(body))
    if kind in ("query-value", "query-drop", "auth-char") and base.query:
        pairs = _pairs(base.query)
        at = draw(st.integers(0, len(pairs) - 1))
        name, value = pairs[at]
        if kind == "query-drop":
            del pairs[at]
        elif value:
            chars = list(value)
            spot = draw(st.integers(0, len(chars) - 1))
            chars[spot] = draw(_VISIBLE.filter(lambda c: c != chars[spot]))
            pairs[at] = (name, "".join(chars))
        else:
            pairs[at] = (name, draw(st.text(min_size=1)))
        return dataclasses.replace(base, query=_encode(pairs))
    if kind == "query-add":
        extra = (draw(st.text(max_size=8)), draw(st.text(max_size=8)))
        return dataclasses.replace(base, query=_encode([*_pairs(base.query), extra]))
    if kind in ("header", "drop-header", "auth-char"):
        signed = {"authorization", "content-type", "x-amz-date"} & {
            name.lower() for name in base.headers
        }
        if not signed:
            return dataclasses.replace(base, method="DELETE")
        name = draw(st.sampled_from(sorted(signed)))
        value = next(v for k, v in base.headers.items() if k.lower() == name)
        if kind == "drop-header":
            return base.with_headers(**{name.replace("-", "_"): None})
        chars = list(value)
        spot = draw(st.integers(0, len(chars) - 1))
        visible = chars[spot].strip() != ""
        pool = _VISIBLE if visible else st.sampled_from("xyz")
        chars[spot] = draw(pool.filter(lambda c: c != chars[spot]))
        return base.with_headers(**{name.replace("-", "_"): "".join(chars)})
    if kind == "method":
        return dataclasses.replace(
            base,
            method=draw(
                st.sampled_from(["GET", "PUT", "POST", "DELETE"]).filter(lambda m: m != base.method)
            ),
        )
    if kind == "path":
        segment = draw(st.text(min_size=1).filter(lambda s: s not in (".", "..") and "/" not in s))
        return dataclasses.replace(base, path="/" + urllib.parse.quote(segment))
    port = draw(st.integers(1, 65535).filter(lambda p: p != 8773))
    return dataclasses.replace(base, host=f"127.0.0.1:{port}").with_headers(
        host=f"127.0.0.1:{port}"
    )


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), which=st.sampled_from(["boto3", "euca2ools", "presigned"]))
def test_random_mutations_of_signed_requests_never_verify_and_raise_only_aws_errors(
    data: st.DataObject, which: str
) -> None:
    base = _bases()[which]
    now = signed_at(base)
    assert base.verify(now=now).access_key_id == KEY_ID
    changed = data.draw(mutated(base))
    with pytest.raises(errors.ApiError) as caught:
        changed.verify(now=now)
    assert caught.value.http_status < 500
    assert SECRET not in caught.value.message


@settings(max_examples=300)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "get", ""]),
    path=st.text(max_size=30),
    query=st.text(max_size=80),
    headers=st.dictionaries(
        st.sampled_from(
            ["Authorization", "X-Amz-Date", "Date", "Host", "Content-Type", "X-Amz-Content-SHA256"]
        ),
        st.one_of(
            st.text(max_size=120),
            st.just(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE00000001/20240101/r/ec2/aws4_request,"
                " SignedHeaders=host, Signature=00"
            ),
            st.just("20240101T000000Z"),
        ),
    ),
    body=st.binary(max_size=80),
    host=st.text(max_size=20),
)
def test_arbitrary_requests_raise_only_aws_errors(
    method: str, path: str, query: str, headers: dict[str, str], body: bytes, host: str
) -> None:
    request = Received(method, path, query, headers, body, host)
    with pytest.raises(errors.ApiError) as caught:
        request.verify(now=datetime(2024, 1, 1, tzinfo=UTC), lookup=lambda key: SECRET)
    assert caught.value.http_status < 500


# --- end to end: real HTTP into aiohttp, as the handler will call it ----------------------


async def _verifying_view(request: web.Request) -> web.Response:
    """What the EC2 handler is to do: raw path and query, the body bytes, the Host header."""
    body = await request.read()
    path, _, query = request.raw_path.partition("?")
    try:
        verified = verify_request(
            request.method,
            path,
            query,
            request.headers,
            body,
            KEYS.get,
            now=datetime.now(UTC),
            host_header=request.host,
        )
    except errors.ApiError as exc:
        return web.Response(
            status=exc.http_status,
            body=serialize_error(exc.code, exc.message, "00000000-0000-4000-8000-000000000000"),
            content_type="text/xml",
        )
    request.app[SEEN].append(verified)
    return web.Response(body=VOLUMES_BODY, content_type="text/xml")


SEEN: web.AppKey[list[VerifiedRequest]] = web.AppKey("seen", list)


@pytest.fixture(scope="module")
def verifying_server() -> Iterator[tuple[str, list[VerifiedRequest]]]:
    app = web.Application()
    app[SEEN] = []
    app.router.add_route("*", "/{tail:.*}", _verifying_view)
    runner = web.AppRunner(app)
    loop = asyncio.new_event_loop()
    port = free_port()
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    yield f"http://127.0.0.1:{port}", app[SEEN]
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def _live_client(url: str, secret: str = SECRET, **config: Any) -> Any:
    return boto3.client(
        "ec2",
        endpoint_url=url,
        region_name="eu-west-1",
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=secret,
        config=Config(retries={"total_max_attempts": 1}, **config),
    )


def test_boto3_over_http_verifies_and_a_wrong_secret_gets_401_auth_failure(
    verifying_server: tuple[str, list[VerifiedRequest]],
) -> None:
    url, seen = verifying_server
    _live_client(url).describe_volumes(Filters=[{"Name": "tag:x", "Values": ["a b/é"]}])
    assert seen[-1] == VerifiedRequest(KEY_ID, "eu-west-1", "ec2", 4, True)
    with pytest.raises(ClientError) as caught:
        _live_client(url, secret="wrong").describe_volumes()
    assert caught.value.response["Error"]["Code"] == "AuthFailure"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 401


def test_boto3_sigv2_over_http_verifies_and_a_wrong_secret_gets_403(
    verifying_server: tuple[str, list[VerifiedRequest]],
) -> None:
    url, seen = verifying_server
    _live_client(url, signature_version="v2").describe_volumes()
    assert seen[-1] == VerifiedRequest(KEY_ID, None, None, 2, True)
    with pytest.raises(ClientError) as caught:
        _live_client(url, secret="wrong", signature_version="v2").describe_volumes()
    assert caught.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_aws_cli_verifies_and_a_wrong_secret_fails_with_auth_failure(
    verifying_server: tuple[str, list[VerifiedRequest]],
    tmp_path: Path,
) -> None:
    url, seen = verifying_server
    aws = Path(sys.executable).with_name("aws")

    def run(secret: str) -> subprocess.CompletedProcess[str]:
        env = dict(
            os.environ,
            AWS_ACCESS_KEY_ID=KEY_ID,
            AWS_SECRET_ACCESS_KEY=secret,
            AWS_DEFAULT_REGION="ap-south-1",
            AWS_CONFIG_FILE=str(tmp_path / "none"),
            AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
            AWS_MAX_ATTEMPTS="1",
            AWS_PAGER="",
        )
        argv = [str(aws), "ec2", "describe-volumes", "--endpoint-url", url, "--output", "json"]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)

    ok = run(SECRET)
    assert ok.returncode == 0, ok.stderr
    assert seen[-1].region == "ap-south-1"
    refused = run("wrong")
    assert refused.returncode != 0 and "(AuthFailure)" in refused.stderr
