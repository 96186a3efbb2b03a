"""One access-log line per HTTP request, without the query string.

aiohttp's default line holds the whole request line, and a query string can carry a presigned
URL's signature or SigV2's Signature parameter: anyone reading the log could replay the
request while it is valid. This line has the method, the path and the outcome only (and the
request's id, as every log line of the request has).
"""

from __future__ import annotations

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from ebsemu.api.request_context import REQUEST_ID_KEY


class AccessLogger(AbstractAccessLogger):
    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %d %d %.3fs',
            request.remote,
            request.method,
            request.path[:256],
            response.status,
            response.body_length,
            time,
            extra={"request_id": request.get(REQUEST_ID_KEY)},
        )
