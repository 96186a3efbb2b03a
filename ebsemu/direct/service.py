"""Snapshots written and read block by block (the EBS direct API), on the real block store.

A snapshot started here is an EC2 snapshot like any other (`pending`, then `completed` or
`error`), with volume id `vol-ffffffff` as AWS shows it. Its blocks go to the block store
under their SHA-256, its manifest to `snapshot_blocks`; a ParentSnapshotId's manifest is its
starting point. An all-zero block put is a hole, as in snapshots of volumes. A snapshot not
completed within its Timeout (minutes since StartSnapshot or the latest block put) goes to
`error` and its blocks are released.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass

from backends.errors import BackendError
from ebsemu import errors
from ebsemu.direct.tokens import TokenSigner
from ebsemu.model import BLOCK_SIZE, Snapshot, SnapshotState, new_id, utcnow
from ebsemu.service import snapshot_data
from ebsemu.service.context import RequestContext
from ebsemu.service.core import Core
from ebsemu.store.direct import DirectMeta
from ebsemu.store.sqlite_direct import ZERO_DIGEST

log = logging.getLogger(__name__)

DIRECT_VOLUME_ID = "vol-ffffffff"  # what EC2 shows as the volume of such snapshots
BLOCKS_PER_GIB = 1024**3 // BLOCK_SIZE
MAX_VOLUME_GIB = 65536
DEFAULT_TIMEOUT_MINUTES = 60
TIMEOUT_RANGE = (10, 4320)
TOKEN_LIFETIME_SECONDS = 24 * 3600
PAGE_RANGE = (100, 10000)
MAX_TAGS = 50
MAX_LINEAGE = 1000
SHA256 = "SHA256"
LINEAR = "LINEAR"


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


def _validation(message: str, reason: str | None = "INVALID_PARAMETER_VALUE") -> errors.EbsError:
    return errors.ValidationException(message, reason)


def _not_found(snapshot_id: str) -> errors.EbsError:
    return errors.ResourceNotFoundException(
        f"The snapshot '{snapshot_id}' does not exist.", "SNAPSHOT_NOT_FOUND"
    )


def checksum_of(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def _decoded_checksum(text: str) -> bytes:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != hashlib.sha256().digest_size:
        raise _validation("The checksum must be a Base64-encoded SHA256 digest (32 bytes).")
    return raw


def _check_tags(tags: tuple[tuple[str, str], ...]) -> None:
    if len(tags) > MAX_TAGS:
        raise _validation(f"A snapshot can have at most {MAX_TAGS} tags.", "INVALID_TAG")
    keys = [key for key, _ in tags]
    if len(set(keys)) != len(keys):
        raise _validation("Tag keys must be unique.", "INVALID_TAG")
    for key in keys:
        if not key:
            raise _validation("A tag key must not be empty.", "INVALID_TAG")
        if key.lower().startswith("aws:"):
            raise _validation("Tag keys starting with 'aws:' are reserved.", "INVALID_TAG")


class DirectService:
    def __init__(self, core: Core, minute_seconds: float = 60.0) -> None:
        """``minute_seconds``: the length of a Timeout minute (60 s, shorter only in tests)."""
        self._core = core
        self.minute_seconds = minute_seconds
        self._signer: TokenSigner | None = None

    async def _tokens(self) -> TokenSigner:
        if self._signer is None:
            key = await self._core.store.direct_key("tokens", secrets.token_bytes(32))
            self._signer = TokenSigner(key)
        return self._signer

    # ---- writing -------------------------------------------------------------------------

    async def start(self, ctx: RequestContext, req: StartRequest) -> tuple[Snapshot, DirectMeta]:
        store = self._core.store
        if req.client_token is not None:
            existing = await store.direct_snapshot_by_token(ctx.account_id, req.client_token)
            if existing is not None:
                return await self._idempotent(existing, req)
        timeout = self._checked(req)
        parent = None
        if req.parent_snapshot_id is not None:
            parent = await self._readable(ctx, req.parent_snapshot_id)
            if req.volume_size < parent.volume_size_gib:
                raise _validation(
                    f"The volume size {req.volume_size} GiB is smaller than the "
                    f"{parent.volume_size_gib} GiB of the parent snapshot {parent.id}.",
                    "INVALID_VOLUME_SIZE",
                )
        limit = self._core.config.max_snapshots
        if await store.count_snapshots(ctx.account_id) >= limit:
            raise errors.ServiceQuotaExceededException(
                f"You have reached the maximum of {limit} snapshots."
            )
        snapshot = Snapshot(
            id=new_id("snap"),
            owner_id=ctx.account_id,
            region=ctx.region,
            volume_id=DIRECT_VOLUME_ID,
            volume_size_gib=req.volume_size,
            state=SnapshotState.PENDING,
            start_time=utcnow(),
            description=req.description or "",
            tags=dict(req.tags),
        )
        meta = DirectMeta(
            snapshot_id=snapshot.id,
            owner_id=ctx.account_id,
            parent_snapshot_id=req.parent_snapshot_id,
            client_token=req.client_token,
            request_digest=req.digest(),
            timeout_minutes=timeout,
            last_activity=time.time(),
        )
        if parent is None:
            stored_id = await store.start_direct_snapshot(snapshot, meta)
        else:
            # Held against a concurrent DeleteSnapshot of the parent; the GC lock keeps its
            # blocks from being swept between the check and the copy of its manifest.
            async with self._core.locks.hold(parent.id), self._core.block_gc_lock:
                await self._readable(ctx, parent.id)
                stored_id = await store.start_direct_snapshot(snapshot, meta)
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
            raise _validation(
                f"The volume size must be from 1 to {MAX_VOLUME_GIB} GiB.", "INVALID_VOLUME_SIZE"
            )
        timeout = req.timeout_minutes or DEFAULT_TIMEOUT_MINUTES
        if not TIMEOUT_RANGE[0] <= timeout <= TIMEOUT_RANGE[1]:
            raise _validation(
                f"The timeout must be from {TIMEOUT_RANGE[0]} to {TIMEOUT_RANGE[1]} minutes."
            )
        if req.encrypted and req.parent_snapshot_id is not None:
            raise _validation(
                "You can't specify ParentSnapshotId and Encrypted in the same request."
            )
        if req.encrypted or req.kms_key_arn is not None:
            raise _validation(
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
        snapshot = await self._writable(ctx, snapshot_id)
        self._check_index(snapshot, put.index)
        if put.data_length != BLOCK_SIZE:
            raise _validation(f"The data length must be {BLOCK_SIZE} bytes, not {put.data_length}.")
        if len(put.data) != put.data_length:
            raise _validation(
                f"The block data has {len(put.data)} bytes; x-amz-Data-Length says "
                f"{put.data_length}."
            )
        claimed = _decoded_checksum(put.checksum)
        digest = await asyncio.to_thread(lambda: hashlib.sha256(put.data).digest())
        if not hmac.compare_digest(claimed, digest):
            raise _validation(
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
            if await core.store.put_direct_block(snapshot_id, index, digest):
                return
            if digest != ZERO_DIGEST and not await core.store.referenced([digest]):
                await asyncio.to_thread(core.blocks.delete, digest)
        raise _not_pending(snapshot_id)

    async def complete(
        self,
        ctx: RequestContext,
        snapshot_id: str,
        changed_blocks: int,
        checksum: str | None,
        algorithm: str | None,
        aggregation: str | None,
    ) -> SnapshotState:
        await self._writable(ctx, snapshot_id)
        store = self._core.store
        written = await store.direct_written(snapshot_id)
        if changed_blocks != len(written):
            raise _validation(
                f"ChangedBlocksCount is {changed_blocks}, but {len(written)} blocks were "
                f"written to the snapshot {snapshot_id}."
            )
        if checksum is not None:
            if algorithm != SHA256 or aggregation != LINEAR:
                raise _validation(
                    "A checksum needs ChecksumAlgorithm SHA256 and "
                    "ChecksumAggregationMethod LINEAR."
                )
            claimed = _decoded_checksum(checksum)
            actual = hashlib.sha256(b"".join(digest for _, digest in written)).digest()
            if not hmac.compare_digest(claimed, actual):
                raise _validation(
                    "The aggregated checksum does not match the checksums of the blocks "
                    "written to the snapshot."
                )
        await asyncio.to_thread(self._core.blocks.flush)
        blocks = await store.manifest_block_count(snapshot_id)
        if not await store.finish_direct_snapshot(snapshot_id, blocks * BLOCK_SIZE):
            raise _not_pending(snapshot_id)
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

    # ---- reading -------------------------------------------------------------------------

    async def list_blocks(
        self,
        ctx: RequestContext,
        snapshot_id: str,
        max_results: int | None,
        next_token: str | None,
        starting_index: int | None,
    ) -> tuple[list[ListedBlock], BlockPage]:
        snapshot = await self._readable(ctx, snapshot_id)
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
        second = await self._readable(ctx, second_id)
        if first_id is not None:
            first = await self._readable(ctx, first_id)
            if not await self._related(first, second):
                raise _validation(
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
        snapshot = await self._readable(ctx, snapshot_id)
        self._check_index(snapshot, index)
        digest = (await self._core.store.manifest_rows(snapshot_id, [index])).get(index)
        signer = await self._tokens()
        if digest is None or not signer.block_token_valid(
            block_token, snapshot_id, index, digest, time.time()
        ):
            raise _validation(
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

    @staticmethod
    def _check_index(snapshot: Snapshot, index: int) -> None:
        blocks = snapshot.volume_size_gib * BLOCKS_PER_GIB
        if index >= blocks:
            raise _validation(
                f"The block index {index} is beyond the end of the {snapshot.volume_size_gib} "
                f"GiB snapshot {snapshot.id} (blocks 0 to {blocks - 1})."
            )

    async def _visible(self, ctx: RequestContext, snapshot_id: str) -> Snapshot:
        """A snapshot the caller owns or that is shared with its account (the EBS direct API
        does not read public snapshots); ResourceNotFoundException for any other id."""
        snapshot = await self._core.store.get_snapshot(snapshot_id)
        if snapshot is None or snapshot.region != ctx.region:
            raise _not_found(snapshot_id)
        if snapshot.owner_id != ctx.account_id and ctx.account_id not in (
            await self._core.store.snapshot_grantees(snapshot_id)
        ):
            raise _not_found(snapshot_id)
        return snapshot

    async def _readable(self, ctx: RequestContext, snapshot_id: str) -> Snapshot:
        snapshot = await self._visible(ctx, snapshot_id)
        if snapshot.state is not SnapshotState.COMPLETED:
            raise _validation(
                f"The snapshot {snapshot_id} is {snapshot.state.value}; only a completed "
                "snapshot can be read.",
                "INVALID_SNAPSHOT_ID",
            )
        return snapshot

    async def _writable(self, ctx: RequestContext, snapshot_id: str) -> Snapshot:
        snapshot = await self._visible(ctx, snapshot_id)
        if snapshot.owner_id != ctx.account_id:
            raise _not_found(snapshot_id)
        if await self._core.store.direct_meta(snapshot_id) is None:
            raise _validation(
                f"The snapshot {snapshot_id} was not started with StartSnapshot; "
                "blocks can only be written to such snapshots.",
                "INVALID_SNAPSHOT_ID",
            )
        if snapshot.state is not SnapshotState.PENDING:
            raise _not_pending(snapshot_id, snapshot.state)
        return snapshot

    async def _lineage(self, snapshot: Snapshot) -> set[str]:
        """Ids of the snapshot, its ancestors (ParentSnapshotId; for a snapshot of a volume,
        the snapshot the volume was created from) and the volumes they were taken of."""
        store = self._core.store
        seen: set[str] = set()
        current: Snapshot | None = snapshot
        for _ in range(MAX_LINEAGE):
            if current is None:
                break
            seen.add(current.id)
            parent_id: str | None = None
            meta = await store.direct_meta(current.id)
            if meta is not None:
                parent_id = meta.parent_snapshot_id
            elif current.volume_id != DIRECT_VOLUME_ID:
                seen.add(current.volume_id)
                volume = await store.get_volume(current.volume_id)
                parent_id = volume.snapshot_id if volume is not None else None
            if parent_id is None or parent_id in seen:
                break
            seen.add(parent_id)
            current = await store.get_snapshot(parent_id)
        return seen

    async def _related(self, first: Snapshot, second: Snapshot) -> bool:
        return bool(await self._lineage(first) & await self._lineage(second))


def _not_pending(snapshot_id: str, state: SnapshotState | None = None) -> errors.EbsError:
    shown = f"is {state.value}" if state is not None else "is no longer pending"
    return _validation(
        f"The snapshot {snapshot_id} {shown}; blocks can only be written to, and completion "
        "asked of, a pending snapshot.",
        "INVALID_SNAPSHOT_ID",
    )


def _page_size(max_results: int | None) -> int:
    if max_results is None:
        return PAGE_RANGE[1]
    low, high = PAGE_RANGE
    if not low <= max_results <= high:
        raise _validation(f"MaxResults must be from {low} to {high}.")
    return max_results


def _page_start(
    signer: TokenSigner, scope: str, next_token: str | None, starting_index: int | None
) -> int:
    """Where a page starts: the NextToken's index (StartingBlockIndex is then ignored)."""
    if next_token is None:
        return starting_index or 0
    index = signer.page_index(scope, next_token)
    if index is None:
        raise _validation("The page token is not valid for this request.", "INVALID_PAGE_TOKEN")
    return index
