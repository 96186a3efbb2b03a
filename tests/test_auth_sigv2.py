"""SigV2 verification: botocore's SigV2Auth (HmacSHA256, form body or query) and the euca2ools
algorithm (HmacSHA1 or HmacSHA256, Timestamp or Expires), each wrong part rejected as EC2 does.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import urllib.parse
from datetime import UTC, datetime, timedelta

import pytest
from botocore.auth import SigV2Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import given, settings
from hypothesis import strategies as st

from ebsemu import errors
from tests.test_auth_sigv4 import (
    ENDPOINT,
    EUCA_FORM,
    FORM,
    KEY_ID,
    OTHER_KEY_ID,
    SECRET,
    Received,
    error_of,
    received_from,
)

ACTION = {"Action": "DescribeVolumes", "Version": "2014-06-15", "VolumeId.1": "vol-0123abcd"}
EUCA_HOST = "cloud.example.com:8773"
EUCA_PATH = "/services/compute/"


def botocore_v2(
    *, method: str = "POST", params: dict[str, str] | None = None, secret: str = SECRET
) -> Received:
    """SigV2 exactly as botocore signs it: HmacSHA256, Timestamp, body for POST, query for GET."""
    fields = dict(ACTION if params is None else params)
    if method == "POST":
        request = AWSRequest(method="POST", url=ENDPOINT + "/", data=fields, headers={})
        request.headers["Content-Type"] = FORM
    else:
        request = AWSRequest(method="GET", url=ENDPOINT + "/", params=fields)
    SigV2Auth(Credentials(KEY_ID, secret)).add_auth(request)
    return received_from(request.prepare())


def euca_v2(
    *,
    digest: str = "sha1",
    moment: datetime = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC),
    expires: datetime | None = None,
    key: str = KEY_ID,
    secret: str = SECRET,
    extra: dict[str, str] | None = None,
) -> Received:
    """The euca2ools/requestbuilder algorithm, written out: form body without charset."""
    params = {**ACTION, **(extra or {})}
    params.update(
        AWSAccessKeyId=key,
        SignatureVersion="2",
        SignatureMethod={"sha1": "HmacSHA1", "sha256": "HmacSHA256"}[digest],
    )
    if expires is None:
        params["Timestamp"] = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    else:
        params["Expires"] = expires.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    encoded = "&".join(
        f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
        for k, v in sorted(params.items())
    )
    to_sign = f"POST\n{EUCA_HOST.lower()}\n{EUCA_PATH}\n{encoded}"
    mac = hmac.new(secret.encode(), to_sign.encode(), getattr(hashlib, digest))
    params["Signature"] = base64.b64encode(mac.digest()).decode()
    body = urllib.parse.urlencode(params).encode()
    headers = {"Content-Type": EUCA_FORM, "Host": EUCA_HOST}
    return Received("POST", EUCA_PATH, "", headers, body, EUCA_HOST)


def params_of(received: Received) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(received.query or received.body.decode()))


def signed_at(received: Received) -> datetime:
    params = params_of(received)
    stamp = params.get("Timestamp") or params["Expires"]
    return datetime.fromisoformat(stamp).astimezone(UTC)


def with_params(received: Received, **changes: str | None) -> Received:
    """Parameters replaced (or removed with None) wherever the request carries them."""
    in_query = bool(received.query)
    pairs = urllib.parse.parse_qsl(
        received.query if in_query else received.body.decode(), keep_blank_values=True
    )
    pairs = [(k, v) for k, v in pairs if k not in changes]
    pairs += [(k, v) for k, v in changes.items() if v is not None]
    encoded = urllib.parse.urlencode(pairs)
    if in_query:
        return dataclasses.replace(received, query=encoded)
    return dataclasses.replace(received, body=encoded.encode())


# --- what verifies ------------------------------------------------------------------------


def test_botocore_sigv2_form_post_verifies_with_hmacsha256() -> None:
    request = botocore_v2()
    assert params_of(request)["SignatureMethod"] == "HmacSHA256"
    verified = request.verify(now=signed_at(request))
    assert (verified.access_key_id, verified.region, verified.service, verified.version) == (
        KEY_ID,
        None,
        None,
        2,
    )


def test_botocore_sigv2_get_with_parameters_in_the_query_verifies() -> None:
    request = botocore_v2(method="GET")
    assert request.body == b"" and "Signature=" in request.query
    assert request.verify(now=signed_at(request)).version == 2


@pytest.mark.parametrize("digest", ["sha1", "sha256"])
def test_euca2ools_signature_on_a_service_path_and_port_verifies(digest: str) -> None:
    request = euca_v2(digest=digest)
    assert request.verify(now=signed_at(request)).access_key_id == KEY_ID


def test_expires_instead_of_timestamp_verifies_until_it_passes() -> None:
    deadline = datetime(2024, 5, 6, 8, 0, 0, tzinfo=UTC)
    request = euca_v2(expires=deadline)
    assert request.verify(now=deadline - timedelta(hours=2)).version == 2
    assert request.verify(now=deadline).version == 2
    expired = error_of(request, deadline + timedelta(seconds=1))
    assert (expired.code, expired.http_status) == ("RequestExpired", 400)


def test_space_sent_as_plus_or_as_percent20_verifies_either_way() -> None:
    request = botocore_v2(params={**ACTION, "Filter.1.Value.1": "a b/é~*"})
    assert b"a+b" in request.body
    as_percent = dataclasses.replace(request, body=request.body.replace(b"a+b", b"a%20b"))
    for candidate in (request, as_percent):
        assert candidate.verify(now=signed_at(request)).version == 2


def test_timestamp_fourteen_minutes_old_still_verifies() -> None:
    request = euca_v2()
    assert request.verify(now=signed_at(request) + timedelta(minutes=14)).version == 2


# --- each wrong part ----------------------------------------------------------------------


@pytest.mark.parametrize("digest", ["sha1", "sha256"])
def test_wrong_secret_is_403_signature_does_not_match(digest: str) -> None:
    request = euca_v2(digest=digest, secret="not-the-secret")
    failure = error_of(request, signed_at(request))
    assert (type(failure), failure.code, failure.http_status) == (
        errors.SignatureDoesNotMatch,
        "SignatureDoesNotMatch",
        403,
    )


def test_botocore_wrong_secret_is_signature_does_not_match() -> None:
    request = botocore_v2(secret="not-the-secret")
    assert isinstance(error_of(request, signed_at(request)), errors.SignatureDoesNotMatch)


def test_unknown_key_id_is_401_auth_failure() -> None:
    request = euca_v2(key="AKIDNOBODYHASTHIS000")
    failure = error_of(request, signed_at(request))
    assert (type(failure), failure.http_status) == (errors.AuthFailure, 401)


def test_key_id_swapped_for_another_real_one_is_signature_does_not_match() -> None:
    request = with_params(euca_v2(), AWSAccessKeyId=OTHER_KEY_ID)
    assert isinstance(
        error_of(request, datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)), errors.SignatureDoesNotMatch
    )


@pytest.mark.parametrize(
    "change",
    [
        {"VolumeId.1": "vol-99999999"},
        {"VolumeId.2": "vol-99999999"},
        {"VolumeId.1": None},
        {"Action": "DeleteVolume"},
        {"SignatureMethod": "HmacSHA256"},
    ],
    ids=["value-changed", "parameter-added", "parameter-removed", "action", "method-claimed"],
)
def test_parameter_tampered_is_signature_does_not_match(change: dict[str, str | None]) -> None:
    request = euca_v2()
    tampered = with_params(request, **change)
    assert isinstance(error_of(tampered, signed_at(request)), errors.SignatureDoesNotMatch)


def test_query_parameter_added_to_a_signed_form_post_is_signature_does_not_match() -> None:
    request = euca_v2()
    tampered = dataclasses.replace(request, query="DryRun=true")
    assert isinstance(error_of(tampered, signed_at(request)), errors.SignatureDoesNotMatch)


@pytest.mark.parametrize(
    "change",
    [{"host": "other.example.com:8773"}, {"path": "/services/Compute/"}],
)
def test_host_or_path_changed_is_signature_does_not_match(change: dict[str, str]) -> None:
    request = euca_v2()
    tampered = dataclasses.replace(request, **change)
    assert isinstance(error_of(tampered, signed_at(request)), errors.SignatureDoesNotMatch)


def test_method_changed_is_signature_does_not_match() -> None:
    request = botocore_v2(method="GET")
    tampered = dataclasses.replace(request, method="POST")
    assert isinstance(error_of(tampered, signed_at(request)), errors.SignatureDoesNotMatch)


def test_form_body_is_not_read_for_other_methods_so_carries_no_credentials() -> None:
    request = dataclasses.replace(euca_v2(), method="PUT")
    failure = error_of(request, signed_at(euca_v2()))
    assert (failure.code, failure.message) == (
        "MissingParameter",
        "The request must contain the parameter AWSAccessKeyId",
    )


def test_host_differing_only_in_case_still_verifies() -> None:
    request = euca_v2()
    assert dataclasses.replace(request, host=EUCA_HOST.upper()).verify(now=signed_at(request))


@pytest.mark.parametrize("minutes", [16, -16, 60 * 24 * 365])
def test_timestamp_more_than_15_minutes_away_is_400_request_expired(minutes: int) -> None:
    request = euca_v2()
    failure = error_of(request, signed_at(request) + timedelta(minutes=minutes))
    assert (type(failure), failure.http_status) == (errors.RequestExpired, 400)
    assert failure.message == "Request has expired. Timestamp date is 2024-05-06T07:08:09Z"


@pytest.mark.parametrize(
    "change, error, text",
    [
        ({"Signature": None}, errors.MissingParameter, "parameter Signature"),
        ({"AWSAccessKeyId": None}, errors.MissingParameter, "parameter AWSAccessKeyId"),
        ({"SignatureMethod": None}, errors.MissingParameter, "parameter SignatureMethod"),
        ({"Timestamp": None}, errors.MissingParameter, "parameter Timestamp"),
        ({"SignatureVersion": "1"}, errors.InvalidParameterValue, "SignatureVersion"),
        ({"SignatureMethod": "HmacMD5"}, errors.InvalidParameterValue, "SignatureMethod"),
        ({"Timestamp": "yesterday"}, errors.InvalidParameterValue, "Timestamp"),
        ({"Expires": "2030-01-01T00:00:00Z"}, errors.InvalidParameterCombination, "Expires"),
    ],
)
def test_missing_or_invalid_signature_parameters_are_ec2_parameter_errors(
    change: dict[str, str | None], error: type[errors.ApiError], text: str
) -> None:
    request = euca_v2()
    failure = error_of(with_params(request, **change), signed_at(request))
    assert type(failure) is error and failure.http_status == 400
    assert text in failure.message


def test_repeated_signature_parameter_is_incomplete_signature() -> None:
    request = euca_v2()
    doubled = dataclasses.replace(request, query=f"AWSAccessKeyId={OTHER_KEY_ID}")
    assert isinstance(error_of(doubled, signed_at(request)), errors.IncompleteSignature)


# --- random mutations ---------------------------------------------------------------------

_VISIBLE = st.characters(min_codepoint=0x21, max_codepoint=0x7E)


@st.composite
def mutated(draw: st.DrawFn, base: Received) -> Received:
    """One change to a signed parameter, the method, the path or the host."""
    pairs = urllib.parse.parse_qsl(base.body.decode(), keep_blank_values=True)
    kind = draw(st.sampled_from(["value", "add", "drop", "method", "path", "host"]))
    if kind in ("value", "drop"):
        at = draw(st.integers(0, len(pairs) - 1))
        name, value = pairs[at]
        if kind == "drop":
            del pairs[at]
        else:
            chars = list(value)
            spot = draw(st.integers(0, len(chars) - 1))
            chars[spot] = draw(_VISIBLE.filter(lambda c: c != chars[spot]))
            pairs[at] = (name, "".join(chars))
        return dataclasses.replace(base, body=urllib.parse.urlencode(pairs).encode())
    if kind == "add":
        extra = (draw(st.text(max_size=8)), draw(st.text(max_size=8)))
        body = urllib.parse.urlencode([*pairs, extra]).encode()
        return dataclasses.replace(base, body=body)
    if kind == "method":
        return dataclasses.replace(base, method=draw(st.sampled_from(["GET", "PUT", "DELETE"])))
    if kind == "path":
        segment = draw(st.text(min_size=1).filter(lambda s: "/" not in s))
        return dataclasses.replace(base, path=EUCA_PATH + urllib.parse.quote(segment))
    host = draw(st.from_regex(r"[a-z0-9.-]{1,20}(:[0-9]{1,5})?", fullmatch=True))
    return dataclasses.replace(base, host=host if host != EUCA_HOST else "elsewhere")


@settings(max_examples=400)
@given(data=st.data(), digest=st.sampled_from(["sha1", "sha256"]))
def test_random_mutations_of_sigv2_requests_never_verify_and_raise_only_aws_errors(
    data: st.DataObject, digest: str
) -> None:
    base = euca_v2(digest=digest)
    now = signed_at(base)
    assert base.verify(now=now).version == 2
    changed = data.draw(mutated(base))
    with pytest.raises(errors.ApiError) as caught:
        changed.verify(now=now)
    assert caught.value.http_status < 500
    assert SECRET not in caught.value.message
