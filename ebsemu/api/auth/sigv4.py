"""AWS Signature Version 4 for requests signed in the Authorization header or presigned.

`from_header` and `from_query` check everything that needs no secret (form, scope, clock)
and build the canonical request; `SigV4Request.verify` then signs it with the secret and
compares. Any region is accepted: it is part of the key derivation, so it must match what
was signed but need not be one the server knows.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from ebsemu.api.auth import failures, timestamps
from ebsemu.api.auth.canonical import (
    Pair,
    canonical_query,
    canonical_uri,
    header_values,
    to_bytes,
    trim_all,
)
from ebsemu.api.auth.sigv4_claims import (
    ALGORITHM,
    TERMINATOR,
    Claim,
    Scope,
    from_authorization,
    from_query,
    presign_expiry,
    presign_params,
    signed_header_names,
)
from ebsemu.api.auth.verified import VerifiedRequest

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
# Signs for unknown key ids, so that they cost as much as a wrong secret.
_STAND_IN_SECRET = secrets.token_urlsafe(30)


@dataclass(frozen=True)
class HttpParts:
    """The request as received: raw path, decoded query pairs, headers, body, client's Host."""

    method: str
    path: str
    query: Sequence[Pair]
    headers: Mapping[str, str]
    body: bytes
    host: str


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, to_bytes(message), hashlib.sha256).digest()


def signature(secret: str, scope: Scope, string_to_sign: str) -> str:
    key = signing_key(secret, scope.date, scope.region, scope.service)
    return hmac.new(key, to_bytes(string_to_sign), hashlib.sha256).hexdigest()


@functools.lru_cache(maxsize=256)  # one key per secret, day, region and service
def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = _hmac(to_bytes("AWS4" + secret), date)
    for part in (region, service, TERMINATOR):
        key = _hmac(key, part)
    return key


@dataclass(frozen=True)
class SigV4Request:
    scope: Scope
    amz_date: str
    canonical_request: str
    signature: str
    payload_signed: bool
    signed_headers: frozenset[str] = frozenset()

    @property
    def access_key_id(self) -> str:
        return self.scope.access_key_id

    @property
    def string_to_sign(self) -> str:
        digest = hashlib.sha256(to_bytes(self.canonical_request)).hexdigest()
        return "\n".join((ALGORITHM, self.amz_date, self.scope.text, digest))

    def verify(self, secret: str | None) -> VerifiedRequest:
        expected = signature(
            _STAND_IN_SECRET if secret is None else secret, self.scope, self.string_to_sign
        )
        matches = hmac.compare_digest(expected.encode("ascii"), to_bytes(self.signature))
        if secret is None or not matches:
            raise failures.not_validated()
        return VerifiedRequest(
            self.access_key_id,
            self.scope.region,
            self.scope.service,
            4,
            self.payload_signed,
            self.signed_headers,
        )


def _payload_hash(parts: HttpParts) -> tuple[str, bool]:
    actual = hashlib.sha256(parts.body).hexdigest()
    declared = header_values(parts.headers, "X-Amz-Content-SHA256")
    if not declared:
        return actual, True
    value = declared[0].strip()
    if len(declared) > 1 or not (value == UNSIGNED_PAYLOAD or _SHA256_HEX.fullmatch(value)):
        raise failures.malformed(
            "x-amz-content-sha256 must be given once, as UNSIGNED-PAYLOAD or a SHA-256 hex digest."
        )
    if value == UNSIGNED_PAYLOAD:
        return value, False
    if not hmac.compare_digest(value.lower().encode("ascii"), actual.encode("ascii")):
        raise failures.not_validated("The x-amz-content-sha256 header does not match the body.")
    return value, True


def _canonical_headers(names: list[str], parts: HttpParts) -> str:
    lines = []
    for name in names:
        values = [parts.host] if name == "host" else header_values(parts.headers, name)
        if not values:
            raise failures.not_validated(f"The signed header '{name}' is not in the request.")
        lines.append(f"{name}:{','.join(trim_all(value) for value in values)}\n")
    return "".join(lines)


def _check_scope_date(claim: Claim, amz_date: str) -> None:
    if claim.scope.date != amz_date[:8]:
        raise failures.not_validated(
            "Date in Credential scope does not match YYYYMMDD from the request's date."
        )


def _build(parts: HttpParts, query: Sequence[Pair], claim: Claim, amz_date: str) -> SigV4Request:
    names = signed_header_names(claim.signed_headers)
    payload_hash, payload_signed = _payload_hash(parts)
    canonical = "\n".join(
        (
            parts.method.upper(),
            canonical_uri(parts.path),
            canonical_query(query),
            _canonical_headers(names, parts),
            claim.signed_headers,
            payload_hash,
        )
    )
    return SigV4Request(
        claim.scope, amz_date, canonical, claim.signature, payload_signed, frozenset(names)
    )


def _header_date(headers: Mapping[str, str]) -> tuple[str, datetime]:
    amz_dates = header_values(headers, "X-Amz-Date")
    if amz_dates:
        moment = timestamps.parse_amz_date(amz_dates[0].strip())
        if len(amz_dates) > 1 or moment is None:
            raise failures.malformed("X-Amz-Date must be given once, like 20240102T030405Z.")
        return amz_dates[0].strip(), moment
    dates = header_values(headers, "Date")
    moment = timestamps.parse_http_date(dates[0]) if len(dates) == 1 else None
    if moment is None:
        raise failures.malformed(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
        )
    return moment.strftime(timestamps.AMZ_DATE), moment


def from_header(
    authorization: str, parts: HttpParts, *, now: datetime, services: Collection[str]
) -> SigV4Request:
    claim = from_authorization(authorization, services)
    amz_date, signed_at = _header_date(parts.headers)
    _check_scope_date(claim, amz_date)
    timestamps.check_fresh(now, signed_at)
    return _build(parts, parts.query, claim, amz_date)


def from_presigned_query(
    parts: HttpParts, *, now: datetime, services: Collection[str]
) -> SigV4Request:
    params = presign_params(parts.query)
    claim = from_query(params, services)
    signed_at = timestamps.parse_amz_date(params["X-Amz-Date"])
    if signed_at is None:
        raise failures.malformed("X-Amz-Date must be like 20240102T030405Z.")
    _check_scope_date(claim, params["X-Amz-Date"])
    expires = presign_expiry(params)
    if expires is None:
        timestamps.check_fresh(now, signed_at)
    else:
        if signed_at - now > timestamps.MAX_SKEW:
            raise failures.expired(signed_at)
        timestamps.check_not_after(now, signed_at + timedelta(seconds=expires))
    unsigned = [pair for pair in parts.query if pair[0] != b"X-Amz-Signature"]
    return _build(parts, unsigned, claim, params["X-Amz-Date"])
