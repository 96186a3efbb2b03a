"""aiohttp views of the EBS direct API: one per operation, routed by the model's request URIs.

Order of checks as for EC2: the body's size, the signature (SigV4 scoped to service `ebs`),
the caller's request rate, then the parameters. Errors are rest-json: the code in the
`x-amzn-ErrorType` header, `Message` (and the model's `Reason`) in a JSON body.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from ebsemu import errors
from ebsemu.api.authn import Authenticator
from ebsemu.api.handler import LIMITER_KEY, SERVICES_KEY, ClientGone, client_gone, read_body
from ebsemu.api.request_context import request_id as request_id_of
from ebsemu.direct import codec
from ebsemu.direct.operations import OPERATIONS
from ebsemu.direct.service import DirectService
from ebsemu.service.context import RequestContext

log = logging.getLogger(__name__)

DIRECT_KEY: web.AppKey[DirectService] = web.AppKey("direct", DirectService)
DIRECT_AUTH_KEY: web.AppKey[Authenticator] = web.AppKey("direct_authenticator", Authenticator)
View = Callable[[web.Request], Awaitable[web.Response]]

# The EC2 errors that signature checks, the rate limiter and the body's reading raise, as a
# rest-json service names them.
_AS_REST_JSON: dict[str, Callable[[str], errors.ApiError]] = {
    "SignatureDoesNotMatch": errors.InvalidSignatureException,
    "RequestExpired": errors.InvalidSignatureException,
    "InvalidClientTokenId": errors.UnrecognizedClientException,
    "MissingAuthenticationToken": errors.MissingAuthenticationTokenException,
    "IncompleteSignature": errors.IncompleteSignatureException,
    "AuthFailure": errors.InvalidSignatureException,
    "RequestLimitExceeded": lambda message: errors.RequestThrottledException(
        message, "ACCOUNT_THROTTLED"
    ),
    "RequestTimeout": lambda message: errors.ValidationException(message, "WRITE_REQUEST_TIMEOUT"),
}


def _rest_json(exc: errors.ApiError) -> errors.ApiError:
    if isinstance(exc, errors.EbsError):
        return exc
    translate = _AS_REST_JSON.get(exc.code)
    if translate is not None:
        return translate(exc.message)
    if exc.http_status >= 500:
        return errors.InternalServerException()
    return errors.ValidationException(exc.message, "INVALID_PARAMETER_VALUE")


def reply(answer: codec.Reply, request_id: str) -> web.Response:
    headers = {**answer.headers, "x-amzn-RequestId": request_id}
    return web.Response(
        status=answer.status, headers=headers, body=answer.body, content_type=answer.content_type
    )


def _signed(request: web.Request) -> bool:
    """Whether the request carries a SigV4 signature at all (header or presigned query)."""
    return "Authorization" in request.headers or "X-Amz-Signature" in request.query


def view(name: str) -> View:
    """The view of operation ``name``."""
    operation = codec.ebs_model().operation_model(name)
    adapter = OPERATIONS[name]
    # PutSnapshotBlock's block is sent as UNSIGNED-PAYLOAD; its signed x-amz-Checksum header,
    # checked against the block, binds it instead.
    payload = operation.input_shape.serialization.get("payload") if operation.input_shape else None
    bound_by = ("x-amz-checksum",) if payload is not None else ()

    async def handle(request: web.Request) -> web.Response:
        request_id = request_id_of(request)
        account = "-"
        try:
            body = await read_body(request)  # its errors are translated below
            authenticator = request.app[DIRECT_AUTH_KEY]
            if authenticator.enabled and not _signed(request):
                raise errors.MissingAuthenticationTokenException()
            caller = await authenticator.caller(request, body, body_bound_by=bound_by)
            account = f"{caller.account_id}:{caller.access_key_id or '-'}"
            if not request.app[LIMITER_KEY].allow(caller.access_key_id or ""):
                raise errors.RequestLimitExceeded()
            params = codec.parse_request(
                operation, request.match_info, request.query, request.headers, body
            )
            config = request.app[SERVICES_KEY].config
            region = caller.region if caller.region in config.regions else config.default_region
            ctx = RequestContext(caller.account_id, region, request_id)
            result = await adapter(request.app[DIRECT_KEY], ctx, params)
            answer = codec.serialize_response(operation, result)
        except errors.ApiError as raised:
            exc = _rest_json(raised)
            level = logging.INFO if exc.http_status < 500 else logging.WARNING
            log.log(
                level,
                "request %s %s ebs:%s -> %d %s: %s",
                request_id,
                account,
                name,
                exc.http_status,
                exc.code,
                exc.message,
            )
            return reply(codec.serialize_error(exc, request_id), request_id)
        except ClientGone:
            return client_gone(request_id, account, f"ebs:{name}")
        except Exception:
            log.exception(
                "request %s %s ebs:%s -> 500 InternalServerException", request_id, account, name
            )
            return reply(
                codec.serialize_error(errors.InternalServerException(), request_id), request_id
            )
        log.debug("request %s %s ebs:%s -> %d", request_id, account, name, answer.status)
        return reply(answer, request_id)

    return handle


async def handle_unknown(request: web.Request) -> web.Response:
    """A path under /snapshots that names no operation, or a method it does not take."""
    request_id = request_id_of(request)
    exc = errors.UnknownOperationException(
        f"No EBS direct API operation at {request.method} {request.path[:128]}"
    )
    return reply(codec.serialize_error(exc, request_id), request_id)
