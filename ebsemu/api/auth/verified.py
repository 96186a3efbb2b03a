"""What a successful verification establishes about a request."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class VerifiedRequest:
    """The key that signed the request and, for SigV4, the scope it was signed for.

    ``payload_signed`` is False only for SigV4 with ``x-amz-content-sha256: UNSIGNED-PAYLOAD``:
    then the body is not covered by the signature and the caller decides whether to accept
    that (for EC2 Query, whose parameters live in the body, it should not over plain HTTP).
    """

    access_key_id: str
    region: str | None
    service: str | None
    version: Literal[2, 4]
    payload_signed: bool = True
    # SigV4's SignedHeaders (lowercase); detail of how it was signed, left out of equality
    signed_headers: frozenset[str] = field(default=frozenset(), compare=False)
