"""What EC2 answers when a request fails authentication, in one place.

EC2 does not use the generic AWS codes for most of these. What it really answers:

- No credentials at all: 400 ``MissingParameter`` "The request must contain the parameter
  AWSAccessKeyId" (seen from EC2 by unsigned SDK calls), not MissingAuthenticationToken.
- SigV4 with an unknown key id, a wrong secret, or a signature that does not match for any
  other reason (scope, date, a header or the body changed): 401 ``AuthFailure`` "AWS was not
  able to validate the provided access credentials"; the same answer whether or not the key
  exists, so a caller cannot probe for key ids.
- SigV2 with a wrong signature: 403 ``SignatureDoesNotMatch``; with an unknown key id:
  401 ``AuthFailure``.
- Timestamp more than 15 minutes away from the server's clock, or a presigned URL past its
  expiry: 400 ``RequestExpired`` "Request has expired."
- An Authorization header or presigned query that does not parse: 400 ``IncompleteSignature``.
- SigV2 parameters missing or with values out of range: ``MissingParameter`` /
  ``InvalidParameterValue`` like any other EC2 Query parameter.

Messages never carry a secret, a computed signature or a string to sign, and echo no
client-supplied text (they end up in log lines).
"""

from __future__ import annotations

from datetime import datetime

from ebsemu import errors


def missing_credentials() -> errors.ApiError:
    return errors.MissingParameter("The request must contain the parameter AWSAccessKeyId")


def missing_parameter(name: str) -> errors.ApiError:
    return errors.MissingParameter(f"The request must contain the parameter {name}")


def invalid_parameter(name: str, detail: str) -> errors.ApiError:
    return errors.InvalidParameterValue(f"Invalid value for parameter {name}: {detail}")


def conflicting_parameters(first: str, second: str) -> errors.ApiError:
    return errors.InvalidParameterCombination(
        f"The parameter {first} cannot be used with the parameter {second}"
    )


def malformed(detail: str) -> errors.ApiError:
    return errors.IncompleteSignature(detail)


def not_validated(detail: str | None = None) -> errors.ApiError:
    """SigV4 failures and unknown key ids of either version."""
    return errors.AuthFailure(detail)


def v2_mismatch() -> errors.ApiError:
    return errors.SignatureDoesNotMatch()


def expired(signed_at: datetime | None = None) -> errors.ApiError:
    if signed_at is None:
        return errors.RequestExpired()
    stamp = signed_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    return errors.RequestExpired(f"Request has expired. Timestamp date is {stamp}")
