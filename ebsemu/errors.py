"""AWS error codes as exception classes.

One class per AWS error code. ``code`` is always the AWS code string, ``http_status`` the
status EC2 answers with, and ``message`` the text sent to the client. Anything that is not an
``ApiError`` reaching the HTTP layer is a bug and becomes a 500 InternalError.
"""

from __future__ import annotations

from typing import ClassVar


class ApiError(Exception):
    code: ClassVar[str] = "InternalError"
    http_status: ClassVar[int] = 500
    default_message: ClassVar[str] = "An internal error has occurred."

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)


class ClientError(ApiError):
    http_status = 400


def _client_error(code: str, default: str = "", status: int = 400) -> type[ClientError]:
    name = "".join(part[:1].upper() + part[1:] for part in code.replace(".", " ").split())
    attrs = {"code": code, "http_status": status, "default_message": default or code}
    return type(name, (ClientError,), attrs)


class InternalError(ApiError):
    pass


InvalidAction = _client_error("InvalidAction", "The action is not valid for this web service.")
MissingParameter = _client_error("MissingParameter")
MissingAction = _client_error("MissingAction", "The request must contain the parameter Action.")
InvalidParameterValue = _client_error("InvalidParameterValue")
InvalidParameterCombination = _client_error("InvalidParameterCombination")
InvalidParameterDependency = _client_error("InvalidParameterDependency")
UnknownParameter = _client_error("UnknownParameter")
InvalidParameter = _client_error("InvalidParameter")
IdempotentParameterMismatch = _client_error("IdempotentParameterMismatch")
InvalidPaginationToken = _client_error("InvalidPaginationToken", "The token is not valid.")
InvalidNextToken = InvalidPaginationToken
InvalidVolumeIDMalformed = _client_error("InvalidVolumeID.Malformed")
InvalidVolumeNotFound = _client_error("InvalidVolume.NotFound")
InvalidVolumeZoneMismatch = _client_error("InvalidVolume.ZoneMismatch")
VolumeInUse = _client_error("VolumeInUse")
IncorrectState = _client_error("IncorrectState")
InvalidSnapshotIDMalformed = _client_error("InvalidSnapshotID.Malformed")
InvalidSnapshotNotFound = _client_error("InvalidSnapshot.NotFound")
InvalidSnapshotInUse = _client_error("InvalidSnapshot.InUse")
InvalidID = _client_error("InvalidID")
InvalidZoneNotFound = _client_error("InvalidZone.NotFound")
InvalidRegionNotFound = _client_error("InvalidRegion.NotFound")
InvalidFilter = _client_error("InvalidFilter")
TagLimitExceeded = _client_error("TagLimitExceeded")
VolumeLimitExceeded = _client_error("VolumeLimitExceeded")
SnapshotLimitExceeded = _client_error("SnapshotLimitExceeded")
InsufficientVolumeCapacity = _client_error(
    "InsufficientVolumeCapacity",
    "There is not enough capacity to fulfill your EBS volume provision request.",
)
UnsupportedOperation = _client_error("UnsupportedOperation")
InvalidRequest = _client_error("InvalidRequest", "The request received was invalid.")
InvalidQueryParameter = _client_error("InvalidQueryParameter")
DryRunOperation = _client_error(
    "DryRunOperation", "Request would have succeeded, but DryRun flag is set.", 412
)
AuthFailure = _client_error("AuthFailure", "AWS was not able to validate the provided access credentials", 401)
UnauthorizedOperation = _client_error(
    "UnauthorizedOperation", "You are not authorized to perform this operation.", 403
)
RequestLimitExceeded = _client_error("RequestLimitExceeded", "Request limit exceeded.", 503)
Unavailable = _client_error("Unavailable", "The server is overloaded and can't handle the request.", 503)
