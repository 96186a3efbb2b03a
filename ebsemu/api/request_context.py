"""The request id: made once per HTTP request, before anything else runs, so the response,
every log line the request causes (ebsemu.logs) and the access-log line all carry the same."""

from __future__ import annotations

import uuid

from aiohttp import web
from aiohttp.typedefs import Handler

from ebsemu import logs

REQUEST_ID_KEY = web.RequestKey("request_id", str)


def request_id(request: web.BaseRequest) -> str:
    """The request's id (a fresh one for a request the middleware did not see)."""
    return request.get(REQUEST_ID_KEY) or str(uuid.uuid4())


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = str(uuid.uuid4())
    request[REQUEST_ID_KEY] = request_id
    token = logs.REQUEST_ID.set(request_id)
    try:
        return await handler(request)
    finally:
        logs.REQUEST_ID.reset(token)
