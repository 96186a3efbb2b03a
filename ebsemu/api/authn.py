"""Who sent a request: its signature (SigV4 or SigV2) checked against the stored keys.

Every check that needs no secret runs first (form, credential scope, clock); then the key's
secret is looked up and the signature compared in constant time. Failures are the AWS errors
EC2 answers (see ebsemu.api.auth.failures); an unknown key and a wrong secret cost the same.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime

from aiohttp import web

from ebsemu import errors
from ebsemu.api.auth import prepare_request
from ebsemu.api.signing import signing_region
from ebsemu.service.accounts import ACCESS_KEY_ID

# (account id, secret) of an access key id, or None when no account holds it.
KeyLookup = Callable[[str], Awaitable[tuple[str, str] | None]]


@dataclass(frozen=True)
class Caller:
    account_id: str
    access_key_id: str | None  # None when authentication is off
    region: str | None  # the SigV4 signing region; None for SigV2


def check_target(raw_target: str) -> None:
    """InvalidRequest for a request target holding a literal `#`.

    The signature covers the whole target as received, but aiohttp takes a `#` for the start
    of a fragment and leaves what follows out of the parameters the handler reads: a
    parameter moved behind one (DryRun=true) would be verified and never acted on. Clients
    send `#` percent-encoded."""
    if "#" in raw_target:
        raise errors.InvalidRequest(
            "The request target must not contain a literal '#': encode it as %23."
        )


class Authenticator:
    def __init__(
        self,
        lookup: KeyLookup,
        *,
        default_account: str,
        enabled: bool = True,
        services: Collection[str] = ("ec2",),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """``services``: the SigV4 signing names this endpoint answers to."""
        self._lookup = lookup
        self._default_account = default_account
        self.enabled = enabled
        self._services = tuple(services)
        self._clock = clock

    async def caller(
        self, request: web.BaseRequest, body: bytes, *, body_bound_by: Collection[str] = ()
    ) -> Caller:
        """The verified caller of ``request`` (whose body is ``body``), or the AWS error.

        ``body_bound_by``: signed headers that bind an UNSIGNED-PAYLOAD body on their own
        (the body's checksum, which the caller then checks against the body)."""
        check_target(request.raw_path)
        if not self.enabled:
            region = signing_region(request.headers, dict(request.query))
            return Caller(self._default_account, None, region)
        path, _, query = request.raw_path.partition("?")
        signed = prepare_request(
            request.method,
            path,
            query,
            request.headers,
            body,
            now=self._clock(),
            host_header=request.host,
            services=self._services,
        )
        key_id = signed.access_key_id
        # One no account can hold (undecodable bytes, a NUL: stores cannot even take it as a
        # query parameter) is unknown without a look-up.
        found = await self._lookup(key_id) if ACCESS_KEY_ID.fullmatch(key_id) else None
        verified = signed.verify(found[1] if found is not None else None)
        assert found is not None  # verify() refuses an unknown key
        bound = bool(body_bound_by) and verified.signed_headers.issuperset(body_bound_by)
        if not verified.payload_signed and body and not request.secure and not bound:
            # The parameters are in the body: unsigned, anyone on the path could change them.
            raise errors.AuthFailure(
                "The request body must be signed; UNSIGNED-PAYLOAD is accepted over HTTPS only."
            )
        return Caller(found[0], verified.access_key_id, verified.region)
