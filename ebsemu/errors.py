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
    default_message: ClassVar[str] = ""

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.default_message or self.code
        super().__init__(self.message)


class ClientError(ApiError):
    http_status = 400


class InternalError(ApiError):
    default_message = "An internal error has occurred."


class InvalidAction(ClientError):
    code = "InvalidAction"
    default_message = "The action is not valid for this web service."


class MissingParameter(ClientError):
    code = "MissingParameter"


class MissingAction(ClientError):
    code = "MissingAction"
    default_message = "The request must contain the parameter Action."


class InvalidParameterValue(ClientError):
    code = "InvalidParameterValue"


class InvalidParameterCombination(ClientError):
    code = "InvalidParameterCombination"


class InvalidParameterDependency(ClientError):
    code = "InvalidParameterDependency"


class UnknownParameter(ClientError):
    code = "UnknownParameter"


class InvalidParameter(ClientError):
    code = "InvalidParameter"


class IdempotentParameterMismatch(ClientError):
    code = "IdempotentParameterMismatch"


class InvalidPaginationToken(ClientError):
    code = "InvalidPaginationToken"
    default_message = "The token is not valid."


class InvalidVolumeIDMalformed(ClientError):
    code = "InvalidVolumeID.Malformed"


class InvalidVolumeNotFound(ClientError):
    code = "InvalidVolume.NotFound"


class InvalidVolumeZoneMismatch(ClientError):
    code = "InvalidVolume.ZoneMismatch"


class VolumeInUse(ClientError):
    code = "VolumeInUse"


class IncorrectState(ClientError):
    code = "IncorrectState"


class InvalidSnapshotIDMalformed(ClientError):
    code = "InvalidSnapshotID.Malformed"


class InvalidSnapshotNotFound(ClientError):
    code = "InvalidSnapshot.NotFound"


class InvalidSnapshotInUse(ClientError):
    code = "InvalidSnapshot.InUse"


class SnapshotLocked(ClientError):
    """DeleteSnapshot of a snapshot whose lock has not expired. The code could not be
    confirmed from AWS's error-code list; this one names the condition."""

    code = "SnapshotLocked"


class InvalidID(ClientError):
    code = "InvalidID"


class InvalidZoneNotFound(ClientError):
    code = "InvalidZone.NotFound"


class InvalidRegionNotFound(ClientError):
    code = "InvalidRegion.NotFound"


class InvalidFilter(ClientError):
    code = "InvalidFilter"


class FilterLimitExceeded(ClientError):
    code = "FilterLimitExceeded"


class TagLimitExceeded(ClientError):
    code = "TagLimitExceeded"


class VolumeLimitExceeded(ClientError):
    code = "VolumeLimitExceeded"


class SnapshotLimitExceeded(ClientError):
    code = "SnapshotLimitExceeded"


class InsufficientVolumeCapacity(ClientError):
    code = "InsufficientVolumeCapacity"
    default_message = "There is not enough capacity to fulfill your EBS volume provision request."


class UnsupportedOperation(ClientError):
    code = "UnsupportedOperation"


class InvalidRequest(ClientError):
    code = "InvalidRequest"
    default_message = "The request received was invalid."


class RequestTimeout(ClientError):
    code = "RequestTimeout"
    default_message = (
        "Your socket connection to the server was not read from or written to within the "
        "timeout period. Idle connections will be closed."
    )


class InvalidQueryParameter(ClientError):
    code = "InvalidQueryParameter"


class DryRunOperation(ClientError):
    code = "DryRunOperation"
    http_status = 412
    default_message = "Request would have succeeded, but DryRun flag is set."


class AuthFailure(ClientError):
    code = "AuthFailure"
    http_status = 401
    default_message = "AWS was not able to validate the provided access credentials"


class UnauthorizedOperation(ClientError):
    code = "UnauthorizedOperation"
    http_status = 403
    default_message = "You are not authorized to perform this operation."


class RequestLimitExceeded(ClientError):
    code = "RequestLimitExceeded"
    http_status = 503
    default_message = "Request limit exceeded."


class Unavailable(ClientError):
    code = "Unavailable"
    http_status = 503
    default_message = "The server is overloaded and can't handle the request."


class InvalidInstanceIDMalformed(ClientError):
    code = "InvalidInstanceID.Malformed"


class InvalidInstanceIDNotFound(ClientError):
    code = "InvalidInstanceID.NotFound"


class IncorrectInstanceState(ClientError):
    code = "IncorrectInstanceState"


class InvalidAttachmentNotFound(ClientError):
    code = "InvalidAttachment.NotFound"


class AttachmentLimitExceeded(ClientError):
    code = "AttachmentLimitExceeded"


class SignatureDoesNotMatch(ClientError):
    code = "SignatureDoesNotMatch"
    http_status = 403
    default_message = (
        "The request signature we calculated does not match the signature you provided. "
        "Check your AWS Secret Access Key and signing method. "
        "Consult the service documentation for details."
    )


class IncompleteSignature(ClientError):
    code = "IncompleteSignature"
    default_message = "The request signature does not conform to AWS standards."


class RequestExpired(ClientError):
    code = "RequestExpired"
    default_message = "Request has expired."


class MissingAuthenticationToken(ClientError):
    code = "MissingAuthenticationToken"
    http_status = 403
    default_message = "The request must contain valid credentials."


class InvalidClientTokenId(ClientError):
    code = "InvalidClientTokenId"
    http_status = 403
    default_message = "The security token included in the request is invalid."


class InvalidUserIDMalformed(ClientError):
    code = "InvalidUserID.Malformed"


class IncorrectModificationState(ClientError):
    code = "IncorrectModificationState"


class VolumeModificationRateExceeded(ClientError):
    code = "VolumeModificationRateExceeded"
    default_message = (
        "You've reached the maximum modification rate per volume limit. "
        "Wait at least 6 hours between modifications per EBS volume."
    )


class InvalidVolumeModificationNotFound(ClientError):
    code = "InvalidVolumeModification.NotFound"


class OperationNotPermitted(ClientError):
    code = "OperationNotPermitted"


# ---- the EBS direct API (rest-json): the code goes in x-amzn-ErrorType, Reason in the body ----


class EbsError(ApiError):
    """An error of the EBS direct API, with the model's optional ``Reason`` enum value."""

    def __init__(self, message: str | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


class ValidationException(EbsError):
    code = "ValidationException"
    http_status = 400


class ResourceNotFoundException(EbsError):
    code = "ResourceNotFoundException"
    http_status = 404


class AccessDeniedException(EbsError):
    code = "AccessDeniedException"
    http_status = 403


class ConflictException(EbsError):
    code = "ConflictException"
    http_status = 409
    default_message = (
        "The request uses the same client token as a previous, but non-identical request."
    )


class ConcurrentLimitExceededException(EbsError):
    code = "ConcurrentLimitExceededException"
    http_status = 400


class RequestThrottledException(EbsError):
    code = "RequestThrottledException"
    http_status = 400


class ServiceQuotaExceededException(EbsError):
    code = "ServiceQuotaExceededException"
    http_status = 402


class InternalServerException(EbsError):
    code = "InternalServerException"
    http_status = 500
    default_message = "An internal error has occurred."


class InvalidSignatureException(EbsError):
    code = "InvalidSignatureException"
    http_status = 403


class UnrecognizedClientException(EbsError):
    code = "UnrecognizedClientException"
    http_status = 403
    default_message = "The security token included in the request is invalid."


class MissingAuthenticationTokenException(EbsError):
    code = "MissingAuthenticationTokenException"
    http_status = 403
    default_message = "Missing Authentication Token"


class IncompleteSignatureException(EbsError):
    code = "IncompleteSignatureException"
    http_status = 400


class UnknownOperationException(EbsError):
    code = "UnknownOperationException"
    http_status = 404
