"""What a SigV4 request claims about itself, read from the Authorization header or the query.

Parsing only: nothing here needs the secret. Structural problems are IncompleteSignature;
a scope EC2 would not accept (terminator, service) is AuthFailure, as EC2 answers it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from ebsemu.api.auth import failures
from ebsemu.api.auth.canonical import Pair

ALGORITHM = "AWS4-HMAC-SHA256"
TERMINATOR = "aws4_request"
MAX_PRESIGN_EXPIRES = 7 * 24 * 3600

AUTH_FIELDS = ("Credential", "SignedHeaders", "Signature")
PRESIGN_REQUIRED = (
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
)
PRESIGN_PARAMS = (*PRESIGN_REQUIRED, "X-Amz-Expires")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")
_EXPIRES = re.compile(r"[0-9]{1,7}")


@dataclass(frozen=True)
class Scope:
    access_key_id: str
    date: str
    region: str
    service: str

    @property
    def text(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/{TERMINATOR}"


@dataclass(frozen=True)
class Claim:
    scope: Scope
    signed_headers: str
    signature: str


def parse_scope(credential: str, services: Collection[str]) -> Scope:
    parts = credential.split("/")
    if len(parts) != 5 or not all(parts[:4]):
        raise failures.malformed(
            "Credential must have exactly 5 slash-delimited elements, "
            "e.g. keyid/date/region/service/term."
        )
    key, date, region, service, terminator = parts
    if terminator != TERMINATOR:
        raise failures.not_validated(
            f"Credential should be scoped with a valid terminator: '{TERMINATOR}'."
        )
    if service not in services:
        wanted = " or ".join(f"'{name}'" for name in sorted(services))
        raise failures.not_validated(f"Credential should be scoped to correct service: {wanted}.")
    return Scope(key, date, region, service)


def signed_header_names(text: str) -> list[str]:
    return list(_signed_header_names(text))


@functools.lru_cache(maxsize=256)  # a client sends the same list every time
def _signed_header_names(text: str) -> tuple[str, ...]:
    names = tuple(text.split(";"))
    if any(not _HEADER_NAME.fullmatch(name) for name in names) or len(set(names)) != len(names):
        raise failures.malformed(
            "SignedHeaders must be distinct lowercase header names separated by ';'."
        )
    if "host" not in names:
        raise failures.malformed("'Host' must be a 'SignedHeader' in the AWS Authorization.")
    return names


def from_authorization(value: str, services: Collection[str]) -> Claim:
    """`AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`."""
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise failures.malformed(f"Unsupported Authorization type; only {ALGORITHM} is accepted.")
    fields: dict[str, str] = {}
    for component in rest.split(","):
        name, equals, field = component.strip().partition("=")
        if not equals:
            raise failures.malformed(
                "Authorization header components must be key=value pairs separated by commas."
            )
        if name not in AUTH_FIELDS or name in fields:
            raise failures.malformed(
                "Authorization header must hold Credential, SignedHeaders and Signature once each."
            )
        fields[name] = field
    absent = [name for name in AUTH_FIELDS if name not in fields]
    if absent:
        raise failures.malformed(
            " ".join(f"Authorization header requires '{name}' parameter." for name in absent)
        )
    return Claim(
        parse_scope(fields["Credential"], services),
        fields["SignedHeaders"],
        fields["Signature"],
    )


def presign_params(query: Sequence[Pair]) -> dict[str, str]:
    """The X-Amz-* parameters of a presigned query, each present at most once."""
    found: dict[str, str] = {}
    for raw_name, raw_value in query:
        name = raw_name.decode("utf-8", "replace")
        if name in PRESIGN_PARAMS:
            if name in found:
                raise failures.malformed(f"The query parameter {name} must appear only once.")
            found[name] = raw_value.decode("utf-8", "replace")
    absent = [name for name in PRESIGN_REQUIRED if name not in found]
    if absent:
        raise failures.malformed(
            "AWS query-string parameters must include " + ", ".join(PRESIGN_REQUIRED) + "."
        )
    if found["X-Amz-Algorithm"] != ALGORITHM:
        raise failures.malformed(f"X-Amz-Algorithm only supports '{ALGORITHM}'.")
    return found


def presign_expiry(params: dict[str, str]) -> int | None:
    text = params.get("X-Amz-Expires")
    if text is None:
        return None
    if not _EXPIRES.fullmatch(text) or int(text) > MAX_PRESIGN_EXPIRES:
        raise failures.malformed(
            f"X-Amz-Expires must be a whole number of seconds from 0 to {MAX_PRESIGN_EXPIRES}."
        )
    return int(text)


def from_query(params: dict[str, str], services: Collection[str]) -> Claim:
    return Claim(
        parse_scope(params["X-Amz-Credential"], services),
        params["X-Amz-SignedHeaders"],
        params["X-Amz-Signature"],
    )
