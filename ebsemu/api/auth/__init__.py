"""Request authentication as AWS does it: SigV4 (header and presigned) and SigV2."""

from ebsemu.api.auth.verified import VerifiedRequest
from ebsemu.api.auth.verify import SIGNING_SERVICES, SignedRequest, prepare_request, verify_request

__all__ = [
    "SIGNING_SERVICES",
    "SignedRequest",
    "VerifiedRequest",
    "prepare_request",
    "verify_request",
]
