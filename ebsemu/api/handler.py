"""The one aiohttp view for EC2 Query requests (POST and GET on /).

Order of checks, as EC2 does them: the body's size, the signature (who is asking), the
caller's request rate, then the action and its parameters.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from aiohttp import web
from yarl import URL

from ebsemu import errors
from ebsemu.api import actions_encryption  # noqa: F401  (registers its actions)
from ebsemu.api.actions import ACTIONS, Services
from ebsemu.api.authn import Authenticator, Caller
from ebsemu.api.codec import ec2_model, parse_query, serialize_error, serialize_response
from ebsemu.api.metrics import set_outcome
from ebsemu.api.ratelimit import RateLimiter
from ebsemu.api.request_context import request_id as request_id_of
from ebsemu.service.context import RequestContext

log = logging.getLogger(__name__)

SERVICES_KEY: web.AppKey[Services] = web.AppKey("services", Services)
AUTH_KEY: web.AppKey[Authenticator] = web.AppKey("authenticator", Authenticator)
LIMITER_KEY: web.AppKey[RateLimiter] = web.AppKey("rate_limiter", RateLimiter)
XML = "text/xml"


def error_response(exc: errors.ApiError, request_id: str) -> web.Response:
    return web.Response(
        status=exc.http_status,
        body=serialize_error(exc.code, exc.message, request_id),
        content_type=XML,
    )


class ClientGone(Exception):
    """The client closed the connection before its request's body had arrived."""


# What the access log shows for a request whose client went away (nginx's code): the answer
# is never sent.
CLIENT_CLOSED_REQUEST = 499


async def read_body(request: web.Request) -> bytes:
    """The request's body, decoded as its Content-Encoding says.

    InvalidRequest for a body too large or that does not decode; RequestTimeout for one that
    has not all arrived within [limits] request_body_timeout_seconds (a client that stops
    sending would otherwise hold its connection and this handler for good); ClientGone when
    the client hung up before sending all of it."""
    seconds = request.app[SERVICES_KEY].config.request_body_timeout_seconds
    try:
        async with asyncio.timeout(seconds):
            return await request.read()
    except TimeoutError:
        _abandon_body(request)
        raise errors.RequestTimeout() from None
    except web.HTTPRequestEntityTooLarge:
        raise errors.InvalidRequest("The request body is too large.") from None
    except web.RequestPayloadError:
        # The stream holds the error: aiohttp would read it again once the answer is sent
        # (and log it).
        _abandon_body(request)
        raise errors.InvalidRequest(
            "The request body could not be decoded (is its Content-Encoding right?)."
        ) from None
    except ConnectionResetError:
        raise ClientGone() from None


def _abandon_body(request: web.Request) -> None:
    """Leave the rest of the body unread: once the answer is sent aiohttp would read on (and
    wait for what may never come); the connection is past use and is closed after it."""
    request.content.feed_eof()
    request.protocol.close()


def client_gone(request_id: str, account: str, action: str) -> web.Response:
    log.info("request %s %s %s: the client closed the connection", request_id, account, action)
    return web.Response(status=CLIENT_CLOSED_REQUEST)


def _pairs(request: web.Request, body: bytes) -> list[tuple[str, str]]:
    pairs = list(request.query.items())
    if request.method == "POST" and body:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise errors.InvalidParameterValue("The request body is not valid UTF-8.") from None
        # Decoded as urllib.parse.parse_qsl(text, keep_blank_values=True) does it, by yarl's
        # compiled unquoter: a body full of %XX escapes costs milliseconds, not a fifth of a
        # second per MiB.
        pairs += URL.build(query_string=text, encoded=True).query.items()
    return pairs


def _single(pairs: Iterable[tuple[str, str]], name: str) -> str | None:
    values = [value for key, value in pairs if key == name]
    return values[0] if values else None


async def _authenticated(request: web.Request, body: bytes) -> Caller:
    caller = await request.app[AUTH_KEY].caller(request, body)
    if not request.app[LIMITER_KEY].allow(caller.access_key_id or ""):
        raise errors.RequestLimitExceeded()
    return caller


async def handle_ec2(request: web.Request) -> web.Response:
    request_id = request_id_of(request)
    services = request.app[SERVICES_KEY]
    action = "-"
    account = "-"
    try:
        body = await read_body(request)
        caller = await _authenticated(request, body)
        account = f"{caller.account_id}:{caller.access_key_id or '-'}"  # who, by which key
        pairs = _pairs(request, body)
        action = _single(pairs, "Action") or ""
        if not action:
            raise errors.MissingAction()
        handler = ACTIONS.get(action)
        if handler is None:
            raise errors.InvalidAction(
                f"The action {action[:64]} is not valid for this web service."
            )
        operation = ec2_model().operation_model(action)
        params = parse_query(operation, pairs)
        region = caller.region
        if region not in services.config.regions:
            region = services.config.default_region
        ctx = RequestContext(caller.account_id, region, request_id)
        if params.get("DryRun"):
            raise errors.DryRunOperation()
        result = await handler(services, ctx, params)
        answer = serialize_response(operation, result, request_id)
    except errors.ApiError as exc:
        level = logging.INFO if exc.http_status < 500 else logging.WARNING
        log.log(
            level,
            "request %s %s %s -> %d %s: %s",
            request_id,
            account,
            action[:64],
            exc.http_status,
            exc.code,
            exc.message,
        )
        set_outcome(request, action, exc.code)
        return error_response(exc, request_id)
    except ClientGone:
        return client_gone(request_id, account, action[:64])  # not counted: no answer
    except Exception:
        log.exception("request %s %s %s -> 500 InternalError", request_id, account, action[:64])
        set_outcome(request, action, errors.InternalError.code)
        return error_response(errors.InternalError(), request_id)
    log.debug("request %s %s %s -> 200", request_id, account, action)
    set_outcome(request, action, "OK")
    return web.Response(body=answer, content_type=XML)


async def handle_unknown(request: web.Request) -> web.Response:
    """Any other method or path: an EC2-style error, never aiohttp's plain-text page."""
    return error_response(
        errors.InvalidRequest(f"No EC2 API at {request.method} {request.path[:128]}"),
        request_id_of(request),
    )
