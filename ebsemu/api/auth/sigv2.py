"""AWS Signature Version 2, as euca2ools 3.1/3.2 and other older EC2 tools send it.

The signature travels with the other parameters (form body or query): AWSAccessKeyId,
SignatureVersion=2, SignatureMethod (HmacSHA256 or HmacSHA1), Timestamp or Expires, and
Signature, the base64 HMAC of

    METHOD \\n lowercase Host \\n raw path \\n every other parameter, sorted by name, encoded

Every parameter the handler will read (query and form body) is covered.
"""

from __future__ import annotations

import base64
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from ebsemu.api.auth import failures, timestamps
from ebsemu.api.auth.canonical import Pair, sorted_params, to_bytes
from ebsemu.api.auth.verified import VerifiedRequest

SIGNATURE_PARAMS = ("AWSAccessKeyId", "Signature", "SignatureVersion", "SignatureMethod")
_SINGLE_PARAMS = (*SIGNATURE_PARAMS, "Timestamp", "Expires")
DIGESTS = {"HmacSHA256": "sha256", "HmacSHA1": "sha1"}
_STAND_IN_SECRET = secrets.token_urlsafe(30)


def is_sigv2(params: Sequence[Pair]) -> bool:
    names = {name.decode("utf-8", "replace") for name, _ in params}
    return any(name in names for name in SIGNATURE_PARAMS)


@dataclass(frozen=True)
class SigV2Request:
    access_key_id: str
    signature_method: str
    string_to_sign: bytes
    signature: str

    def verify(self, secret: str | None) -> VerifiedRequest:
        key = to_bytes(_STAND_IN_SECRET if secret is None else secret)
        digest = hmac.new(key, self.string_to_sign, DIGESTS[self.signature_method]).digest()
        matches = hmac.compare_digest(base64.b64encode(digest), to_bytes(self.signature))
        if secret is None:
            raise failures.not_validated()
        if not matches:
            raise failures.v2_mismatch()
        return VerifiedRequest(self.access_key_id, None, None, 2)


def _singles(params: Sequence[Pair]) -> dict[str, str]:
    found: dict[str, str] = {}
    for raw_name, raw_value in params:
        name = raw_name.decode("utf-8", "replace")
        if name in _SINGLE_PARAMS:
            if name in found:
                raise failures.malformed(f"The parameter {name} must appear only once.")
            found[name] = raw_value.decode("utf-8", "replace")
    return found


def _check_time(found: dict[str, str], now: datetime) -> None:
    stamp, expires = found.get("Timestamp"), found.get("Expires")
    if stamp is not None and expires is not None:
        raise failures.conflicting_parameters("Timestamp", "Expires")
    if stamp is None and expires is None:
        raise failures.missing_parameter("Timestamp")
    name, text = ("Timestamp", stamp) if stamp is not None else ("Expires", expires)
    moment = timestamps.parse_iso8601(text or "")
    if moment is None:
        raise failures.invalid_parameter(name, "expected an ISO 8601 date and time.")
    if name == "Timestamp":
        timestamps.check_fresh(now, moment)
    else:
        timestamps.check_not_after(now, moment)


def from_params(
    method: str, path: str, params: Sequence[Pair], host: str, *, now: datetime
) -> SigV2Request:
    found = _singles(params)
    if "AWSAccessKeyId" not in found:
        raise failures.missing_credentials()
    for name in SIGNATURE_PARAMS:
        if name not in found:
            raise failures.missing_parameter(name)
    if found["SignatureVersion"] != "2":
        raise failures.invalid_parameter("SignatureVersion", "only version 2 is supported.")
    if found["SignatureMethod"] not in DIGESTS:
        raise failures.invalid_parameter("SignatureMethod", "expected HmacSHA256 or HmacSHA1.")
    _check_time(found, now)
    signed = [pair for pair in params if pair[0] != b"Signature"]
    string_to_sign = b"\n".join(
        (
            to_bytes(method.upper()),
            to_bytes(host.lower()),
            to_bytes(path or "/"),
            sorted_params(signed).encode("ascii"),
        )
    )
    return SigV2Request(
        found["AWSAccessKeyId"], found["SignatureMethod"], string_to_sign, found["Signature"]
    )
