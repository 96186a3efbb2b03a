"""Who is asking, and where: passed from the API layer into every service call."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RequestContext:
    account_id: str
    region: str
    request_id: str

    def scoped_token(self, client_token: str | None) -> str | None:
        """A ClientToken as it is kept: EC2 scopes it to the account (the store's key) and
        the region."""
        return None if client_token is None else f"{self.region}/{client_token}"
