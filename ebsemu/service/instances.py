"""Instances: the domains of every configured VMM host, seen as EC2 instances.

Discovery asks each VMM for its domains and keeps one row per (VMM host, domain) with a stable
id derived from the pair. A domain that disappears becomes `terminated`; its volumes are
detached (or deleted, for DeleteOnTermination) as EC2 does when an instance terminates.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from backends.base import VmmBackend
from backends.errors import BackendError
from ebsemu import errors
from ebsemu.model import Attachment, Instance, utcnow
from ebsemu.service import listing
from ebsemu.service.context import RequestContext
from ebsemu.service.core import Core
from ebsemu.store.base import ListQuery

log = logging.getLogger(__name__)

DISCOVERY_MAX_AGE_SECONDS = 2.0
DISCOVERY_TIMEOUT_SECONDS = 20.0
STATE_CODES = {
    "pending": 0,
    "running": 16,
    "shutting-down": 32,
    "terminated": 48,
    "stopping": 64,
    "stopped": 80,
}


def instance_id(vmm: str, domain: str) -> str:
    """Stable id of a domain: the same VMM host and domain name always give the same id."""
    return "i-" + hashlib.sha256(f"{vmm}\0{domain}".encode()).hexdigest()[:17]


class InstanceService:
    def __init__(self, core: Core) -> None:
        self._core = core
        self._refreshed_at = 0.0
        self._refresh_lock = asyncio.Lock()
        self.on_terminated: Callable[[str], Awaitable[None]] | None = None

    async def refresh(self, *, force: bool = False) -> None:
        """Discover domains on every VMM host (at most every couple of seconds)."""
        async with self._refresh_lock:
            if not force and time.monotonic() - self._refreshed_at < DISCOVERY_MAX_AGE_SECONDS:
                return
            for host in self._core.config.vmm_hosts:
                vmm = self._core.vmms[host.name]
                try:
                    async with asyncio.timeout(DISCOVERY_TIMEOUT_SECONDS):
                        domains = await vmm.list_domains()
                except (BackendError, TimeoutError) as exc:
                    log.warning(
                        "VMM host %s: discovery failed, keeping last view: %s", host.name, exc
                    )
                    continue
                zone = next(z for z in self._core.config.zones if z.name == host.zone)
                seen = [
                    Instance(
                        id=instance_id(host.name, d.name),
                        owner_id=host.account_id or self._core.config.account_id,
                        region=zone.region,
                        zone=zone.name,
                        vmm=host.name,
                        domain=d.name,
                        state=d.state.value,
                        launch_time=utcnow(),
                    )
                    for d in domains
                ]
                terminated = await self._core.store.sync_instances(host.name, seen)
                for gone in terminated:
                    log.info("instance %s on %s: its domain is gone, terminated", gone, host.name)
                    if self.on_terminated is not None:
                        await self.on_terminated(gone)
            self._refreshed_at = time.monotonic()

    async def get(self, ctx: RequestContext, instance_id_: str) -> Instance:
        check_instance_id(instance_id_)
        await self.refresh()
        instance = await self._core.store.get_instance(instance_id_)
        if instance is None or instance.owner_id != ctx.account_id or instance.region != ctx.region:
            raise errors.InvalidInstanceIDNotFound(
                f"The instance ID '{instance_id_}' does not exist"
            )
        return instance

    async def _exists(self, ctx: RequestContext, instance_id_: str) -> bool:
        instance = await self._core.store.get_instance(instance_id_)
        return (
            instance is not None
            and instance.owner_id == ctx.account_id
            and instance.region == ctx.region
        )

    def vmm_of(self, instance: Instance) -> VmmBackend:
        return self._core.vmms[instance.vmm]

    async def describe(
        self,
        ctx: RequestContext,
        instance_ids: Sequence[str],
        raw_filters: list[dict[str, Any]] | None,
        max_results: int | None,
        next_token: str | None,
    ) -> tuple[list[tuple[Instance, list[Attachment]]], str | None]:
        ids = tuple(dict.fromkeys(check_instance_id(i) for i in instance_ids))
        limit = listing.page_size(
            max_results, low=5, high=1000, ids_given=bool(ids), ids_param="instanceId"
        )
        await self.refresh()
        query = ListQuery(
            owner_ids=frozenset({ctx.account_id}),
            region=ctx.region,
            ids=ids,
            filters=listing.filters(raw_filters),
            after_seq=listing.decode_token("inst", next_token),
            limit=limit,
        )
        page = await listing.fetch_page(self._core.store.list_instances, query)
        if ids:
            # An id the filters leave out is no error; one that names no instance is.
            found = {i.id for i in page.items}
            missing = sorted([i for i in ids if i not in found and not await self._exists(ctx, i)])
            if missing:
                raise errors.InvalidInstanceIDNotFound(
                    f"The instance IDs '{', '.join(missing)}' do not exist"
                    if len(missing) > 1
                    else f"The instance ID '{missing[0]}' does not exist"
                )
        attachments = await self._core.store.attachments_of_instances([i.id for i in page.items])
        token = listing.next_token("inst", page)
        return [(i, attachments.get(i.id, [])) for i in page.items], token


def check_instance_id(value: str) -> str:
    if not listing.INSTANCE_ID.fullmatch(value):
        raise errors.InvalidInstanceIDMalformed(f'Invalid id: "{value[:64]}" (expecting "i-...")')
    return value
