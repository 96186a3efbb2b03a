"""CreateTags, DeleteTags, DescribeTags over volumes and snapshots."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ebsemu import errors
from ebsemu.model import TagRecord
from ebsemu.service import listing, validation
from ebsemu.service.context import RequestContext
from ebsemu.service.core import Core
from ebsemu.service.instances import InstanceService
from ebsemu.service.snapshots import SnapshotService
from ebsemu.service.volumes import VolumeService
from ebsemu.store.base import ListQuery


class TagService:
    def __init__(
        self,
        core: Core,
        volumes: VolumeService,
        snapshots: SnapshotService,
        instances: InstanceService,
    ) -> None:
        self._core = core
        self._volumes = volumes
        self._snapshots = snapshots
        self._instances = instances

    async def _resource(self, ctx: RequestContext, resource_id: str) -> tuple[str, dict[str, str]]:
        """(resource type, current tags) of one of the caller's resources; NotFound otherwise."""
        if resource_id.startswith("vol-"):
            return "volume", (await self._volumes.get(ctx, resource_id)).tags
        if resource_id.startswith("snap-"):
            return "snapshot", (await self._snapshots.get(ctx, resource_id)).tags
        if resource_id.startswith("i-"):
            return "instance", (await self._instances.get(ctx, resource_id)).tags
        raise errors.InvalidID(f"The ID '{resource_id[:64]}' is not valid")

    async def _resources(
        self, ctx: RequestContext, resource_ids: Sequence[str]
    ) -> list[tuple[str, str, dict[str, str]]]:
        """(id, resource type, current tags) for each id, each one the caller's."""
        return [
            (resource_id, *await self._resource(ctx, resource_id))
            for resource_id in dict.fromkeys(resource_ids)
        ]

    async def create(
        self, ctx: RequestContext, resource_ids: Sequence[str], tags: list[dict[str, str]]
    ) -> None:
        new = validation.tag_dict(tags)
        resources = await self._resources(ctx, resource_ids)
        for _, _, existing in resources:
            if len(set(existing) | set(new)) > validation.MAX_TAGS:
                raise errors.TagLimitExceeded(
                    f"The maximum number of tags per resource is {validation.MAX_TAGS}."
                )
        await self._core.store.set_tags(
            [(rid, kind) for rid, kind, _ in resources], ctx.account_id, new
        )

    async def delete(
        self, ctx: RequestContext, resource_ids: Sequence[str], tags: list[dict[str, str]] | None
    ) -> None:
        resources = await self._resources(ctx, resource_ids)
        pairs: list[tuple[str, str | None]] = []
        for tag in tags or []:
            key = tag.get("Key")
            if key is None:
                raise errors.InvalidParameterValue("Tag key must be specified.")
            validation.check_not_reserved(key)  # EC2 keeps its own tags out of users' hands
            pairs.append((key, tag.get("Value")))
        await self._core.store.delete_tags([rid for rid, _, _ in resources], pairs)

    async def describe(
        self,
        ctx: RequestContext,
        raw_filters: list[dict[str, Any]] | None,
        max_results: int | None,
        next_token: str | None,
    ) -> tuple[list[TagRecord], str | None]:
        limit = listing.page_size(max_results, low=5, high=1000, ids_given=False, ids_param="")
        query = ListQuery(
            owner_ids=frozenset({ctx.account_id}),
            region=ctx.region,
            filters=listing.filters(raw_filters),
            after_seq=listing.decode_token("tag", next_token),
            limit=limit,
        )
        page = await listing.fetch_page(self._core.store.list_tags, query)
        token = listing.next_token("tag", page)
        return page.items, token
