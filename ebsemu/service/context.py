"""Who is asking, and where: passed from the API layer into every service call."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RequestContext:
    account_id: str
    region: str
    request_id: str
