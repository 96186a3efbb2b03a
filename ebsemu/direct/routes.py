"""The EBS direct API on the EC2 server's application: its routes, its SigV4 scope (`ebs`)
and the task that moves timed-out snapshots to `error`."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import web

from ebsemu.api.authn import Authenticator, KeyLookup
from ebsemu.direct import codec
from ebsemu.direct.handler import DIRECT_AUTH_KEY, DIRECT_KEY, handle_unknown, view
from ebsemu.direct.service import DirectService
from ebsemu.service.core import Core

log = logging.getLogger(__name__)

SIGNING_NAME = "ebs"
MAX_EXPIRY_PERIOD = 5.0


def install(
    app: web.Application, core: Core, lookup: KeyLookup, *, auth: bool, minute_seconds: float
) -> DirectService:
    """Add the operations' routes (before any catch-all route is added) and their services."""
    service = DirectService(core, minute_seconds)
    app[DIRECT_KEY] = service
    app[DIRECT_AUTH_KEY] = Authenticator(
        lookup, default_account=core.config.account_id, enabled=auth, services=(SIGNING_NAME,)
    )
    model = codec.ebs_model()
    for name in model.operation_names:
        http = model.operation_model(name).http
        app.router.add_route(http["method"], http["requestUri"], view(name))
    app.router.add_route("*", "/snapshots", handle_unknown)
    app.router.add_route("*", "/snapshots/{tail:.*}", handle_unknown)
    expiry = _Expiry(service)
    app.on_startup.append(expiry.start)  # after the store is open (cleanup contexts run first)
    app.on_shutdown.append(expiry.stop)  # before it is closed
    return service


class _Expiry:
    """While the server runs, time out overdue snapshots (checked a few times a minute)."""

    def __init__(self, service: DirectService) -> None:
        self._service = service
        self._task: asyncio.Task[None] | None = None

    async def start(self, app: web.Application) -> None:
        self._task = asyncio.create_task(self._loop(), name="ebs-direct-expiry")

    async def stop(self, app: web.Application) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        period = min(MAX_EXPIRY_PERIOD, self._service.writer.minute_seconds)
        while True:
            try:
                await self._service.writer.expire_overdue()
            except Exception:
                log.exception("timing out EBS direct API snapshots failed")
            await asyncio.sleep(period)
