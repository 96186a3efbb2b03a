"""Writing snapshots block by block: StartSnapshot, PutSnapshotBlock, CompleteSnapshot, and
the Timeout that moves a snapshot left pending to `error`.

A block goes to the block store under its SHA-256 and into the snapshot's manifest; a
ParentSnapshotId's manifest is the starting point; an all-zero block is a hole, as in
snapshots of volumes.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass

from backends.errors import BackendError
from ebsemu import errors
from ebsemu.direct.access import (
    DIRECT_VOLUME_ID,
    LINEAR,
    SHA256,
    SnapshotAccess,
    checksum_of,
    decoded_checksum,
    not_pending,
    validation,
)
from ebsemu.model import BLOCK_SIZE, ZERO_DIGEST, Snapshot, SnapshotState, new_id, utcnow
from ebsemu.service import lineage, quotas, snapshot_data
from ebsemu.service.context import RequestContext
from ebsemu.service.core import Core
from ebsemu.store.base import QuotaReached
from ebsemu.store.direct import DirectMeta

log = logging.getLogger(__name__)

MAX_VOLUME_GIB = 65536
DEFAULT_TIMEOUT_MINUTES = 60
TIMEOUT_RANGE = (10, 4320)
MAX_TAGS = 50


@dataclass(frozen=True)
class StartRequest:
    volume_size: int
    parent_snapshot_id: str | None
    description: str | None
    tags: tuple[tuple[str, str], ...]
    client_token: str | None
    encrypted: bool
    kms_key_arn: str | None
    timeout_minutes: int | None

    def digest(self) -> str:
        fields = {k: v for k, v in self.__dict__.items() if k != "client_token"}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class BlockPut:
    index: int
    data: bytes
    data_length: int
    checksum: str
    progress: int | None


def _check_tags(tags: tuple[tuple[str, str], ...]) -> None:
    if len(tags) > MAX_TAGS:
        raise validation(f"A snapshot can have at most {MAX_TAGS} tags.", "INVALID_TAG")
    keys = [key for key, _ in tags]
    if len(set(keys)) != len(keys):
        raise validation("Tag keys must be unique.", "INVALID_TAG")
    for key in keys:
        if not key:
            raise validation("A tag key must not be empty.", "INVALID_TAG")
        if key.lower().startswith("aws:"):
            raise validation("Tag keys starting with 'aws:' are reserved.", "INVALID_TAG")


class DirectWriter:
    def __init__(self, core: Core, access: SnapshotAccess, minute_seconds: float) -> None:
        """``minute_seconds``: the length of a Timeout minute (60 s, shorter only in tests)."""
        self._core = core
        self._access = access
        self.minute_seconds = minute_seconds

    async def start(self, ctx: RequestContext, req: StartRequest) -> tuple[Snapshot, DirectMeta]:
        store = self._core.store
        token = ctx.scoped_token(req.client_token)
        if token is not None:
            existing = await store.direct_snapshot_by_token(ctx.account_id, token)
            if existing is not None:
                return await self._idempotent(existing, req)
        timeout = self._checked(req)
        parent = None
        if req.parent_snapshot_id is not None:
            parent = await self._access.readable(ctx, req.parent_snapshot_id)
            if req.volume_size < parent.volume_size_gib:
                raise validation(
                    f"The volume size {req.volume_size} GiB is smaller than the "
                    f"{parent.volume_size_gib} GiB of the parent snapshot {parent.id}.",
                    "INVALID_VOLUME_SIZE",
                )
        async with quotas.counting(self._core):
            await quotas.check_snapshots(
                self._core, ctx, refusal=errors.ServiceQuotaExceededException
            )
            snapshot_id = new_id("snap")
            snapshot = Snapshot(
                id=snapshot_id,
                owner_id=ctx.account_id,
                region=ctx.region,
                volume_id=DIRECT_VOLUME_ID,
                volume_size_gib=req.volume_size,
                state=SnapshotState.PENDING,
                start_time=utcnow(),
                description=req.description or "",
                tags=dict(req.tags),
                lineage=snapshot_id if parent is None else await lineage.of(store, parent),
            )
            meta = DirectMeta(
                snapshot_id=snapshot.id,
                owner_id=ctx.account_id,
                parent_snapshot_id=req.parent_snapshot_id,
                client_token=token,
                request_digest=req.digest(),
                timeout_minutes=timeout,
                last_activity=time.time(),
            )
            limit = quotas.store_limit(self._core, "snapshots")
            try:
                if parent is None:
                    stored_id = await store.start_direct_snapshot(snapshot, meta, limit=limit)
                else:
                    # Held against a concurrent DeleteSnapshot of the parent; the GC lock keeps
                    # its blocks from being swept between the check and the copy of its manifest.
                    async with self._core.locks.hold(parent.id), self._core.block_gc_lock:
                        await self._access.readable(ctx, parent.id)
                        stored_id = await store.start_direct_snapshot(snapshot, meta, limit=limit)
            except QuotaReached:  # taken meanwhile through another server instance
                raise quotas.exceeded(
                    self._core, "snapshots", ctx.region, errors.ServiceQuotaExceededException
                ) from None
        if stored_id != snapshot.id:  # a concurrent request with the same ClientToken won
            return await self._idempotent(stored_id, req)
        log.info(
            "snapshot %s: pending, written through the EBS direct API (%d GiB, parent %s)",
            snapshot.id,
            req.volume_size,
            req.parent_snapshot_id or "none",
        )
        return snapshot, meta

    def _checked(self, req: StartRequest) -> int:
        if not 1 <= req.volume_size <= MAX_VOLUME_GIB:
            raise validation(
                f"The volume size must be from 1 to {MAX_VOLUME_GIB} GiB.", "INVALID_VOLUME_SIZE"
            )
        timeout = req.timeout_minutes or DEFAULT_TIMEOUT_MINUTES
        if not TIMEOUT_RANGE[0] <= timeout <= TIMEOUT_RANGE[1]:
            raise validation(
                f"The timeout must be from {TIMEOUT_RANGE[0]} to {TIMEOUT_RANGE[1]} minutes."
            )
        if req.encrypted and req.parent_snapshot_id is not None:
            raise validation(
                "You can't specify ParentSnapshotId and Encrypted in the same request."
            )
        if req.encrypted or req.kms_key_arn is not None:
            raise validation(
                "Encryption at rest is not available on this snapshot store; "
                "start the snapshot without Encrypted and KmsKeyArn."
            )
        _check_tags(req.tags)
        return timeout

    async def _idempotent(self, snapshot_id: str, req: StartRequest) -> tuple[Snapshot, DirectMeta]:
        snapshot = await self._core.store.get_snapshot(snapshot_id)
        meta = await self._core.store.direct_meta(snapshot_id)
        if snapshot is None or meta is None or meta.request_digest != req.digest():
            raise errors.ConflictException()
        return snapshot, meta

    async def put_block(self, ctx: RequestContext, snapshot_id: str, put: BlockPut) -> str:
        """Store one block of a pending snapshot; its checksum (Base64 SHA-256)."""
        snapshot = await self._access.writable(ctx, snapshot_id)
        self._access.check_index(snapshot, put.index)
        if put.data_length != BLOCK_SIZE:
            raise validation(f"The data length must be {BLOCK_SIZE} bytes, not {put.data_length}.")
        if len(put.data) != put.data_length:
            raise validation(
                f"The block data has {len(put.data)} bytes; x-amz-Data-Length says "
                f"{put.data_length}."
            )
        claimed = decoded_checksum(put.checksum)
        digest = await asyncio.to_thread(lambda: hashlib.sha256(put.data).digest())
        if not hmac.compare_digest(claimed, digest):
            raise validation(
                "The checksum of the block data does not match the x-amz-Checksum header.",
                "INVALID_BLOCK",
            )
        await self._store_block(snapshot_id, put.index, digest, put.data)
        if put.progress is not None:
            await self._core.store.set_snapshot_progress(snapshot_id, min(put.progress, 99))
        return checksum_of(digest)

    async def _store_block(self, snapshot_id: str, index: int, digest: bytes, data: bytes) -> None:
        """The block's file, then its manifest row, under the GC lock (a sweep never sees the
        file without the row that keeps it)."""
        core = self._core
        async with core.block_gc_lock:
            if digest != ZERO_DIGEST:
                try:
                    await asyncio.to_thread(core.blocks.put, digest, data)
                except BackendError as exc:
                    log.error("snapshot %s: block %d not stored: %s", snapshot_id, index, exc)
                    raise errors.InternalServerException() from exc
            freed = await core.store.put_direct_block(snapshot_id, index, digest)
            if freed is not None:
                for replaced in freed:  # the block of a row this put replaced, named by no other
                    await asyncio.to_thread(core.blocks.delete, replaced)
                return
            if digest != ZERO_DIGEST and not await core.store.referenced([digest]):
                await asyncio.to_thread(core.blocks.delete, digest)
        raise not_pending(snapshot_id)

    async def complete(
        self,
        ctx: RequestContext,
        snapshot_id: str,
        changed_blocks: int,
        checksum: str | None,
        algorithm: str | None,
        aggregation: str | None,
    ) -> SnapshotState:
        await self._access.writable(ctx, snapshot_id)
        store = self._core.store
        written = await store.direct_written(snapshot_id)
        if changed_blocks != len(written):
            raise validation(
                f"ChangedBlocksCount is {changed_blocks}, but {len(written)} blocks were "
                f"written to the snapshot {snapshot_id}."
            )
        if checksum is not None:
            if algorithm != SHA256 or aggregation != LINEAR:
                raise validation(
                    "A checksum needs ChecksumAlgorithm SHA256 and "
                    "ChecksumAggregationMethod LINEAR."
                )
            claimed = decoded_checksum(checksum)
            actual = hashlib.sha256(b"".join(digest for _, digest in written)).digest()
            if not hmac.compare_digest(claimed, actual):
                raise validation(
                    "The aggregated checksum does not match the checksums of the blocks "
                    "written to the snapshot."
                )
        await asyncio.to_thread(self._core.blocks.flush)
        blocks = await store.manifest_block_count(snapshot_id)
        if not await store.finish_direct_snapshot(snapshot_id, blocks * BLOCK_SIZE):
            raise not_pending(snapshot_id)
        log.info(
            "snapshot %s: completed through the EBS direct API, %d blocks written, %d in all",
            snapshot_id,
            len(written),
            blocks,
        )
        return SnapshotState.COMPLETED

    async def expire_overdue(self) -> list[str]:
        """Move every pending snapshot whose Timeout ran out to `error`; release its blocks."""
        expired = []
        for snapshot_id in await self._core.store.overdue_direct_snapshots(
            time.time(), self.minute_seconds
        ):
            meta = await self._core.store.direct_meta(snapshot_id)
            minutes = meta.timeout_minutes if meta is not None else DEFAULT_TIMEOUT_MINUTES
            if await self._core.store.transition_snapshot(
                snapshot_id,
                {SnapshotState.PENDING},
                SnapshotState.ERROR,
                f"The snapshot was not completed within its timeout of {minutes} minutes.",
            ):
                log.warning("snapshot %s: timed out after %d minutes", snapshot_id, minutes)
                await snapshot_data.sweep(self._core, snapshot_id)
                expired.append(snapshot_id)
        return expired
