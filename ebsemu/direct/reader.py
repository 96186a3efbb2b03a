"""Reading snapshots block by block: ListSnapshotBlocks, ListChangedBlocks (manifests compared
by digest in SQL, across a snapshot lineage) and GetSnapshotBlock with its block token."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass

from backends.errors import BackendError
from ebsemu import errors
from ebsemu.direct.access import SnapshotAccess, checksum_of, validation
from ebsemu.direct.tokens import TokenSigner
from ebsemu.model import Snapshot
from ebsemu.service import lineage
from ebsemu.service.context import RequestContext
from ebsemu.service.core import Core

log = logging.getLogger(__name__)

TOKEN_LIFETIME_SECONDS = 7 * 24 * 3600  # a block token's, as on AWS
PAGE_RANGE = (100, 10000)


@dataclass(frozen=True)
class ListedBlock:
    index: int
    token: str


@dataclass(frozen=True)
class ChangedBlock:
    index: int
    first_token: str | None
    second_token: str | None


@dataclass(frozen=True)
class BlockPage:
    volume_size: int
    expires: int  # epoch seconds
    next_token: str | None


@dataclass(frozen=True)
class BlockData:
    data: bytes
    checksum: str


class DirectReader:
    def __init__(self, core: Core, access: SnapshotAccess) -> None:
        self._core = core
        self._access = access
        self._signer: TokenSigner | None = None

    async def _tokens(self) -> TokenSigner:
        if self._signer is None:
            key = await self._core.store.direct_key("tokens", secrets.token_bytes(32))
            self._signer = TokenSigner(key)
        return self._signer

    async def list_blocks(
        self,
        ctx: RequestContext,
        snapshot_id: str,
        max_results: int | None,
        next_token: str | None,
        starting_index: int | None,
    ) -> tuple[list[ListedBlock], BlockPage]:
        snapshot = await self._access.readable(ctx, snapshot_id)
        signer = await self._tokens()
        scope = f"blocks:{snapshot_id}"
        limit = _page_size(max_results)
        start = _page_start(signer, scope, next_token, starting_index)
        rows = await self._core.store.manifest_page(snapshot_id, start, limit + 1)
        expires = int(time.time()) + TOKEN_LIFETIME_SECONDS
        blocks = [
            ListedBlock(index, signer.block_token(snapshot_id, index, digest, expires))
            for index, digest in rows[:limit]
        ]
        token = signer.page_token(scope, rows[limit][0]) if len(rows) > limit else None
        return blocks, BlockPage(snapshot.volume_size_gib, expires, token)

    async def list_changed(
        self,
        ctx: RequestContext,
        first_id: str | None,
        second_id: str,
        max_results: int | None,
        next_token: str | None,
        starting_index: int | None,
    ) -> tuple[list[ChangedBlock], BlockPage]:
        second = await self._access.readable(ctx, second_id)
        if first_id is not None:
            first = await self._access.readable(ctx, first_id)
            if not await self._related(first, second):
                raise validation(
                    f"The snapshots {first_id} and {second_id} are not of the same volume "
                    "or snapshot lineage.",
                    "UNRELATED_SNAPSHOTS",
                )
        signer = await self._tokens()
        scope = f"changed:{first_id or ''}:{second_id}"
        limit = _page_size(max_results)
        start = _page_start(signer, scope, next_token, starting_index)
        rows = await self._core.store.changed_page(first_id, second_id, start, limit + 1)
        expires = int(time.time()) + TOKEN_LIFETIME_SECONDS

        def token(snapshot: str | None, index: int, digest: bytes | None) -> str | None:
            if snapshot is None or digest is None:
                return None
            return signer.block_token(snapshot, index, digest, expires)

        changed = [
            ChangedBlock(
                row.index,
                token(first_id, row.index, row.first),
                token(second_id, row.index, row.second),
            )
            for row in rows[:limit]
        ]
        page_token = signer.page_token(scope, rows[limit].index) if len(rows) > limit else None
        return changed, BlockPage(second.volume_size_gib, expires, page_token)

    async def get_block(
        self, ctx: RequestContext, snapshot_id: str, index: int, block_token: str
    ) -> BlockData:
        snapshot = await self._access.readable(ctx, snapshot_id)
        self._access.check_index(snapshot, index)
        digest = (await self._core.store.manifest_rows(snapshot_id, [index])).get(index)
        signer = await self._tokens()
        if digest is None or not signer.block_token_valid(
            block_token, snapshot_id, index, digest, time.time()
        ):
            raise validation(
                f"The block token is not valid for block {index} of snapshot {snapshot_id}, "
                "or it has expired.",
                "INVALID_BLOCK_TOKEN",
            )
        try:
            data = await asyncio.to_thread(self._core.blocks.get, digest)
        except BackendError as exc:
            log.error("snapshot %s: block %d unreadable: %s", snapshot_id, index, exc)
            raise errors.InternalServerException() from exc
        return BlockData(data, checksum_of(digest))

    # ---- helpers -------------------------------------------------------------------------

    async def _related(self, first: Snapshot, second: Snapshot) -> bool:
        store = self._core.store
        return await lineage.of(store, first) == await lineage.of(store, second)


def _page_size(max_results: int | None) -> int:
    if max_results is None:
        return PAGE_RANGE[1]
    low, high = PAGE_RANGE
    if not low <= max_results <= high:
        raise validation(f"MaxResults must be from {low} to {high}.")
    return max_results


def _page_start(
    signer: TokenSigner, scope: str, next_token: str | None, starting_index: int | None
) -> int:
    """Where a page starts: the NextToken's index (StartingBlockIndex is then ignored)."""
    if next_token is None:
        return starting_index or 0
    index = signer.page_index(scope, next_token)
    if index is None:
        raise validation("The page token is not valid for this request.", "INVALID_PAGE_TOKEN")
    return index
