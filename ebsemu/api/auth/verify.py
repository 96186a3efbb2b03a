"""The entry point: which signature a request carries, and whether it holds.

`verify_request` does it all with a synchronous secret lookup. With an asynchronous key
store, call `prepare_request` (every check that needs no secret: form, scope, clock),
look up `signed.access_key_id`, then `signed.verify(secret_or_None)`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime
from typing import Protocol

from ebsemu.api.auth import failures, sigv2, sigv4
from ebsemu.api.auth.canonical import header_values, parse_form, parse_query
from ebsemu.api.auth.verified import VerifiedRequest

SIGNING_SERVICES = ("ec2", "ebs")
_PRESIGN_MARKERS = {b"X-Amz-Algorithm", b"X-Amz-Credential", b"X-Amz-Signature"}


class SignedRequest(Protocol):
    @property
    def access_key_id(self) -> str: ...

    def verify(self, secret: str | None) -> VerifiedRequest:
        """The verified request, or the AWS error for a wrong or unknown (None) secret."""
        ...


def prepare_request(
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: datetime,
    host_header: str,
    services: Collection[str] = SIGNING_SERVICES,
) -> SignedRequest:
    """Read and check a request's signature as far as possible without the secret.

    `path` and `query` are raw, as received (still percent-encoded); `host_header` is the
    Host the client addressed; `services` the SigV4 signing names this endpoint answers to.
    Raises the AWS error classes of `ebsemu.errors` and nothing else for any input.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    now = now.astimezone(UTC)
    query_pairs = parse_query(query)
    parts = sigv4.HttpParts(method, path, query_pairs, headers, body, host_header)
    authorization = header_values(headers, "Authorization")
    presigned = any(name in _PRESIGN_MARKERS for name, _ in query_pairs)
    if authorization:
        if presigned or len(authorization) > 1:
            raise failures.malformed(
                "Only one auth mechanism allowed: the Authorization header, once, "
                "or the X-Amz-* query parameters."
            )
        return sigv4.from_header(authorization[0], parts, now=now, services=services)
    if presigned:
        return sigv4.from_presigned_query(parts, now=now, services=services)
    params = query_pairs + (parse_form(body) if method.upper() == "POST" else [])
    if sigv2.is_sigv2(params):
        return sigv2.from_params(method, path, params, host_header, now=now)
    raise failures.missing_credentials()


def verify_request(
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    body: bytes,
    lookup_secret: Callable[[str], str | None],
    *,
    now: datetime,
    host_header: str,
    services: Collection[str] = SIGNING_SERVICES,
) -> VerifiedRequest:
    """Who signed this request, or the AWS error EC2 would answer. See `prepare_request`."""
    signed = prepare_request(
        method, path, query, headers, body, now=now, host_header=host_header, services=services
    )
    return signed.verify(lookup_secret(signed.access_key_id))
