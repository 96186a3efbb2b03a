"""What a request's signature says about it before any verification: the signing region.

SigV4 names its region in the credential scope (`Credential=AKID/date/REGION/service/...`), in
the Authorization header or, when presigned, in `X-Amz-Credential`. SigV2 names none.
"""

from __future__ import annotations

from collections.abc import Mapping


def signing_region(headers: Mapping[str, str], params: Mapping[str, str]) -> str | None:
    credential = params.get("X-Amz-Credential")
    authorization = headers.get("Authorization", "")
    if authorization.startswith("AWS4-"):
        for part in authorization.split(" ", 1)[-1].split(","):
            name, _, value = part.strip().partition("=")
            if name == "Credential":
                credential = value
    if not credential:
        return None
    scope = credential.split("/")
    return scope[2] if len(scope) >= 5 else None
