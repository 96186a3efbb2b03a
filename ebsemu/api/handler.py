"""The one aiohttp view for EC2 Query requests (POST and GET on /)."""

from __future__ import annotations

import logging
import urllib.parse
import uuid
from collections.abc import Iterable

from aiohttp import web

from ebsemu import errors
from ebsemu.api.actions import ACTIONS, Services
from ebsemu.api.codec import ec2_model, parse_query, serialize_error, serialize_response
from ebsemu.api.signing import signing_region
from ebsemu.service.context import RequestContext

log = logging.getLogger(__name__)

SERVICES_KEY: web.AppKey[Services] = web.AppKey("services", Services)
XML = "text/xml"


def error_response(exc: errors.ApiError, request_id: str) -> web.Response:
    return web.Response(
        status=exc.http_status,
        body=serialize_error(exc.code, exc.message, request_id),
        content_type=XML,
    )


async def _pairs(request: web.Request) -> list[tuple[str, str]]:
    pairs = list(request.query.items())
    if request.method == "POST" and request.can_read_body:
        body = await request.read()
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise errors.InvalidParameterValue("The request body is not valid UTF-8.") from None
        pairs += urllib.parse.parse_qsl(text, keep_blank_values=True)
    return pairs


def _single(pairs: Iterable[tuple[str, str]], name: str) -> str | None:
    values = [value for key, value in pairs if key == name]
    return values[0] if values else None


async def handle_ec2(request: web.Request) -> web.Response:
    request_id = str(uuid.uuid4())
    services = request.app[SERVICES_KEY]
    action = "-"
    try:
        try:
            pairs = await _pairs(request)
        except web.HTTPRequestEntityTooLarge:
            raise errors.InvalidRequest("The request body is too large.") from None
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
        region = signing_region(request.headers, dict(pairs))
        if region not in services.config.regions:
            region = services.config.default_region
        ctx = RequestContext(services.config.account_id, region, request_id)
        if params.get("DryRun"):
            raise errors.DryRunOperation()
        result = await handler(services, ctx, params)
        body = serialize_response(operation, result, request_id)
    except errors.ApiError as exc:
        level = logging.INFO if exc.http_status < 500 else logging.WARNING
        log.log(
            level,
            "request %s %s -> %d %s: %s",
            request_id,
            action,
            exc.http_status,
            exc.code,
            exc.message,
        )
        return error_response(exc, request_id)
    except Exception:
        log.exception("request %s %s -> 500 InternalError", request_id, action)
        return error_response(errors.InternalError(), request_id)
    log.debug("request %s %s -> 200", request_id, action)
    return web.Response(body=body, content_type=XML)


async def handle_unknown(request: web.Request) -> web.Response:
    """Any other method or path: an EC2-style error, never aiohttp's plain-text page."""
    return error_response(
        errors.InvalidRequest(f"No EC2 API at {request.method} {request.path[:128]}"),
        str(uuid.uuid4()),
    )
